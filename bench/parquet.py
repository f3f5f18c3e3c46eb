"""Which Parquet layout reads fastest (issue 25.3): write a feature table in each layout of
bertfeat/tables/parquet.py and time reading it back as a groups x features matrix.

    .venv/bin/python bench/parquet.py [--groups 10000] [--dims 768]

The feature table is made directly in DuckDB (random values, DLATK's long format, ids in
(group, feature) order, as --add_bert writes it). Readers: pandas (`pd.read_parquet`, pyarrow
engine) to a float64 matrix, pyarrow alone, and DuckDB; pandas and pyarrow are not bertfeat's
dependencies (`pip install pandas pyarrow` for those rows; they are left out when missing). R
arrow is not installed on these machines: not measured.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header  # noqa: E402
from bertfeat.tables import connect, parquet  # noqa: E402


def best(fn, rounds=3):
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def readers(layout, path, features):
    """{reader: function returning the groups x features float64 matrix}."""
    out = {}
    try:
        import pandas as pd

        def with_pandas():
            df = pd.read_parquet(path)
            if layout == "wide":
                return df.set_index("group_id")[features].to_numpy(np.float64)
            if layout == "vector":
                return np.stack(df["vector"].to_numpy())
            return df.pivot(index="group_id", columns="feat", values="value")[features].to_numpy(np.float64)
        out["pandas"] = with_pandas
    except ImportError:
        pass
    try:
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        def with_pyarrow():
            t = pq.read_table(path)
            if layout == "wide":
                return np.column_stack([t.column(f).to_numpy() for f in features])
            if layout == "vector":
                return pc.list_flatten(t.column("vector")).to_numpy().reshape(t.num_rows, -1)
            return None  # long: pandas' pivot is the way
        if layout != "long":
            out["pyarrow"] = with_pyarrow
    except ImportError:
        pass
    import duckdb

    def with_duckdb():
        con = duckdb.connect()
        if layout == "wide":
            sql = f"SELECT * EXCLUDE (group_id) FROM read_parquet('{path}') ORDER BY group_id"
            return con.execute(sql).fetchnumpy()
        if layout == "vector":
            return con.execute(f"SELECT vector FROM read_parquet('{path}') ORDER BY group_id").fetchnumpy()
        return con.execute(f"SELECT value FROM read_parquet('{path}') ORDER BY id").fetchnumpy()
    out["duckdb (fetchnumpy)"] = with_duckdb
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--groups", type=int, default=10_000)
    ap.add_argument("--dims", type=int, default=768)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bertfeat-parquet-")
    conn = {"db_engine": "duckdb", "db_dir": work}
    g, d = args.groups, args.dims
    with connect("pq", create=True, **conn) as engine:
        engine.execute("CREATE TABLE \"feat$x\" AS SELECT (grp * ? + dim + 1)::BIGINT AS id, grp AS group_id,"
                       " dim::VARCHAR || 'me' AS feat, hash(grp, dim) / 1.8e19 AS value, value AS group_norm FROM"
                       " (SELECT range AS grp FROM range(?)) CROSS JOIN (SELECT range AS dim FROM range(?))"
                       " ORDER BY id",
                       [d, g, d])
        features = [f"{k}me" for k in range(d)]
        print(header(f"{g:,} groups x {d} features = {g * d:,} rows") + "\n")
        print("| layout | write s | file MB | reader | read to matrix s |\n|---|---|---|---|---|")
        for layout in parquet.LAYOUTS:
            path = os.path.join(work, f"{layout}.parquet")
            t = time.perf_counter()
            parquet.write(engine, "feat$x", path, layout)
            w = time.perf_counter() - t
            for name, fn in readers(layout, path, features).items():
                s, m = best(fn)
                print(f"| {layout} | {w:.1f} | {os.path.getsize(path) / 1e6:.0f} | {name} | {s:.2f} |", flush=True)


if __name__ == "__main__":
    main()
