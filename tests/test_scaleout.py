"""--ray: the same table as a local run, from a real local Ray (several worker processes), with the
model shipped to the actors through Ray's object store. Stage, resume and dedup are the driver's."""
import os

import pytest

import bertfeat
from bertfeat.tables import connect
from helpers import MSGS_CSV, real_posts, TOKENS

pytest.importorskip("ray", reason="pip install 'bertfeat[ray]'")
pytest.importorskip("torch", reason="the tiny test model is made with torch (pip install 'bertfeat[export]')")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray (2 CPUs, worker processes of its own) for the module: bertfeat joins a Ray
    that is already initialized and leaves it running (each run starting its own costs ~10 s)."""
    import ray
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny_models import make_model
    return str(make_model("bert", tmp_path_factory.mktemp("tinyray") / "bert"))


def rows(db, conn, table):
    with connect(db, **conn) as engine:
        return {(str(g), f): v for g, f, v in engine.query(f"SELECT group_id, feat, value FROM {engine.q(table)}")}


@pytest.mark.slow
@pytest.mark.parametrize("precision, engine", [("fp32", "duckdb"), ("int8", "mysql")])
def test_ray_gives_the_local_table(precision, engine, tiny, tmp_path, request, monkeypatch, capsys):
    """fp32 within 1e-6 (another batch composition), int8 identical (one window per call either
    way). The driver reads a DuckDB file; from MariaDB the workers read their own shards."""
    if engine == "mysql":
        db, conn = request.getfixturevalue("mysql_db")
    else:
        db, conn = "r", {"db_engine": "duckdb", "db_dir": str(tmp_path)}
    import bertfeat.jobs.add_bert as job
    parsed = job._parsed
    bertfeat.import_csv(db, "msgs", MSGS_CSV, progress=False, **conn)
    bertfeat.add_sent_tokenized(db, "msgs", progress=False, **conn)
    kw = dict(bert_model=tiny, bert_layers=[0, 2], precision=precision, model_dir=str(tmp_path / "models"),
              progress=False, bert_keep_msg=True, **conn)
    local = bertfeat.add_bert(db, "msgs", "user_id", stage_dir=str(tmp_path / "local"), **kw)
    expected = {t: rows(db, conn, local[t]) for t in ("table", "message_table")}
    driver_reads = []
    monkeypatch.setattr(job, "_parsed", lambda *a: driver_reads.append(1) or parsed(*a))
    capsys.readouterr()
    remote = bertfeat.add_bert(db, "msgs", "user_id", stage_dir=str(tmp_path / "ray"), ray="local", workers=2,
                               threads=1, chunk_messages=64, **{**kw, "progress": True})
    assert bool(driver_reads) == (engine == "duckdb")  # MariaDB rows went to the workers, not through here
    progress = capsys.readouterr().err.split("\r")[-1]
    assert f"messages: {remote['messages']}/" in progress and "(2 Ray workers)" in progress, progress
    assert remote["table"] == local["table"] and remote["embedded"] == local["embedded"] > 700
    assert (remote["windows"], remote["tokens"]) == (local["windows"], local["tokens"])
    for t, want in expected.items():
        got = rows(db, conn, remote[t])
        assert got.keys() == want.keys() and len(got) > 0
        worst = max(abs(got[k] - want[k]) / max(1e-12, abs(want[k])) for k in got)
        assert worst <= (1e-6 if precision == "fp32" else 0.0), (t, worst)
    again = bertfeat.add_bert(db, "msgs", "user_id", stage_dir=str(tmp_path / "ray"), ray="local", **kw)
    assert again["embedded"] == 0 and again["windows"] == 0  # the stage serves it: nothing goes to workers


def test_ray_errors_are_one_line(tiny, tmp_path):
    conn = {"db_engine": "duckdb", "db_dir": str(tmp_path)}
    bertfeat.import_csv("e", "msgs", MSGS_CSV, progress=False, **conn)
    with pytest.raises(bertfeat.BertfeatError, match="workers is the number of Ray workers"):
        bertfeat.add_bert("e", "msgs", "user_id", bert_model=tiny, workers=2, model_dir=str(tmp_path / "m"),
                          progress=False, **conn)
    with pytest.raises(bertfeat.BertfeatError, match="2 CPUs free .* 3 workers of --threads 1 need 3"):
        bertfeat.add_bert("e", "msgs", "user_id", bert_model=tiny, ray="local", workers=3, threads=1,
                          model_dir=str(tmp_path / "m"), progress=False, **conn)
    with pytest.raises(bertfeat.BertfeatError, match="one Ray worker per GPU, and the Ray cluster has 0 GPUs"):
        bertfeat.add_bert("e", "msgs", "user_id", bert_model=tiny, ray="local", device="cuda",
                          model_dir=str(tmp_path / "m"), progress=False, **conn)
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "bertfeat", "-d", "e", "--db_dir", str(tmp_path), "-t", "msgs", "-c",
                        "user_id", "--add_bert", "--bert_model", tiny, "--model_dir", str(tmp_path / "m"),
                        "--ray", "127.0.0.1:1"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "cannot reach a Ray cluster" in r.stderr, r.stderr


def test_sentences_on_ray_are_the_local_table(tmp_path):
    """--add_sent_tokenized --ray: Ray tasks split, the driver writes in id order: the same rows."""
    conn = {"db_engine": "duckdb", "db_dir": str(tmp_path)}
    bertfeat.import_csv("s", "msgs", MSGS_CSV, progress=False, **conn)
    local = bertfeat.add_sent_tokenized("s", "msgs", progress=False, **conn)
    with connect("s", **conn) as engine:
        want = engine.query('SELECT * FROM "msgs_stoks" ORDER BY message_id')
    remote = bertfeat.add_sent_tokenized("s", "msgs", overwrite=True, progress=False, batch_size=50, ray="local",
                                         workers=2, **conn)
    assert (remote["read"], remote["written"]) == (local["read"], local["written"]) and local["written"] > 700
    with connect("s", **conn) as engine:
        assert engine.query('SELECT * FROM "msgs_stoks" ORDER BY message_id') == want


@pytest.mark.slow
def test_hostile_text_and_text_ids_through_worker_shard_reads(tiny, mysql_db, tmp_path):
    """Generated hostile messages (SQL-breaking quotes, control characters, emoji, RTL...) with
    VARCHAR ids made of the same, in MariaDB: the workers' shard reads (ranges of such ids, 40
    shards) give the message-level table of the driver's own read."""
    import csv
    import random
    db, conn = mysql_db
    rng = random.Random(13)
    hostile = ["".join(rng.choice(TOKENS) for _ in range(rng.randint(1, 12))) for _ in range(120)]
    ids = [f"{k:04d}{rng.choice(TOKENS[:12])}{rng.choice(TOKENS[30:45])}" for k in range(320)]
    with open(tmp_path / "m.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_NONNUMERIC)
        w.writerow(["message_id", "user_id", "message"])
        w.writerows((mid, f"u{k % 9}", m) for k, (mid, m) in enumerate(zip(ids, hostile + real_posts(200, 13))))
    bertfeat.import_csv(db, "msgs", str(tmp_path / "m.csv"), progress=False, **conn)
    kw = dict(bert_model=tiny, bert_layers=[0, 2], model_dir=str(tmp_path / "models"), progress=False,
              bert_keep_msg=True, chunk_messages=8, **conn)
    local = bertfeat.add_bert(db, "msgs", "user_id", stage_dir=str(tmp_path / "local"), **kw)
    want = rows(db, conn, local["message_table"])
    remote = bertfeat.add_bert(db, "msgs", "user_id", stage_dir=str(tmp_path / "ray"), ray="local", workers=2,
                               **kw)
    assert (remote["messages"], remote["skipped"]) == (local["messages"], local["skipped"]) and local["messages"] > 250
    got = rows(db, conn, remote["message_table"])
    assert got.keys() == want.keys()
    assert max(abs(got[k] - want[k]) / max(1e-12, abs(want[k])) for k in got) <= 1e-5


def test_a_local_ray_run_prints_only_bertfeat_lines(tmp_path):
    """Issue 22.8: Ray's notice that token authentication is enabled (its default for a local
    cluster) does not reach the user's stderr; the run's own lines do."""
    import subprocess
    import sys
    conn = {"db_engine": "duckdb", "db_dir": str(tmp_path)}
    bertfeat.import_csv("t", "msgs", MSGS_CSV, progress=False, **conn)
    r = subprocess.run([sys.executable, "-m", "bertfeat", "-d", "t", "--db_dir", str(tmp_path), "-t", "msgs",
                        "--add_sent_tokenized", "--ray", "--no_progress"], capture_output=True, text=True,
                       timeout=300, env={k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"})
    assert r.returncode == 0 and "add_sent_tokenized: read 741 messages" in r.stdout, r.stderr
    assert "Token authentication" not in r.stderr, r.stderr
