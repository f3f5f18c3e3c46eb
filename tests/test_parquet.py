"""Feature tables as Parquet (issue 25.3): every layout round-trips to the table's numbers, on
both engines, from the API and the CLI. Read back with DuckDB (bertfeat needs no pyarrow)."""
import json
import subprocess
import sys
import uuid

import duckdb
import pytest

import bertfeat
from bertfeat.tables import connect
from helpers import write_rows_csv

pytest.importorskip("torch", reason="the tiny test model is made with torch (pip install 'bertfeat[export]')")

# group ids a file format could get wrong: text with quotes, commas and non-ASCII
GROUPS = ["ann", "Bob, Jr.", 'say "hi"', "é", "zoë"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tiny_models import make_model
    return str(make_model("bert", tmp_path_factory.mktemp("tinyp") / "bert"))


def _tables(engine_name, tmp_path, request, tiny):
    if engine_name == "duckdb":
        db, conn = f"p_{uuid.uuid4().hex[:6]}", {"db_engine": "duckdb", "db_dir": str(tmp_path)}
    else:
        db, conn = request.getfixturevalue("mysql_db")
    rows = [{"message_id": k + 1, "user_id": g, "message": f"Post {k} by {g!r}. It has two sentences."}
            for k, g in enumerate(GROUPS * 3)]
    bertfeat.import_csv(db, "msgs", str(write_rows_csv(tmp_path / "p.csv", rows)), progress=False, **conn)
    s = bertfeat.add_bert(db, "msgs", "user_id", bert_model=tiny, bert_layers=[0, 1], bert_keep_msg=True,
                          bert_msg_aggregation=["mean", "max"], model_dir=str(tmp_path / "m"),
                          stage_dir=str(tmp_path), progress=False, **conn)
    return db, conn, s


def _rows(db, conn, table):
    with connect(db, **conn) as engine:
        return sorted(engine.query(f"SELECT id, group_id, feat, value, group_norm FROM {engine.q(table)}"))


@pytest.mark.parametrize("engine_name", ["duckdb", "mysql"])
def test_every_layout_round_trips_to_the_tables_numbers(engine_name, tmp_path, request, tiny):
    db, conn, s = _tables(engine_name, tmp_path, request, tiny)
    for table in (s["table"], s["message_table"]):
        rows = _rows(db, conn, table)
        features = []
        for _, _, feat, _, _ in rows:  # the table's id order
            if feat not in features:
                features.append(feat)
        by_group = {}
        for _, g, feat, value, _ in rows:
            by_group.setdefault(g, {})[feat] = value
        for layout in ("wide", "vector", "long"):
            (path,) = bertfeat.write_parquet(db, table, str(tmp_path / layout), layout=layout, **conn)
            con = duckdb.connect()
            got = con.execute(f"SELECT * FROM read_parquet('{path}')").fetchall()
            names = [d[0] for d in con.description]
            if layout == "long":
                assert names == ["id", "group_id", "feat", "value", "group_norm"] and got == rows
            elif layout == "wide":
                assert names == ["group_id"] + features
                assert {r[0]: dict(zip(features, r[1:])) for r in got} == by_group
                assert [r[0] for r in got] == sorted(by_group)
            else:
                assert names == ["group_id", "vector"]
                assert {g: list(v) for g, v in got} == {g: [f[k] for k in features] for g, f in by_group.items()}
                meta = con.execute(f"SELECT value FROM parquet_kv_metadata('{path}') WHERE key = 'features'").fetchall()
                assert json.loads(meta[0][0]) == features
    assert {r[1] for r in _rows(db, conn, s["table"])} == set(GROUPS)


def test_the_cli_writes_the_tables_it_is_given_and_refuses_nothing_to_write(tmp_path, tiny):
    db, conn, s = _tables("duckdb", tmp_path, None, tiny)
    out = tmp_path / "pq"
    r = subprocess.run([sys.executable, "-m", "bertfeat", "-d", db, "--db_dir", conn["db_dir"], "-f", s["table"],
                        "--output_parquet", str(out), "--parquet_layout", "vector"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"output_parquet: {out / (s['table'] + '.parquet')} (vector)"
    r = subprocess.run([sys.executable, "-m", "bertfeat", "-d", db, "--db_dir", conn["db_dir"],
                        "--output_parquet", str(out)], capture_output=True, text=True)
    assert r.returncode == 2 and "-f TABLE" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    with pytest.raises(bertfeat.BertfeatError, match="unknown Parquet layout 'wid'"):
        bertfeat.write_parquet(db, s["table"], str(out), layout="wid", **conn)
