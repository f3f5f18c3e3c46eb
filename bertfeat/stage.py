"""Staged message vectors (a DuckDB file) and the group reductions run from them.

The stage is keyed by everything that determines a message vector (model fingerprint,
precision, layers, layer and word aggregations, context mode): rows (message_id, text_hash,
vec) in tables of at most PARTITION_ROWS rows per key, `vec_<key>` then `vec_<key>_p1`, ...
Message aggregation only reads it, so changing
--bert_msg_aggregation or asking for the message-level table needs no inference.
"""
import contextlib
import hashlib
import json
import os
import re
import uuid

import duckdb
import numpy as np

from .errors import BertfeatError, first_line
from .tables import HOST_TAG, alive
from .tables.duck import (DUCKDB_CONFIG, HeldFile, insert_columns, insert_vectors, insert_with_vectors,
                          waiting_for_lock)
from .aggregate import ABBR

SLICE_KEYS = 4_000_000  # (group, dimension) values reduced per statement (fill_group_features)
DUCK_AGG = {"mean": "avg", "median": "median", "max": "max", "min": "min", "sum": "sum",
            "std": "stddev_pop"}


def stage_key(settings):
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


# DuckDB (2.0) rewrites a table's recent row groups when it checkpoints after an append, and
# that work grew with the table: per-chunk appends to one table took 1.5x as long per row at
# 4e5 rows as at 1e5, and left the file 1.4-1.9x its data. Tables of at most this many rows
# keep both flat (bench/LOG.md "Growth": the stage's partitions).
PARTITION_ROWS = 100_000
_GROUPS_RE = re.compile(r"^groups_[0-9a-f]+_([0-9a-f]{8})_([0-9]+)_[0-9a-f]{8}$")  # host, pid


def _sql_string(text):
    """`text` inside a single-quoted SQL literal (COPY takes no parameter for its file name)."""
    return text.replace("'", "''")


def _unusable(path, e):
    return BertfeatError(
        f"cannot use the stage file {path} ({first_line(e, 160)}): it only caches"
        " message vectors, so delete it and run again (finished messages are recomputed)")


def open_stage(path, read_only=False, lock_timeout=None):
    """A connection to the stage file (waiting while another run holds it); an unreadable file is
    a one-line error that says what to do."""
    try:
        return waiting_for_lock(lambda: duckdb.connect(path, read_only=read_only, config=DUCKDB_CONFIG), path,
                                lock_timeout)
    except duckdb.Error as e:
        raise _unusable(path, e) from e


class Stage:
    """The stage file, opened per operation (a chunk's lookup, its write) like the database, so
    concurrent runs sharing it interleave instead of failing. This run's (message, group) rows go
    to a table of its own."""

    def __init__(self, path, settings, id_type, group_type, lock_timeout=None):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self.lock_timeout = lock_timeout
        self.key = stage_key(settings)
        self.table = f"vec_{self.key}"  # the first partition (0.3's only table); later ones add _p1, _p2, ...
        self.id_type, self.group_type = id_type, group_type
        self.run_tables = []  # this run's own tables besides `groups` (run_table)
        # this run's (message, group) rows; named by host and process, so that the table a killed
        # run leaves behind is recognized and dropped by the next run that opens the stage
        self.groups = self._run_table_name()
        self._file = HeldFile(lambda: open_stage(path, False, lock_timeout))
        with self._connection() as con:
            con.execute("CREATE TABLE IF NOT EXISTS stage_settings (key VARCHAR PRIMARY KEY, settings VARCHAR)")
            con.execute("INSERT OR IGNORE INTO stage_settings VALUES (?, ?)",
                        [self.key, json.dumps(settings, sort_keys=True)])
            self._create_partition(con, self.table)
            con.execute(f"CREATE TABLE {self.groups} (message_id {id_type}, group_id {group_type})")
            for (name,) in con.execute("SELECT table_name FROM duckdb_tables() WHERE table_name LIKE 'groups_%'"
                                       ).fetchall():
                m = _GROUPS_RE.match(name)
                if m and m.group(1) == HOST_TAG and not alive(int(m.group(2))):
                    con.execute(f"DROP TABLE IF EXISTS {name}")

    @contextlib.contextmanager
    def _connection(self, read_only=False):
        """The stage's connection (the held one, else opened for this block); a stage file that
        turns out damaged while in use (truncated, corrupted) is the one-line `_unusable` error."""
        held = self._file.con is not None  # held by the job's chunk loop
        con = self._file.con if held else open_stage(self.path, read_only, self.lock_timeout)
        try:
            yield con
        except (duckdb.IOException, duckdb.InternalException, duckdb.SerializationException) as e:
            if "No space left" in str(e):  # a full disk is not a damaged file
                raise
            raise _unusable(self.path, e) from e
        finally:
            if not held:
                con.close()

    def hold(self):
        """Keep the stage open for a block (the job's chunk loop), except inside released()."""
        return self._file.hold()

    def released(self):
        """Let go of the stage file while inference runs, so another run can use it."""
        return self._file.released()

    def _run_table_name(self):
        return f"groups_{self.key}_{HOST_TAG}_{os.getpid()}_{uuid.uuid4().hex[:8]}"

    def _create_partition(self, con, name):
        con.execute(f"CREATE TABLE IF NOT EXISTS {name} (message_id {self.id_type} PRIMARY KEY,"
                    " text_hash VARCHAR, vec FLOAT[])")

    def _partitions(self, con):
        """The key's tables, oldest first."""
        names = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE starts_with(table_name, ?)",
                                           [self.table]).fetchall()}
        more = sorted((int(n[len(self.table) + 2:]), n) for n in names
                      if n.startswith(self.table + "_p") and n[len(self.table) + 2:].isdigit())
        return [self.table] + [n for _, n in more]

    def _vectors(self, con):
        """The key's rows (message_id, text_hash, vec) as one table expression."""
        parts = self._partitions(con)
        if len(parts) == 1:
            return parts[0]
        return "(" + " UNION ALL ".join(f"SELECT message_id, text_hash, vec FROM {p}" for p in parts) + ")"

    def staged(self, message_ids, text_hashes):
        """{message_id: text_hash} already staged, and {text_hash: vec} for the hashes of the
        messages not staged with that text (another message's identical text)."""
        # semi-joins against the chunk's keys (hash joins), not a per-row list search. The hash
        # lookup scans the whole stage (its hashes are in no order), so it runs only for what the
        # first lookup (by id, pruned by the ids' zone maps) did not find: a rerun never runs it
        with self._connection() as con:
            vectors = self._vectors(con)
            done = dict(con.execute(
                f"SELECT message_id, text_hash FROM {vectors} WHERE message_id IN (SELECT unnest(?))",
                [list(message_ids)]).fetchall())
            wanted = {h for m, h in zip(message_ids, text_hashes) if done.get(m) != h}
            by_hash = dict(con.execute(
                f"SELECT text_hash, any_value(vec) FROM {vectors} WHERE text_hash IN (SELECT unnest(?))"
                " GROUP BY text_hash", [list(wanted)]).fetchall()) if wanted else {}
        return done, by_hash

    def put(self, rows, groups=()):
        """Stage (message_id, text_hash, vec) rows in one transaction (a kill leaves whole chunks),
        and record this run's (message_id, group_id) rows; one open of the file for both."""
        if not rows and not groups:
            return
        with self._connection() as con:
            if rows:
                con.execute("BEGIN")
                parts = self._partitions(con)
                for part in parts:
                    con.execute(f"DELETE FROM {part} WHERE message_id IN (SELECT unnest(?))", [[m for m, _, _ in rows]])
                target = parts[-1]
                if con.execute(f"SELECT count(*) FROM {target}").fetchall()[0][0] >= PARTITION_ROWS:
                    target = f"{self.table}_p{len(parts)}"
                    self._create_partition(con, target)
                insert_vectors(con, target, [m for m, _, _ in rows], [h for _, h, _ in rows],
                               np.stack([v for _, _, v in rows]))
                con.execute("COMMIT")
            if groups:
                insert_columns(con, self.groups, ["message_id", "group_id"], groups)

    def run_table(self, columns_sql):
        """A table of this run's own in the stage, named like `groups` (so a killed run's is
        dropped by the next run that opens the stage) and dropped with it."""
        name = self._run_table_name()
        with self._connection() as con:
            con.execute(f"CREATE TABLE {name} ({columns_sql})")
        self.run_tables.append(name)
        return name

    def put_rows(self, table, columns, values, vectors):
        """INSERT rows into one of this run's tables: scalar `columns` (`values`, a list per
        column) and `vec` from `vectors` [n, d]."""
        with self._connection() as con:
            insert_with_vectors(con, table, columns, values, [("vec", vectors)])

    def drop_groups(self):
        """Forget this run's (message, group) rows, and its other tables, once its tables are written."""
        with self._connection() as con:
            for name in [self.groups] + self.run_tables:
                con.execute(f"DROP TABLE IF EXISTS {name}")

    def fill_group_features(self, con, target, aggregations, schema=None, create=False):
        """INSERT the feature table's rows (id, group_id, feat, value, group_norm) into `target`
        (with `create`, a temporary table made from them), in id order: by group, aggregation (as
        given), dimension, ids 1..N. `con` sees the stage (`schema`: its name there when attached).

        The messages' vectors are first copied in group order (a temporary table), then reduced
        a slice of groups at a time (SLICE_KEYS (group, dimension) values per statement): one
        GROUP BY over every value of 10^6 messages in 10^5 groups outgrew DuckDB's 1 GB and
        spilled, growing 30x from 10^5 to 10^6 messages; sliced, it grows 7x (bench/LOG.md
        "Growth"). Ids by arithmetic, not by a window over every row: (group's rank, aggregation,
        dimension) -> ((rank * K) + k) * D + i + 1, every group having all D dimensions."""
        parts, groups = self._names(schema)
        k_aggs, dims = len(aggregations), self._dims()
        aggs = ", ".join(f"{DUCK_AGG[a]}(v) AS a{k}" for k, a in enumerate(aggregations))
        long = " UNION ALL ".join(f"SELECT rank, {k} AS k, i, a{k} AS value FROM a" for k in range(k_aggs))
        # messages joined to their groups before their vectors are read: whichever side DuckDB
        # builds its hash table on is a table of messages, never one of vectors
        vectors = " UNION ALL ".join(f"SELECT g.group_id, s.vec FROM {groups} g JOIN {p} s USING (message_id)"
                                     for p in parts)
        try:
            con.execute("CREATE OR REPLACE TEMP TABLE bertfeat_ranks AS SELECT group_id,"
                        " (row_number() OVER (ORDER BY group_id) - 1)::BIGINT AS rank"
                        f" FROM (SELECT DISTINCT group_id FROM {groups})")
            con.execute("CREATE OR REPLACE TEMP TABLE bertfeat_by_group AS SELECT r.rank, v.vec"
                        f" FROM ({vectors}) v JOIN temp.bertfeat_ranks r USING (group_id) ORDER BY r.rank")
            n_groups = con.execute("SELECT count(*) FROM temp.bertfeat_ranks").fetchall()[0][0]
            per_slice = max(1, SLICE_KEYS // max(1, k_aggs * dims))
            for lo in range(0, max(n_groups, 1), per_slice):
                sql = (f"WITH u AS (SELECT rank, unnest(range(len(vec))) AS i, unnest(vec) AS v"
                       f" FROM temp.bertfeat_by_group WHERE rank >= {lo} AND rank < {lo + per_slice}),"
                       f" a AS (SELECT rank, i, {aggs} FROM u GROUP BY rank, i), l AS ({long})"
                       f" SELECT (l.rank * {k_aggs} + l.k) * {dims} + l.i + 1 AS id, r.group_id,"
                       " CAST(l.i AS VARCHAR) || list_extract(?, l.k + 1) AS feat, l.value, l.value AS group_norm"
                       " FROM l JOIN temp.bertfeat_ranks r USING (rank) ORDER BY id")
                params = [[ABBR[a] for a in aggregations]]
                if create and lo == 0:
                    con.execute(f"CREATE TEMP TABLE {target} AS {sql}", params)
                else:
                    con.execute(f"INSERT INTO {target} {sql}", params)
        finally:
            con.execute("DROP TABLE IF EXISTS temp.bertfeat_by_group")
            con.execute("DROP TABLE IF EXISTS temp.bertfeat_ranks")

    def _dims(self):
        """The staged vectors' dimensions (every vector of a key has the same)."""
        with self._connection(read_only=True) as con:
            for part in self._partitions(con):
                row = con.execute(f"SELECT len(vec) FROM {part} LIMIT 1").fetchall()
                if row:
                    return int(row[0][0])
        return 0

    def fill_message_features(self, con, target, schema=None, create=False):
        """INSERT the message-level table's rows into `target` (as fill_group_features), features
        named by dimension, ids by (message's rank, dimension) -> rank * D + i + 1."""
        parts, groups = self._names(schema)
        dims = self._dims()
        rows = " UNION ALL ".join(f"SELECT message_id, unnest(range(len(vec))) AS i, unnest(vec) AS v FROM {p}"
                                  f" WHERE message_id IN (SELECT message_id FROM {groups})" for p in parts)
        sql = (f"WITH r AS (SELECT message_id, (row_number() OVER (ORDER BY message_id) - 1)::BIGINT AS rank"
               f" FROM (SELECT DISTINCT message_id FROM {groups}))"
               f" SELECT r.rank * {dims} + u.i + 1 AS id, message_id AS group_id, CAST(u.i AS VARCHAR) AS feat,"
               f" u.v AS value, u.v AS group_norm FROM ({rows}) u JOIN r USING (message_id) ORDER BY id")
        con.execute(f"CREATE TEMP TABLE {target} AS {sql}" if create else f"INSERT INTO {target} {sql}")

    def _names(self, schema):
        """([the key's partitions], this run's groups table), prefixed with `schema`."""
        prefix = f"{schema}." if schema else ""
        with self._connection(read_only=True) as con:
            parts = self._partitions(con)
        return [prefix + p for p in parts], prefix + self.groups

    def to_csv(self, fill, path):
        """Write the rows `fill` (fill_group_features or fill_message_features, its other
        arguments bound) makes to `path` as CSV (no header, every field in double quotes, a quote
        inside doubled, NULL as an unquoted NULL), straight from the stage file, in id order:
        what MySQL's LOAD DATA reads with OPTIONALLY ENCLOSED BY '"' ESCAPED BY ''."""
        # values as DOUBLE: a staged FLOAT written as its own shortest decimal would be read back
        # by MySQL as a different double (5.7e-8 off) than the exact one the INSERT path sends
        with self._connection(read_only=True) as con, _filled(con, fill) as table:
            con.execute(f"COPY (SELECT id, group_id, feat, CAST(value AS DOUBLE), CAST(group_norm AS DOUBLE)"
                        f" FROM {table}) TO '{_sql_string(path)}' (FORMAT csv, HEADER false, QUOTE '\"',"
                        " ESCAPE '\"', FORCE_QUOTE *, NULLSTR 'NULL')")

    def filled_rows(self, fill, batch_size=50_000):
        """The rows `fill` makes (as to_csv), in id order, in batches."""
        with self._connection(read_only=True) as con, _filled(con, fill) as table:
            cur = con.execute(f"SELECT * FROM {table}")
            while batch := cur.fetchmany(batch_size):
                yield batch

    def rows(self, sql, params, batch_size=50_000):
        """Run a query on a read-only connection to the stage file, in batches."""
        with self._connection(read_only=True) as con:
            cur = con.execute(sql, params)
            while batch := cur.fetchmany(batch_size):
                yield batch


@contextlib.contextmanager
def _filled(con, fill):
    """A temporary table of the rows `fill` makes on `con` (read in insertion order: id order),
    dropped after the block."""
    fill(con, "bertfeat_rows", create=True)
    try:
        yield "temp.bertfeat_rows"
    finally:
        con.execute("DROP TABLE IF EXISTS temp.bertfeat_rows")
