"""DuckDB engine: database `NAME` is the file `<db_dir>/NAME.duckdb`."""
import contextlib
import hashlib
import os
import re
import time
import uuid

import duckdb
import numpy as np

from ..errors import BertfeatError, first_line
from ..progress import notice
from . import Engine


DEFAULT_LOCK_TIMEOUT = 600.0  # seconds a run waits for a DuckDB file another process holds


# DuckDB's own default is 80% of the machine's memory: writing a 10^5-message table (3.8*10^7
# rows, numbered in order) took 4.1 GB. With a limit it spills to a temporary folder beside the
# database file (bench/LOG.md "Growth").
DUCKDB_CONFIG = {"memory_limit": os.environ.get("BERTFEAT_DUCKDB_MEMORY", "1GB")}


class DuckEngine(Engine):
    """DuckDB lets one process at a time open a database file for writing, and none while another
    writes. So bertfeat holds the file only while it reads or writes: outside `hold()` each
    operation opens and closes it; a job holds it throughout except for its long compute
    (`released()` around inference and sentence splitting), so during an hours-long --add_bert,
    --ls, a notebook or a second run get in between chunks. A file another process holds is
    waited for, with a notice, up to `lock_timeout` seconds."""
    kind = "duckdb"

    def __init__(self, db, db_dir, create=False, lock_timeout=None):
        self.db = db
        self.path = os.path.join(db_dir, f"{db}.duckdb")
        self.lock_timeout = DEFAULT_LOCK_TIMEOUT if lock_timeout is None else float(lock_timeout)
        self._file = HeldFile(self._open)
        if not create and not os.path.exists(self.path):
            raise BertfeatError(
                f"database {db!r} not found: no file {self.path} (import data with --import_csv FILE,"
                " or point --db_dir / BERTFEAT_DB_DIR at the folder that holds it)")
        if create:
            os.makedirs(db_dir, exist_ok=True)

    def _open(self):
        try:
            return waiting_for_lock(lambda: duckdb.connect(self.path, config=DUCKDB_CONFIG), self.path,
                                    self.lock_timeout)
        except duckdb.Error as e:
            raise BertfeatError(f"cannot open DuckDB file {self.path}: {first_line(e)}") from e

    def hold(self):
        """One connection for the block (nested holds share it); closed when the outermost ends."""
        return self._file.hold()

    def released(self):
        """Inside a job-long hold(): let go of the file for a block of long work that needs no
        database (inference, sentence splitting), then take it back (waiting if needed)."""
        return self._file.released()

    def quote(self, name):
        return '"' + name.replace('"', '""') + '"'

    def execute(self, sql, params=()):
        with self.hold() as con:
            con.execute(sql, list(params))

    def executemany(self, sql, rows):
        with self.hold() as con:
            con.executemany(sql, [list(r) for r in rows])

    def vector_type(self, dims):
        return f"FLOAT[{dims}]"

    def insert_vector_rows(self, table, columns, values, vectors):
        """INSERT rows of scalar `columns` (`values`: a list per column) and vector columns
        [(name, [n, d] array)], stored as FLOAT[d]."""
        with self.hold() as con:
            insert_with_vectors(con, self.q(table), [self.q(c, "column name") for c in columns], values,
                                [(self.q(c, "column name"), a.astype(np.float32)) for c, a in vectors])

    def insert_rows(self, table, columns, rows):
        # One statement with a list per column: DuckDB's executemany is row-at-a-time and slow.
        if rows:
            with self.hold() as con:
                insert_columns(con, self.q(table), [self.q(c, "column name") for c in columns], rows)

    def query(self, sql, params=()):
        with self.hold() as con:
            return con.execute(sql, list(params)).fetchall()

    def stream(self, sql, params=(), batch_size=1000):
        with self.hold() as con:  # the file stays open while the caller reads: keep such reads short
            cur = con.cursor()
            try:
                cur.execute(sql, list(params))
                while rows := cur.fetchmany(batch_size):
                    yield rows
            finally:
                cur.close()

    def _in_id_order(self, select, rest, mid, params, batch_size):
        """Each batch its own short read (keyset on (id, rowid)), so the file is free between
        batches however long the caller works on each."""
        base = f"SELECT {select}, {mid}, rowid {rest}"
        n_columns = len(select.split(", "))
        after = None
        while True:
            sql, args = base, list(params)
            if after is not None:  # `mid >= ?` alone lets the scan skip row groups by their zone maps
                sql += f" AND {mid} >= ? AND ({mid} > ? OR ({mid} = ? AND rowid > ?))"
                args += [after[0], after[0], after[0], after[1]]
            rows = self.query(sql + f" ORDER BY {mid}, rowid LIMIT {int(batch_size)}", args)
            if not rows:
                return
            after = rows[-1][n_columns:]
            yield [r[:n_columns] for r in rows]

    @contextlib.contextmanager
    def attached(self, path, alias):
        """This database's connection with DuckDB file `path` attached read-only as `alias`, for
        the block: queries join both, and rows go from one to the other without Python."""
        with self.hold() as con:
            waiting_for_lock(lambda: con.execute(f"ATTACH ? AS {self.q(alias)} (READ_ONLY)", [path]),
                             path, self.lock_timeout)
            try:
                yield con
            finally:
                con.execute(f"DETACH {self.q(alias)}")

    def insert_staged(self, table, stage, fill):
        """The rows `fill` makes from the stage (attached read-only: they never pass through
        Python) into feature table `table` (made by create_feature_table), then its primary key:
        built after the rows, the key of 3.84e7 rows takes 11.3 s instead of 13.9 s checked row by
        row during the insert (DuckDB 2.0.1, 1 GB limit; bench/LOG.md "Growth")."""
        with _memory_limit_says_what_to_do(table):
            with self.attached(stage.path, "bertfeat_stage") as con:
                fill(con, self.q(table), schema="bertfeat_stage")
            self.execute(f"ALTER TABLE {self.q(table)} ADD PRIMARY KEY (id)")

    def commit(self):
        pass  # autocommit: each statement is its own transaction

    def close(self):
        pass  # nothing is held between operations

    def tables(self):
        return [r[0] for r in self.query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
            " ORDER BY table_name")]

    def columns(self, table):
        return [(r[0], r[1]) for r in self.query(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = 'main' AND table_name = ? ORDER BY ordinal_position", [table])]

    def table_comment(self, table):
        rows = self.query("SELECT comment FROM duckdb_tables() WHERE schema_name = 'main'"
                          " AND table_name = ?", [table])
        return rows[0][0] if rows else None

    def set_table_comment(self, table, text):
        literal = "'" + text.replace("'", "''") + "'"  # COMMENT ON takes no parameters
        self.execute(f"COMMENT ON TABLE {self.q(table)} IS {literal}")

    def content_checksum(self, table, columns):
        cols = ", ".join(self.q(c, "column name") for c in columns)
        n, total = self.query(f"SELECT count(*), sum(hash({cols})::HUGEINT) FROM {self.q(table)}")[0]
        return f"{n}:{total or 0}"

    def swap_in(self, tmp, table):
        with self.hold():
            self.execute("BEGIN")
            try:
                self.execute(f"DROP TABLE IF EXISTS {self.q(table)}")
                self.execute(f"ALTER TABLE {self.q(tmp)} RENAME TO {self.q(table)}")
                self.execute("COMMIT")
            except BaseException:
                self.execute("ROLLBACK")
                raise

    def insert_select(self, table, columns, reader, sql, params, advance=lambda n: None):
        # DuckDB runs the reading query itself: the rows never pass through Python
        cols = ", ".join(self.q(c, "column name") for c in columns)
        self.execute(f"INSERT INTO {self.q(table)} ({cols}) {sql}", params)

    def copy_schema(self, src, dst, text_column):
        self.execute(f"CREATE TABLE {self.q(dst)} AS SELECT * FROM {self.q(src)} LIMIT 0")
        self.execute(f"ALTER TABLE {self.q(dst)} ALTER {self.q(text_column)} TYPE VARCHAR")

    def create_feature_table(self, table, group_type):
        self.execute(
            f"CREATE TABLE {self.q(table)} (id BIGINT, group_id {group_type},"  # key: insert_staged
            " feat VARCHAR, value DOUBLE, group_norm DOUBLE)")

    def index_feature_table(self, table):
        # DuckDB cannot rename a table that has indexes: they are added after the rename.
        digest = hashlib.sha1(table.encode()).hexdigest()[:12]
        with _memory_limit_says_what_to_do(table):
            self.execute(f"CREATE INDEX IF NOT EXISTS {self.q('gi_' + digest)} ON {self.q(table)} (group_id)")
            self.execute(f"CREATE INDEX IF NOT EXISTS {self.q('fi_' + digest)} ON {self.q(table)} (feat)")


@contextlib.contextmanager
def _memory_limit_says_what_to_do(table):
    """DuckDB's out-of-memory error while writing a feature table, as one line that says what to
    do. Its primary key and indexes (SPEC §1) are ART indexes held in memory: a table of ~10^8
    rows (the message-level table of 10^6 posts x 384 dimensions is 3.8e8) needs more than the
    1 GB bertfeat gives DuckDB by default (bench/LOG.md "Growth")."""
    try:
        yield
    except duckdb.OutOfMemoryException as e:
        raise BertfeatError(
            f"DuckDB ran out of its memory limit ({DUCKDB_CONFIG['memory_limit']}, BERTFEAT_DUCKDB_MEMORY) writing"
            f" {table}: its primary key and indexes are held in memory; raise BERTFEAT_DUCKDB_MEMORY (e.g. 8GB)"
            " if the machine has it, or use --db_engine mysql for tables of ~10^8 rows") from e


class HeldFile:
    """A DuckDB file opened only while in use: `hold()` keeps one connection for a block (nested
    holds share it, the outermost closes it); `released()` lets go of it inside a hold for long
    work and takes it back after. `open_` makes a connection (waiting for the lock)."""

    def __init__(self, open_):
        self._open, self.con, self._holds = open_, None, 0

    @contextlib.contextmanager
    def hold(self):
        if self.con is None:
            self.con = self._open()
        self._holds += 1
        try:
            yield self.con
        finally:
            self._holds -= 1
            if self._holds == 0 and self.con is not None:
                con, self.con = self.con, None
                con.close()

    @contextlib.contextmanager
    def released(self):
        if self.con is None:
            yield
            return
        self.con.close()
        self.con = None
        try:
            yield
        finally:
            if self._holds:
                self.con = self._open()


def waiting_for_lock(open_it, path, timeout=None):
    """`open_it()`, retried while another process holds DuckDB file `path` (one notice, then
    quiet), for up to `timeout` seconds; then a one-line error naming the holder."""
    timeout = DEFAULT_LOCK_TIMEOUT if timeout is None else float(timeout)
    deadline, told = time.monotonic() + timeout, False
    while True:
        try:
            return open_it()
        except duckdb.Error as e:
            first = first_line(e)
            if "Could not set lock" not in first:
                raise
            holder = re.search(r"\(PID (\d+)\)", first)
            who = f"process {holder.group(1)}" if holder else "another process"
            if time.monotonic() >= deadline:
                raise BertfeatError(
                    f"DuckDB file {path} is held by {who} (DuckDB allows one writer): gave up after"
                    f" {timeout:g} s; close it there (a notebook's connection, another bertfeat run)"
                    " or raise --lock_timeout") from e
            if not told:
                notice(f"{path} is in use by {who}: waiting for it (up to {timeout:g} s, --lock_timeout)")
                told = True
            time.sleep(0.1)


def insert_columns(con, quoted_table, quoted_columns, rows):
    """INSERT rows into a DuckDB table as one statement of unnested column lists."""
    cols = list(zip(*rows))
    select = ", ".join("unnest(?)" for _ in cols)
    con.execute(f"INSERT INTO {quoted_table} ({', '.join(quoted_columns)}) SELECT {select}",
                [list(c) for c in cols])


def insert_vectors(con, quoted_table, message_ids, text_hashes, vectors):
    """INSERT (message_id, text_hash, vec) rows, `vectors` [n, d]: the vectors go in as one scan
    of a numpy array DuckDB reads in place (binding 384 floats a row as Python values took ~9x
    as long: bench/LOG.md "Scale-out"), the ids and hashes as bound lists."""
    insert_with_vectors(con, quoted_table, ["message_id", "text_hash"], [message_ids, text_hashes],
                        [("vec", vectors)])


def insert_with_vectors(con, quoted_table, quoted_columns, values, vectors):
    """INSERT rows of scalar columns (`values`: one list per column) and vector columns
    (`vectors`: [(quoted column, [n, d] array)]); each vector column is read in place from its
    numpy array (insert_vectors)."""
    n = len(vectors[0][1])
    names, joins, picks = [], [], []
    try:
        for k, (_, array) in enumerate(vectors):
            d = array.shape[1]
            names.append(f"vectors_{uuid.uuid4().hex[:8]}")
            con.register(names[-1], {"row": np.repeat(np.arange(n), d), "pos": np.tile(np.arange(d), n),
                                     "x": np.ascontiguousarray(array).ravel()})
            joins.append(f" JOIN (SELECT row, list(x ORDER BY pos) AS vec FROM {names[-1]} GROUP BY row) v{k}"
                         " USING (row)")
            picks.append(f"v{k}.vec")
        scalars = "".join(f"unnest(?) AS c{k}, " for k in range(len(values)))
        columns = ", ".join(list(quoted_columns) + [c for c, _ in vectors])
        select = ", ".join([f"k.c{k}" for k in range(len(values))] + picks)
        con.execute(f"INSERT INTO {quoted_table} ({columns}) SELECT {select} FROM"
                    f" (SELECT {scalars}unnest(range(?)) AS row) k{''.join(joins)}",
                    [list(v) for v in values] + [n])
    finally:
        for name in names:
            con.unregister(name)
