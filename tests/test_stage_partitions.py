"""The stage's partitions (bertfeat/stage.PARTITION_ROWS): a stage split over several tables
gives the same feature tables as one table, reuses every vector on a rerun, and keeps one row
per message when a message's text changes."""
import duckdb
import numpy as np

import bertfeat
from bertfeat import stage as stage_module
from bertfeat.tables import connect

from tiny_models import TEXT

MESSAGES = [(k, 100 + k % 5, f"{TEXT[k % len(TEXT)]} Message number {k}.") for k in range(1, 41)]


def _run(conn, model, tmp_path, stage, **kw):
    return bertfeat.add_bert("p", "msgs", "user_id", bert_model=model, bert_layers=[1], model_dir=str(tmp_path / "m"),
                             stage_dir=str(tmp_path / stage), progress=False, chunk_messages=4, bert_keep_msg=True,
                             **kw, **conn)


def _table(conn, name):
    with connect("p", **conn) as engine:
        return engine.query(f"SELECT group_id, feat, value FROM {engine.q(name)} ORDER BY group_id, feat")


def test_a_partitioned_stage_gives_the_same_tables_and_reuses_them(tiny_bert_model, tmp_path, monkeypatch):
    conn = {"db_engine": "duckdb", "db_dir": str(tmp_path)}
    with connect("p", create=True, **conn) as engine:
        engine.execute("CREATE TABLE msgs (message_id BIGINT, user_id BIGINT, message VARCHAR)")
        engine.insert_rows("msgs", ["message_id", "user_id", "message"], MESSAGES)
    whole = _run(conn, tiny_bert_model, tmp_path, "one")
    expected = {t: _table(conn, whole[t]) for t in ("table", "message_table")}

    monkeypatch.setattr(stage_module, "PARTITION_ROWS", 7)
    split = _run(conn, tiny_bert_model, tmp_path, "split")
    stage_file = str(tmp_path / "split" / "p.bertfeat_stage.duckdb")
    with duckdb.connect(stage_file, read_only=True) as con:
        parts = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE table_name LIKE 'vec_%'"
                                           " ORDER BY table_name").fetchall()]
        counts = [con.execute(f"SELECT count(*) FROM {p}").fetchone()[0] for p in parts]
    assert len(parts) >= 5 and sum(counts) == 40 and max(counts) <= 7 + 4  # a put of up to a chunk past the limit
    for t in ("table", "message_table"):
        got = _table(conn, split[t])
        assert [r[:2] for r in got] == [r[:2] for r in expected[t]]
        np.testing.assert_array_equal([r[2] for r in got], [r[2] for r in expected[t]])

    again = _run(conn, tiny_bert_model, tmp_path, "split", bert_msg_aggregation=["max"])
    assert again["already_staged"] == 40 and again["embedded"] == 0

    # a message whose text changed is embedded again and staged once, in the newest partition
    with connect("p", **conn) as engine:
        engine.execute("UPDATE msgs SET message = 'An entirely new text.' WHERE message_id = 3")
    changed = _run(conn, tiny_bert_model, tmp_path, "split")
    assert changed["embedded"] == 1 and changed["already_staged"] == 39
    with duckdb.connect(stage_file, read_only=True) as con:
        union = " UNION ALL ".join(f"SELECT message_id FROM {p}" for p in parts)
        rows = con.execute(f"SELECT message_id, count(*) FROM ({union}) GROUP BY message_id HAVING count(*) > 1"
                           ).fetchall()
    assert rows == []
