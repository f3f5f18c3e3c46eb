"""--ray on a real two-node Ray cluster on this machine (ray.cluster_utils: a head node with no
CPUs, so every actor runs on the second node, which has a temp folder of its own). The driver is a
separate process, killed with SIGKILL mid-run and rerun; in the rerun one actor process is killed
too. The table must be the local run's, with no row lost or doubled, and the model must have
reached the worker node through Ray's object store."""
import hashlib
import json
import os
import subprocess
import sys

import pytest

import bertfeat
from bertfeat.tables import connect
from helpers import kill_at, MSGS_CSV, NOISY_STAGE

pytest.importorskip("ray", reason="pip install 'bertfeat[ray]'")
pytest.importorskip("torch", reason="the tiny test model is made with torch (pip install 'bertfeat[export]')")

DRIVER = NOISY_STAGE + """
address, db_dir, model, models, stage = sys.argv[1:]
bertfeat.add_bert("r", "msgs", "user_id", bert_model=model, bert_layers=[0, 2], model_dir=models, stage_dir=stage,
                  progress=False, ray=address, workers=2, threads=1, chunk_messages=16, db_engine="duckdb",
                  db_dir=db_dir)
print("done", flush=True)
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from ray.cluster_utils import Cluster
    node_tmp = tmp_path_factory.mktemp("worker-node-tmp")
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    c.add_node(num_cpus=2, env_vars={"TMPDIR": str(node_tmp)})
    yield c.address, node_tmp
    c.shutdown()


def table(conn, name):
    with connect("r", **conn) as engine:
        return engine.query(f'SELECT group_id, feat, value FROM "{name}"')


def actor_processes(node_tmp):
    import psutil
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if (p.info["cmdline"] or [""])[0].startswith("ray::_Worker") and \
                    p.environ().get("TMPDIR") == str(node_tmp):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


@pytest.mark.slow
def test_two_nodes_a_killed_driver_and_a_killed_actor_give_the_local_table(cluster, tmp_path):
    from tiny_models import make_model
    address, node_tmp = cluster
    tiny = str(make_model("bert", tmp_path / "tiny"))
    conn = {"db_engine": "duckdb", "db_dir": str(tmp_path)}
    bertfeat.import_csv("r", "msgs", MSGS_CSV, progress=False, **conn)
    bertfeat.add_sent_tokenized("r", "msgs", progress=False, **conn)
    models, stage = str(tmp_path / "models"), str(tmp_path / "stage")
    local = bertfeat.add_bert("r", "msgs", "user_id", bert_model=tiny, bert_layers=[0, 2], model_dir=models,
                              stage_dir=str(tmp_path / "local"), progress=False, **conn)
    expected = {(g, f): v for g, f, v in table(conn, local["table"])}

    def driver():
        return subprocess.Popen([sys.executable, "-c", DRIVER, address, conn["db_dir"], tiny, models, stage],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": os.getcwd()})

    assert kill_at(driver(), "staged", 3) == 3  # the driver, SIGKILLed after three batches
    child, killed = driver(), None
    for line in child.stdout:  # the rerun: one actor process SIGKILLed after its first batch
        if line.startswith("staged") and killed is None:
            actors = actor_processes(node_tmp)
            assert actors, "no actor process found on the worker node"
            killed = actors[0]
            killed.kill()
    assert child.wait(timeout=300) == 0 and killed is not None, child.stderr.read()
    got = table(conn, local["table"])
    assert len(got) == len(expected)  # no row lost or doubled
    worst = max(abs(v - expected[(g, f)]) / max(1e-12, abs(expected[(g, f)])) for g, f, v in got)
    assert worst <= 1e-6
    # the export reached the worker node through the object store, into the node's own temp folder
    from bertfeat.exporter import locate
    entry = locate(tiny, 3, "fp32", models)
    files = json.loads((entry / "manifest.json").read_text())["files"]
    [arrived] = list((node_tmp / "bertfeat-ray-models").iterdir())
    for name, sha in files.items():
        assert hashlib.sha256((arrived / name).read_bytes()).hexdigest() == sha


def test_an_actor_that_dies_on_every_try_is_one_line(cluster, tmp_path):
    """Every actor process SIGKILLed as soon as it starts: Ray restarts it (3 times) and retries
    its calls, then gives up; the run ends with one line and exit 2, not a hang or a traceback."""
    import threading
    from tiny_models import make_model
    address, node_tmp = cluster
    tiny = str(make_model("bert", tmp_path / "tiny"))
    conn = {"db_engine": "duckdb", "db_dir": str(tmp_path)}
    bertfeat.import_csv("r", "msgs", MSGS_CSV, progress=False, **conn)
    child = subprocess.Popen([sys.executable, "-m", "bertfeat", "-d", "r", "--db_dir", str(tmp_path), "-t", "msgs",
                              "-c", "user_id", "--add_bert", "--bert_model", tiny, "--model_dir",
                              str(tmp_path / "models"), "--ray", address, "--workers", "1"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed, stop = [], threading.Event()

    def killer():
        while not stop.is_set():
            for p in actor_processes(node_tmp):
                p.kill()
                killed.append(p.pid)
            stop.wait(0.05)
    thread = threading.Thread(target=killer)
    thread.start()
    try:
        out, err = child.communicate(timeout=240)
    finally:
        stop.set()
        thread.join()
    errors = [line for line in err.splitlines() if not line.startswith("bertfeat: ") or "error" in line]
    assert child.returncode == 2 and len(errors) == 1, err  # the export's notices, then one line
    assert errors[0].startswith("bertfeat: error: a Ray worker failed (The actor is dead") and \
        errors[0].endswith("run the same command again to resume"), errors[0]
    assert len(set(killed)) >= 2  # Ray did restart it before giving up
