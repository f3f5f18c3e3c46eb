"""Issue 9: bad CSVs, stale partial tables after kill -9, and what --overwrite replaces."""
import csv
import json
import os
import subprocess
import sys

import pytest

import bertfeat
from bertfeat.tables import connect
from bertfeat.text.sentences import split_sentences
from helpers import big_csv, feature_rows, kill_at, one_line_error
from helpers import run_cli as cli


def engine_conn(engine_name, tmp_path, request):
    if engine_name == "duckdb":
        return "d", {"db_engine": "duckdb", "db_dir": str(tmp_path)}
    return request.getfixturevalue("mysql_db")


def cli_conn(db, conn):
    if conn["db_engine"] == "duckdb":
        return ["-d", db, "--db_dir", conn["db_dir"]]
    return ["-d", db, "--db_engine", "mysql", "--mysql_host", conn["mysql_host"], "--mysql_port",
            str(conn["mysql_port"]), "--mysql_user", conn["mysql_user"], "--mysql_config_file",
            conn["mysql_config_file"]]


# --- CSV import ----------------------------------------------------------------------------------
@pytest.mark.parametrize("engine_name", ["duckdb", "mysql"])
def test_a_row_with_extra_fields_is_an_error_naming_its_line(engine_name, tmp_path, request):
    db, conn = engine_conn(engine_name, tmp_path, request)
    good = tmp_path / "good.csv"
    good.write_text('message_id,user_id,message\n1,1,"hi there."\n')
    assert cli(*cli_conn(db, conn), "-t", "msgs", "--import_csv", str(good)).returncode == 0
    bad = tmp_path / "bad.csv"
    bad.write_text('message_id,user_id,message\n1,1,"hi there."\n2,2,"ok."\n3,3,x,extra,fields\n')
    line = one_line_error(cli(*cli_conn(db, conn), "-t", "msgs", "--import_csv", str(bad), "--overwrite"),
                          "bad.csv", "Line: 4", "3,3,x,extra,fields")
    assert "/tmp/tmp" not in line
    with connect(db, **conn) as engine:  # the table it would have replaced is untouched
        assert engine.query("SELECT message FROM msgs") == [("hi there.",)]
        assert [t for t in engine.tables() if t.startswith("bertfeat_tmp")] == []


def test_header_only_csv_and_binary_file(tmp_path):
    conn = ["-d", "d", "--db_dir", str(tmp_path)]
    (tmp_path / "h.csv").write_text("message_id,user_id,message\n")
    r = cli(*conn, "-t", "msgs", "--import_csv", str(tmp_path / "h.csv"))
    assert r.returncode == 0 and "header but no rows" in r.stderr
    r = cli(*conn, "-t", "msgs", "-c", "user_id", "--add_bert", "--bert_model",
            "sentence-transformers/all-MiniLM-L6-v2", "--model_dir", str(tmp_path / "models"))
    one_line_error(r, "no messages", "msgs")
    (tmp_path / "b.csv").write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 4)
    line = one_line_error(cli(*conn, "-t", "b", "--import_csv", str(tmp_path / "b.csv")), "b.csv")
    assert "/tmp/tmp" not in line and len(line) < 300


def test_utf8_check_streams_the_file(tmp_path):
    """A 64 MB CSV with one invalid byte is repaired without reading it into memory."""
    path = tmp_path / "big.csv"
    row = '1,1,"' + "x" * 1000 + '"\n'
    with open(path, "wb") as f:
        f.write(b"message_id,user_id,message\n")
        f.write(b'0,1,"bad \xff byte"\n')
        for i in range(64_000):
            f.write(row.replace("1,1,", f"{i + 1},1,", 1).encode())
    code = ("import resource, sys; from bertfeat.tables.importer import _utf8_path;"
            "p, n = _utf8_path(sys.argv[1]); print(n, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    base = subprocess.run([sys.executable, "-c", "import resource, bertfeat.tables.importer;"
                           "print(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"],
                          capture_output=True, text=True, check=True).stdout.split()
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[0] == "1"
    assert int(out[1]) - int(base[1]) < 32_000, (out, base)  # KB: far below the file's 64 MB


# --- stale partial _stoks ------------------------------------------------------------------------
CHILD = """
import sys, bertfeat
from bertfeat.tables import Engine, duck, mysql
def noisy(cls):
    insert = cls.insert_rows
    def rows(self, table, columns, rows):
        insert(self, table, columns, rows)
        if table.endswith("__partial"):
            self.commit()
            print("wrote", len(rows), flush=True)
    cls.insert_rows = rows
noisy(duck.DuckEngine); noisy(mysql.MySQLEngine)
conn = eval(sys.argv[2])
bertfeat.add_sent_tokenized(sys.argv[1], "msgs", progress=False, batch_size=100, **conn)
print("done", flush=True)
"""


def kill_after(db, conn, batches):
    child = subprocess.Popen([sys.executable, "-c", CHILD, db, repr(conn)], stdout=subprocess.PIPE,
                             text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert kill_at(child, "wrote", batches) == batches


def stoks(db, conn):
    with connect(db, **conn) as engine:
        return dict(engine.query("SELECT message_id, message FROM msgs_stoks"))


def expected(path):
    with open(path, encoding="utf-8", newline="") as f:
        return {int(r["message_id"]): json.dumps(split_sentences(r["message"]), ensure_ascii=False)
                for r in csv.DictReader(f)}


@pytest.mark.parametrize("engine_name", ["duckdb", "mysql"])
@pytest.mark.parametrize("how", ["overwrite", "plain"])
def test_a_partial_from_changed_text_is_never_resumed(engine_name, how, tmp_path, request, capfd):
    db, conn = engine_conn(engine_name, tmp_path, request)
    old = big_csv(tmp_path / "old.csv", copies=2)
    bertfeat.import_csv(db, "msgs", str(old), progress=False, **conn)
    kill_after(db, conn, 5)
    with connect(db, **conn) as engine:
        assert "msgs_stoks__partial" in engine.tables() and "msgs_stoks" not in engine.tables()
    new = big_csv(tmp_path / "new.csv", lambda s: "Corrected. " + s.upper(), copies=2)
    bertfeat.import_csv(db, "msgs", str(new), overwrite=True, progress=False, **conn)
    s = bertfeat.add_sent_tokenized(db, "msgs", overwrite=how == "overwrite", progress=False, **conn)
    assert s["resumed_after"] is None
    if how == "plain":
        assert "changed since msgs_stoks__partial was started" in capfd.readouterr().err
    assert stoks(db, conn) == expected(new)


@pytest.mark.parametrize("engine_name", ["duckdb", "mysql"])
def test_an_unchanged_partial_resumes(engine_name, tmp_path, request):
    db, conn = engine_conn(engine_name, tmp_path, request)
    path = big_csv(tmp_path / "m.csv", copies=2)
    bertfeat.import_csv(db, "msgs", str(path), progress=False, **conn)
    kill_after(db, conn, 5)
    s = bertfeat.add_sent_tokenized(db, "msgs", progress=False, **conn)
    # the summary counts the whole table, the interrupted run's part included (issue 22.8)
    assert s["resumed_after"] is not None and s["read"] == 2 * 741 and 0 < s["resumed_messages"] < 2 * 741
    assert stoks(db, conn) == expected(path)


# --- corrupted exports -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_bert(tiny_bert_model):
    return tiny_bert_model


def flip_bytes(path, where):
    """Overwrite 64 bytes at fraction `where` of the file, keeping its size and mtime."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(int(st.st_size * where))
        chunk = f.read(64)
        f.seek(int(st.st_size * where))
        f.write(bytes(b ^ 0x5A for b in chunk))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.slow
@pytest.mark.parametrize("where", [0.5, 0.0005])
def test_a_corrupted_export_is_detected_and_never_poisons_the_stage(where, tiny_bert, tmp_path, capfd):
    conn = {"db_engine": "duckdb", "db_dir": str(tmp_path)}
    cache = str(tmp_path / "models")
    bertfeat.import_csv("c", "msgs", str(big_csv(tmp_path / "m.csv", copies=1)), progress=False, **conn)
    kw = dict(bert_model=tiny_bert, model_dir=cache, stage_dir=str(tmp_path / "s1"), progress=False, **conn)
    s = bertfeat.add_bert("c", "msgs", "user_id", **kw)
    clean = feature_rows("c", conn, s["table"])
    (model,) = (tmp_path / "models").glob("*/*/model.onnx")
    assert cli("--list_models", "--model_dir", cache).returncode == 0  # remembers size and mtime
    flip_bytes(model, where)
    r = cli("--list_models", "--model_dir", cache)
    assert r.returncode == 0 and " ok " in r.stdout  # the quick check trusts size and mtime
    one_line_error(cli("--verify_models", "--model_dir", cache), "1 corrupted cache entry")
    capfd.readouterr()
    s = bertfeat.add_bert("c", "msgs", "user_id", **kw)  # same stage: nothing computed by the bad file
    assert "corrupted: exporting it again" in capfd.readouterr().err
    assert s["reused"] == s["messages"]  # the clean vectors were reused; the graph is intact again
    assert feature_rows("c", conn, s["table"]) == clean
    assert cli("--verify_models", "--model_dir", cache).returncode == 0


def test_onnx_runtime_load_errors_are_one_line(tiny_bert, tmp_path):
    from bertfeat.exporter import locate
    from bertfeat.runtime import CorruptedEntry, Encoder
    entry = locate(tiny_bert, 1, root=str(tmp_path))
    (entry / "model.onnx").write_bytes(b"not a protobuf at all" * 100)
    with pytest.raises(CorruptedEntry, match="cache entry is corrupted"):
        Encoder(entry)


def test_a_truncated_stage_file_is_one_line_saying_to_delete_it(tiny_bert, tmp_path):
    """Issue 22.8 / 24.4: a stage file cut short (a full disk, a copy that stopped) is found when
    a run reads it; the error says it is only a cache and to delete it, nothing is written, and
    after deleting it the same run gives the table of a clean run."""
    conn = {"db_engine": "duckdb", "db_dir": str(tmp_path)}
    bertfeat.import_csv("c", "msgs", str(big_csv(tmp_path / "m.csv", copies=1)), progress=False, **conn)
    kw = dict(bert_model=tiny_bert, model_dir=str(tmp_path / "models"), stage_dir=str(tmp_path / "s"),
              progress=False, **conn)
    clean = feature_rows("c", conn, bertfeat.add_bert("c", "msgs", "user_id", **kw)["table"])
    (stage,) = (tmp_path / "s").glob("*stage*.duckdb")
    with open(stage, "r+b") as f:
        f.truncate(stage.stat().st_size // 2)
    with connect("c", **conn) as engine:
        before = engine.tables()
    with pytest.raises(bertfeat.BertfeatError, match="cannot use the stage file .*delete it and run again"):
        bertfeat.add_bert("c", "msgs", "user_id", bert_msg_aggregation=["max"], **kw)
    with connect("c", **conn) as engine:
        assert engine.tables() == before
    stage.unlink()
    assert feature_rows("c", conn, bertfeat.add_bert("c", "msgs", "user_id", **kw)["table"]) == clean


def test_group_rows_a_killed_run_left_in_the_stage_are_dropped(tiny_bert, tmp_path):
    """Issue 24.4: each run keeps its (message, group) rows in a table of its own in the stage;
    one whose process is gone (kill -9) is dropped by the next run, a live run's is not."""
    import duckdb

    from bertfeat.tables import HOST_TAG
    conn = {"db_engine": "duckdb", "db_dir": str(tmp_path)}
    bertfeat.import_csv("c", "msgs", str(big_csv(tmp_path / "m.csv", copies=1)), progress=False, **conn)
    kw = dict(bert_model=tiny_bert, model_dir=str(tmp_path / "models"), stage_dir=str(tmp_path / "s"),
              progress=False, **conn)
    bertfeat.add_bert("c", "msgs", "user_id", **kw)
    (stage,) = (tmp_path / "s").glob("*stage*.duckdb")
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    left, live = (f"groups_0123456789abcdef_{HOST_TAG}_{pid}_deadbeef" for pid in (dead, os.getpid()))
    with duckdb.connect(str(stage)) as con:
        for name in (left, live):
            con.execute(f"CREATE TABLE {name} (message_id BIGINT, group_id BIGINT)")
    bertfeat.add_bert("c", "msgs", "user_id", bert_msg_aggregation=["max"], **kw)
    with duckdb.connect(str(stage), read_only=True) as con:
        names = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    assert left not in names and live in names
    assert not [n for n in names if n.startswith("groups_") and n != live]  # finished runs dropped theirs


# --- smaller bugs ------------------------------------------------------------------------------
def test_text_ids_after_integer_ids_share_one_stage_file(tiny_bert, tmp_path):
    conn = {"db_engine": "duckdb", "db_dir": str(tmp_path)}
    path = big_csv(tmp_path / "m.csv", copies=1)
    bertfeat.import_csv("c", "msgs", str(path), progress=False, **conn)
    text_ids = tmp_path / "t.csv"
    text_ids.write_text(path.read_text().replace("\n1", "\nm1").replace("\n2", "\nm2"), encoding="utf-8")
    bertfeat.import_csv("c", "tmsgs", str(text_ids), progress=False, **conn)
    with connect("c", **conn) as engine:
        assert dict(engine.columns("tmsgs"))["message_id"] == "VARCHAR"
    kw = dict(bert_model=tiny_bert, model_dir=str(tmp_path / "models"), stage_dir=str(tmp_path), progress=False,
              bert_keep_msg=True, **conn)
    a = bertfeat.add_bert("c", "msgs", "user_id", **kw)
    b = bertfeat.add_bert("c", "tmsgs", "user_id", **kw)
    assert a["messages"] == b["messages"] == 741
    assert feature_rows("c", conn, a["table"]) == feature_rows("c", conn, b["table"])


def test_small_input_errors_are_one_line(tmp_path, msgs_csv):
    conn = ["-d", "d", "--db_dir", str(tmp_path)]
    assert cli(*conn, "-t", "msgs", "--import_csv", msgs_csv).returncode == 0
    bert = [*conn, "-t", "msgs", "-c", "user_id", "--add_bert", "--model_dir", str(tmp_path / "models")]
    (tmp_path / "sub" / "empty").mkdir(parents=True)
    for folder in ("/tmp", "../empty", str(tmp_path)):  # relative folders are read from the cwd
        one_line_error(cli(*bert, "--bert_model", folder, cwd=tmp_path / "sub" / "empty"), "no config.json")
    for flag, value in (("--batch_tokens", "0"), ("--threads", "0"), ("--threads", "-1")):
        one_line_error(cli(*bert, flag, value), flag, "positive")
    (tmp_path / "d.bertfeat_stage.duckdb").write_bytes(b"DUCK" * 5000)  # a truncated, unreadable stage
    one_line_error(cli(*bert, "--bert_model", "sentence-transformers/all-MiniLM-L6-v2"),
                   "stage file", "delete it")
    (tmp_path / "n.csv").write_text("message_id,user_id,message\n1,1,a\n,2,b\n")
    r = cli(*conn, "-t", "n", "--import_csv", str(tmp_path / "n.csv"))
    assert r.returncode == 0 and "1 empty value(s)" in r.stderr and "repeated" not in r.stderr


@pytest.mark.parametrize("engine_name", ["duckdb", "mysql"])
def test_temporary_tables_of_killed_runs_are_dropped(engine_name, tmp_path, request):
    from bertfeat.tables import HOST_TAG
    db, conn = engine_conn(engine_name, tmp_path, request)
    bertfeat.import_csv(db, "msgs", str(big_csv(tmp_path / "m.csv", copies=1)), progress=False, **conn)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()  # a pid that no longer runs
    with connect(db, **conn) as engine:
        left = f"bertfeat_tmp_{HOST_TAG}_{dead}_0123abcd"
        other_host = f"bertfeat_tmp_00000000_{dead}_0123abcd"  # maybe alive elsewhere: kept
        mine = engine.temp_name("x")  # this process is alive: kept
        for t in (left, other_host, mine):
            engine.execute(f"CREATE TABLE {engine.q(t)} (a INT)")
        engine.commit()
    with connect(db, **conn) as engine:
        assert left not in engine.tables() and {other_host, mine} <= set(engine.tables())


def test_duckdb_out_of_memory_writing_a_table_is_one_line_saying_what_to_do(tiny_bert, tmp_path, monkeypatch):
    """Issue 24: at 10^6 posts the message-level table (3.8e8 rows) outgrew the 1 GB DuckDB is
    given, whose primary key and indexes are held in memory (bench/LOG.md "Growth"). DuckDB's
    own error (here raised where it was raised then) becomes one line naming the limit and the
    cures, and no half-written table is left."""
    import duckdb

    from bertfeat.stage import Stage
    conn = {"db_engine": "duckdb", "db_dir": str(tmp_path)}
    bertfeat.import_csv("c", "msgs", str(big_csv(tmp_path / "m.csv", copies=1)), progress=False, **conn)
    real, writes = Stage.fill_message_features, []

    def message_table_outgrows_memory(self, con, target, *args, **kw):
        writes.append(target.strip('"'))
        real(self, con, target, *args, **kw)  # rows inserted, then DuckDB gives up
        raise duckdb.OutOfMemoryException("Out of Memory Error: could not allocate block of size 256.0 KiB")
    monkeypatch.setattr(Stage, "fill_message_features", message_table_outgrows_memory)
    with connect("c", **conn) as engine:
        before = set(engine.tables())
    with pytest.raises(bertfeat.BertfeatError, match="memory limit .*BERTFEAT_DUCKDB_MEMORY.*--db_engine mysql"):
        bertfeat.add_bert("c", "msgs", "user_id", bert_model=tiny_bert, bert_keep_msg=True,
                          model_dir=str(tmp_path / "models"), stage_dir=str(tmp_path / "s"), progress=False, **conn)
    with connect("c", **conn) as engine:
        made = set(engine.tables()) - before
    assert writes[0] not in made and not [t for t in made if "message_id" in t], made  # nothing half-written
