"""The stage's partitions (bertfeat/stage.PARTITION_ROWS): a stage split over several tables
gives the same feature tables as one table, reuses every vector on a rerun, and keeps one row
per message when a message's text changes."""
import duckdb
import pytest
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


@pytest.mark.parametrize("engine_name", ["duckdb", "mysql"])
def test_groups_reduced_in_slices_give_the_same_tables(engine_name, tiny_bert_model, tmp_path, monkeypatch, request):
    """The feature table is reduced a slice of groups at a time (stage.SLICE_KEYS values per
    statement, so DuckDB's aggregation stays in memory at 10^6 messages): slices of one or two
    groups give the same rows, ids included, as one slice, bit for bit, through each engine's
    write path (DuckDB attaches the stage; MySQL loads its CSV)."""
    conn = ({"db_engine": "duckdb", "db_dir": str(tmp_path)} if engine_name == "duckdb"
            else request.getfixturevalue("mysql_db")[1])
    db = "p" if engine_name == "duckdb" else request.getfixturevalue("mysql_db")[0]
    with connect(db, create=True, **conn) as engine:
        engine.execute("CREATE TABLE msgs (message_id BIGINT, user_id BIGINT, message VARCHAR(200))")
        engine.insert_rows("msgs", ["message_id", "user_id", "message"], MESSAGES)
        engine.commit()
    kw = dict(bert_model=tiny_bert_model, bert_layers=[1], model_dir=str(tmp_path / "m"), progress=False,
              bert_msg_aggregation=["mean", "max"], bert_keep_msg=True, **conn)

    def tables(stage):
        s = bertfeat.add_bert(db, "msgs", "user_id", stage_dir=str(tmp_path / stage), **kw)
        with connect(db, **conn) as engine:
            return {t: engine.query(f"SELECT id, group_id, feat, value, group_norm FROM {engine.q(s[t])} ORDER BY id")
                    for t in ("table", "message_table")}
    whole = tables("one")
    dims = len(whole["message_table"]) // len(MESSAGES)
    monkeypatch.setattr(stage_module, "SLICE_KEYS", 2 * dims * 2 - 1)  # one group (mean and max) per slice
    assert tables("sliced") == whole
    assert [r[0] for r in whole["table"]] == list(range(1, 5 * 2 * dims + 1))  # 5 groups x 2 aggregations
