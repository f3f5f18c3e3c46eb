"""Issue 9 §5: concurrent use of one database, real processes on real engines.

DuckDB lets one process at a time hold a database file; bertfeat holds it only per operation, so
readers and a second run get in between an --add_bert run's chunks. On MySQL, concurrent runs use
their own temporary tables and swap them in atomically.
"""
import os
import subprocess
import sys
import threading

import duckdb
import pytest

import bertfeat
from bertfeat.tables import connect
from helpers import big_csv, feature_rows, NOISY_STAGE

CHILD = NOISY_STAGE + """
conn = eval(sys.argv[4])
s = bertfeat.add_bert(sys.argv[1], "msgs", "user_id", bert_model=sys.argv[2], model_dir=sys.argv[3],
                      stage_dir=sys.argv[5], bert_layers=[int(sys.argv[6])], progress=False, chunk_messages=4,
                      **conn)
print("done", s["table"], flush=True)
"""


@pytest.fixture(scope="module")
def tiny_bert(tiny_bert_model, tmp_path_factory):
    root, model = tmp_path_factory.mktemp("tinyc"), tiny_bert_model
    from bertfeat.exporter import locate
    for depth in (1, 2, 3):
        locate(model, depth, root=str(root / "models"))  # exported once, before any race
    return model, str(root / "models")


def small_table(tmp_path, db, conn, n=120):
    path = big_csv(tmp_path / "m.csv", copies=1)
    lines = path.read_text(encoding="utf-8")
    bertfeat.import_csv(db, "msgs", str(path), progress=False, **conn)
    with connect(db, **conn) as engine:  # keep the first n messages: each run takes a few seconds
        ids = [r[0] for r in engine.query("SELECT message_id FROM msgs ORDER BY message_id")]
        engine.execute("DELETE FROM msgs WHERE message_id > ?", [ids[n - 1]])
        engine.commit()
    return lines


def start(db, tiny, conn, stage, layer):
    model, cache = tiny
    return subprocess.Popen([sys.executable, "-c", CHILD, db, model, cache, repr(conn), str(stage), str(layer)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.getcwd()})


def finish(child):
    out, err = child.communicate(timeout=300)
    assert child.returncode == 0, err
    return out.strip().splitlines()[-1].split()[1], err


def test_duckdb_readers_and_a_second_run_get_in_during_a_run(tiny_bert, tmp_path):
    conn = {"db_engine": "duckdb", "db_dir": str(tmp_path)}
    small_table(tmp_path, "c", conn)
    model, cache = tiny_bert
    older = bertfeat.add_bert("c", "msgs", "user_id", bert_model=model, model_dir=cache, bert_layers=[0],
                              stage_dir=str(tmp_path / "s0"), progress=False, **conn)["table"]
    before = feature_rows("c", conn, older)
    a = start("c", tiny_bert, conn, tmp_path / "sa", 1)
    b = start("c", tiny_bert, conn, tmp_path / "sb", 2)  # a second writer on the same file
    for line in a.stdout:
        if line.startswith("staged"):
            break
    reads = 0
    while a.poll() is None and reads < 5:  # --ls and a reader of an older table, while `a` runs
        r = subprocess.run([sys.executable, "-m", "bertfeat", "-d", "c", "--db_dir", str(tmp_path), "--ls"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "msgs" in r.stdout, r.stderr
        assert feature_rows("c", conn, older) == before
        reads += 1
    assert reads >= 1
    ta, _ = finish(a)
    tb, _ = finish(b)
    for table, layer in ((ta, 1), (tb, 2)):  # both equal a run made alone
        alone = bertfeat.add_bert("c", "msgs", "user_id", bert_model=model, model_dir=cache, bert_layers=[layer],
                                  stage_dir=str(tmp_path / f"alone{layer}"), progress=False, **conn)
        assert alone["table"] == table and alone["embedded"] > 0
        assert feature_rows("c", conn, table) == feature_rows("c", conn, alone["table"])


def test_duckdb_gives_up_on_a_held_file_with_one_line(tmp_path):
    conn = {"db_engine": "duckdb", "db_dir": str(tmp_path)}
    bertfeat.import_csv("c", "msgs", str(big_csv(tmp_path / "m.csv", copies=1)), progress=False, **conn)
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]);"
                               " print('held', flush=True); time.sleep(60)", str(tmp_path / "c.duckdb")],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    try:
        r = subprocess.run([sys.executable, "-m", "bertfeat", "-d", "c", "--db_dir", str(tmp_path), "--ls",
                            "--lock_timeout", "1"], capture_output=True, text=True, timeout=60)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and "in use by process" in lines[0] and "waiting" in lines[0]
        assert lines[-1].startswith("bertfeat: error:") and "--lock_timeout" in lines[-1]
    finally:
        holder.kill()
        holder.wait()
    # the file is free again: it opens for writing at once, and bertfeat reads it
    duckdb.connect(str(tmp_path / "c.duckdb")).close()
    assert bertfeat.show_feature_tables("c", **conn) == [("msgs", "table")]


def test_mysql_concurrent_runs_and_a_reader_during_the_swap(tiny_bert, tmp_path, mysql_db):
    db, conn = mysql_db
    small_table(tmp_path, db, conn, n=60)
    model, cache = tiny_bert
    first = bertfeat.add_bert(db, "msgs", "user_id", bert_model=model, model_dir=cache, bert_layers=[1],
                              stage_dir=str(tmp_path / "s0"), progress=False, **conn)
    expected = feature_rows(db, conn, first["table"])
    errors, polls, stop = [], [0], threading.Event()

    def poll():  # a reader that must never see the table missing or half written
        with connect(db, **conn) as engine:
            while not stop.is_set():
                try:
                    n = engine.query(f"SELECT count(*) FROM {engine.q(first['table'])}")[0][0]
                    engine.commit()  # a fresh snapshot each time
                    if n != len(expected):
                        errors.append(f"{n} rows")
                except Exception as e:  # noqa: BLE001 - any error is what this test looks for
                    errors.append(str(e))
                polls[0] += 1
    reader = threading.Thread(target=poll)
    reader.start()
    try:
        runs = [start(db, tiny_bert, conn, tmp_path / f"s{k}", 1) for k in (1, 2)]  # same table, two stages
        tables = [finish(r)[0] for r in runs]
    finally:
        stop.set()
        reader.join()
    assert tables == [first["table"]] * 2
    assert errors == [] and polls[0] > 10
    assert feature_rows(db, conn, first["table"]) == expected
    # two runs that both create a table that is not there yet
    runs = [start(db, tiny_bert, conn, tmp_path / f"n{k}", 2) for k in (1, 2)]
    new = [finish(r)[0] for r in runs]
    assert new[0] == new[1]
    with connect(db, **conn) as engine:
        assert new[0] in engine.tables()
        assert [t for t in engine.tables() if t.startswith("bertfeat_tmp")] == []
