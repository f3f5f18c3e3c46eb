"""Feature tables as Parquet files, for pandas, polars and R arrow users who do not use SQL.

Layouts (issue 25; the choice and its numbers are in bench/LOG.md "Parquet"):
- `wide` (default): one row per group, `group_id` then one DOUBLE column per feature in the
  table's id order (`0me`, `1me`, ...): `pd.read_parquet(f).set_index("group_id")` is the
  groups x features matrix. A (group, feature) the table has no row for is NULL.
- `vector`: one row per group, `group_id` and `vector` (a DOUBLE list in the features' order);
  the feature names are in the file's key-value metadata (`features`, a JSON list).
- `long`: the table as it is (id, group_id, feat, value, group_norm), in id order.

The token and word-type tables (--bert_keep_tokens, --bert_word_types) are written as they are,
their vectors as FLOAT lists (a MySQL table's float32 BLOBs decoded); `layout` does not apply.

DuckDB writes the file (no pyarrow needed). A DuckDB feature table is read in place; a MySQL
one is streamed into a temporary DuckDB file first, a batch at a time.
"""
import contextlib
import json
import os
import tempfile

import duckdb

from ..errors import BertfeatError
from .duck import DUCKDB_CONFIG, insert_columns, insert_with_vectors

LAYOUTS = ("wide", "vector", "long")
COLUMNS = ["id", "group_id", "feat", "value", "group_norm"]


def check_layout(layout):
    if layout not in LAYOUTS:
        raise BertfeatError(f"unknown Parquet layout {layout!r}: choose {', '.join(LAYOUTS)}")
    return layout


def write(engine, table, path, layout="wide"):
    """Write feature table `table` of `engine` to the Parquet file `path` (replaced atomically:
    written beside it, then renamed); returns the number of rows written."""
    check_layout(layout)
    engine.require_table(table)
    columns = engine.columns(table)
    vectors = [c for c, t in columns if t.upper().endswith("]") or "blob" in t.lower()]
    if vectors:
        return _write_as_is(engine, table, path, columns, vectors)
    engine.require_table(table, COLUMNS)
    with _replacing(path) as tmp:
        if engine.kind == "duckdb":
            with engine.hold() as con:
                return _copy(con, engine.q(table), tmp, layout)
        with _scratch() as con:
            group_type = "BIGINT" if "int" in dict(engine.columns(table))["group_id"].lower() else "VARCHAR"
            con.execute(f"CREATE TABLE t (id BIGINT, group_id {group_type}, feat VARCHAR, value DOUBLE,"
                        " group_norm DOUBLE)")
            cols = ", ".join(engine.q(c, "column name") for c in COLUMNS)
            for rows in engine.stream(f"SELECT {cols} FROM {engine.q(table)}", batch_size=100_000):
                insert_columns(con, "t", COLUMNS, rows)
            return _copy(con, "t", tmp, layout)


@contextlib.contextmanager
def _replacing(path):
    """A temporary file name beside `path`, renamed to `path` when the block completes (removed
    when it does not): a reader never sees half a file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def _scratch():
    """A DuckDB connection to a file in a temporary folder (where a MySQL table is copied first)."""
    with tempfile.TemporaryDirectory(prefix="bertfeat-parquet-") as folder:
        con = duckdb.connect(os.path.join(folder, "t.duckdb"), config=DUCKDB_CONFIG)
        try:
            yield con
        finally:
            con.close()


def _write_as_is(engine, table, path, columns, vectors):
    """A table with vector columns (tokens, word types) as it is, rows in its first columns' order."""
    names = [c for c, _ in columns]
    order = ", ".join(_quote(c) for c in names if c not in vectors)
    with _replacing(path) as tmp:
        if engine.kind == "duckdb":
            with engine.hold() as con:
                con.execute(f"COPY (SELECT * FROM {engine.q(table)} ORDER BY {order}) TO {_literal(tmp)}"
                            " (FORMAT parquet)")
        else:
            import numpy as np
            scalars = [(c, t) for c, t in columns if c not in vectors]
            with _scratch() as con:
                types = {c: "BIGINT" if "int" in t.lower() else "DOUBLE" if "double" in t.lower() else "VARCHAR"
                         for c, t in scalars}
                con.execute("CREATE TABLE t (" + ", ".join(f"{_quote(c)} {types[c]}" for c, _ in scalars)
                            + "".join(f", {_quote(v)} FLOAT[]" for v in vectors) + ")")
                cols = ", ".join(engine.q(c, "column name") for c in [c for c, _ in scalars] + vectors)
                for rows in engine.stream(f"SELECT {cols} FROM {engine.q(table)}", batch_size=10_000):
                    k = len(scalars)
                    values = [list(c) for c in zip(*rows)][:k]
                    insert_with_vectors(con, "t", [_quote(c) for c, _ in scalars], values,
                                        [(_quote(v), np.stack([np.frombuffer(r[k + j], "<f4") for r in rows]))
                                         for j, v in enumerate(vectors)])
                con.execute(f"COPY (SELECT * FROM t ORDER BY {order}) TO {_literal(tmp)} (FORMAT parquet)")
    return duckdb.execute(f"SELECT count(*) FROM read_parquet({_literal(path)})").fetchone()[0]


def _literal(text):
    return "'" + text.replace("'", "''") + "'"


def _copy(con, source, path, layout):
    features = [r[0] for r in con.execute(f"SELECT feat FROM {source} GROUP BY feat ORDER BY min(id)").fetchall()]
    quoted = "'" + path.replace("'", "''") + "'"
    meta, params = "", []
    if layout == "long":
        sql = f"SELECT {', '.join(COLUMNS)} FROM {source} ORDER BY id"
    else:
        # each group's values in the features' order, NULL where the table has no row for one
        sql = ("SELECT g.group_id, list(t.value ORDER BY f.k) AS vector FROM (SELECT DISTINCT group_id FROM"
               f" {source}) g CROSS JOIN (SELECT unnest(?) AS feat, generate_subscripts(?, 1) AS k) f LEFT JOIN"
               f" {source} t ON t.group_id = g.group_id AND t.feat = f.feat GROUP BY g.group_id")
        params = [features, features]
        if layout == "vector":
            sql += " ORDER BY g.group_id"
            meta = ", KV_METADATA {features: '" + json.dumps(features).replace("'", "''") + "'}"
        else:
            columns = ", ".join(f"vector[{k + 1}] AS {_quote(f)}" for k, f in enumerate(features))
            sql = f"SELECT group_id, {columns} FROM ({sql}) ORDER BY group_id"
    con.execute(f"COPY ({sql}) TO {quoted} (FORMAT parquet{meta})", params)
    return con.execute(f"SELECT count(*) FROM read_parquet({quoted})").fetchone()[0]


def _quote(name):
    return '"' + name.replace('"', '""') + '"'
