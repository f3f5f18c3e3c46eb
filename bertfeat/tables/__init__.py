"""Database engines: one small interface, DuckDB (embedded default) and MySQL/MariaDB.

Every identifier that reaches SQL goes through `check_name` (a fixed alphabet) and the
engine's `quote`; every value goes through parameters. SQL here uses `?` placeholders;
the MySQL engine maps them to the driver's `%s`.
"""
import contextlib
import hashlib
import os
import re
import socket
import uuid

from ..errors import BertfeatError, param

NAME_RE = re.compile(r"^[A-Za-z0-9_$]+$")
ENGINES = ("duckdb", "mysql")
RUNS_TABLE = "bertfeat_runs"  # what wrote each feature table (Engine.record_run)
TEMP_PREFIX = "bertfeat_tmp_"
TEMP_RE = re.compile(rf"^{TEMP_PREFIX}([0-9a-f]{{8}})_([0-9]+)_[0-9a-f]{{8}}$")
HOST_TAG = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


MAX_NAME = 64  # MySQL's identifier limit, kept on DuckDB too so tables move between engines


def check_name(name, what="name", max_len=MAX_NAME):
    """Return `name` if it is a safe SQL identifier; else raise a one-line error saying why."""
    shown = repr(name[:60] + "…" if isinstance(name, str) and len(name) > 60 else name)
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise BertfeatError(f"invalid {what} {shown}: use only letters, digits, '_' and '$'")
    if len(name) > max_len:
        raise BertfeatError(f"invalid {what} {shown}: longer than {max_len} characters")
    return name


DEFAULT_MYSQL_CONFIG = "~/.my.cnf"  # as DLATK
CONNECTION_KEYS = ("db_engine", "db_dir", "mysql_config_file", "mysql_host", "mysql_port", "mysql_user",
                   "lock_timeout")


def check_connection_keywords(conn, function=None):
    """A keyword that is not a connection keyword is a one-line error naming the nearest known
    keyword (of the connection, or of `function`), not a TypeError from deep inside."""
    import difflib
    import inspect
    unknown = [k for k in conn if k not in CONNECTION_KEYS]
    if not unknown:
        return
    known = list(CONNECTION_KEYS)
    if function is not None:
        known += [p for p in inspect.signature(function).parameters if p != "conn"]
    near = difflib.get_close_matches(unknown[0], known, n=1)
    raise BertfeatError(f"unknown keyword {unknown[0]!r}" + (f" (did you mean {near[0]!r}?)" if near else "")
                        + f"; connection keywords are {', '.join(CONNECTION_KEYS)}")


def connect(db, db_engine="duckdb", db_dir=None, mysql_config_file=None, mysql_host=None,
            mysql_port=None, mysql_user=None, lock_timeout=None, create=False):
    """Open database `db` on the chosen engine. `create=True` creates it when missing.

    `lock_timeout`: seconds to wait for a DuckDB file that another process holds (default 600)."""
    if db_engine not in ENGINES:
        raise BertfeatError(f"unknown --db_engine {db_engine!r}: choose one of {', '.join(ENGINES)}")
    check_name(db, "database name")
    if db_engine == "duckdb":
        from .duck import DuckEngine
        db_dir = db_dir or os.environ.get("BERTFEAT_DB_DIR") or "."
        engine = DuckEngine(db, db_dir, create=create, lock_timeout=lock_timeout)
    else:
        from .mysql import MySQLEngine
        engine = MySQLEngine(db, config_file=mysql_config_file, host=mysql_host, port=mysql_port,
                             user=mysql_user, create=create)
    with engine.hold():
        engine.drop_stale_temps()
    return engine


class Engine:
    """What the jobs need from a database; subclasses fill in the engine specifics."""

    kind = ""
    db = ""

    def quote(self, name):
        raise NotImplementedError

    def q(self, name, what="name"):
        """Validate and quote an identifier in one step."""
        return self.quote(check_name(name, what))

    # --- queries -----------------------------------------------------------------
    def execute(self, sql, params=()):
        raise NotImplementedError

    def executemany(self, sql, rows):
        raise NotImplementedError

    def query(self, sql, params=()):
        """Run a small query and return all its rows."""
        raise NotImplementedError

    def stream(self, sql, params=(), batch_size=1000):
        """Yield lists of at most `batch_size` rows, on a connection of its own (never fetchall)."""
        raise NotImplementedError

    def by_id(self, table, id_field, columns, batch_size=1000, from_id=None):
        """The rows of `table` with a message id, in id order (from `from_id` on), streamed.

        Returns (how many rows will come, how many rows have a NULL id and never come, the
        generator of row batches). Both jobs that read a message table in order use this.
        """
        mid = self.q(id_field, "column name")
        where, params = (f" AND {mid} >= ?", [from_id]) if from_id is not None else ("", [])
        total = self.query(f"SELECT count(*) FROM {self.q(table)} WHERE {mid} IS NOT NULL{where}", params)[0][0]
        null_ids = self.query(f"SELECT count(*) FROM {self.q(table)} WHERE {mid} IS NULL")[0][0]
        select = ", ".join(self.q(c, "column name") for c in columns)
        rest = f"FROM {self.q(table)} WHERE {mid} IS NOT NULL{where}"
        return total, null_ids, self._in_id_order(select, rest, mid, params, batch_size)

    def id_starts(self, table, id_field, every):
        """The message ids at which each run of `every` rows (in id order) starts: the shards that
        Ray workers read themselves (rows_between). One query: the server numbers the rows, and a
        repeated id never straddles two shards."""
        mid = self.q(id_field, "column name")
        rows = self.query(f"SELECT DISTINCT {mid} FROM (SELECT {mid}, ROW_NUMBER() OVER (ORDER BY {mid}) AS rn"
                          f" FROM {self.q(table)} WHERE {mid} IS NOT NULL) AS numbered"
                          f" WHERE MOD(rn - 1, {int(every)}) = 0 ORDER BY {mid}")
        return [r[0] for r in rows]

    def rows_between(self, table, id_field, columns, lo, hi):
        """The rows with lo <= message id < hi (hi None: no upper bound), in id order."""
        mid = self.q(id_field, "column name")
        select = ", ".join(self.q(c, "column name") for c in columns)
        where, params = f"{mid} >= ?", [lo]
        if hi is not None:
            where, params = where + f" AND {mid} < ?", params + [hi]
        return self.query(f"SELECT {select} FROM {self.q(table)} WHERE {where} ORDER BY {mid}", params)

    def _in_id_order(self, select, rest, mid, params, batch_size):
        """Batches of `SELECT select rest` ordered by `mid`: one streamed query."""
        return self.stream(f"SELECT {select} {rest} ORDER BY {mid}", params, batch_size)

    def commit(self):
        raise NotImplementedError

    def close(self):
        raise NotImplementedError

    def hold(self):
        """Keep the database open for a block (DuckDB; a server connection is always open)."""
        return contextlib.nullcontext()

    def released(self):
        """Let go of the database for a block of long work inside a hold() (DuckDB)."""
        return contextlib.nullcontext()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- catalog -----------------------------------------------------------------
    def tables(self):
        raise NotImplementedError

    def table_exists(self, table):
        return table in self.tables()

    def columns(self, table):
        """[(column name, SQL type)] of `table`, in order."""
        raise NotImplementedError

    def require_table(self, table, columns=(), flags=()):
        """Raise a one-line error when `table` or any of `columns` is missing; return its columns.
        `flags` pairs each column with the flag that names it, in the same order (the error says
        which flag to fix)."""
        check_name(table, "table name")
        if not self.table_exists(table):
            raise BertfeatError(
                f"table {table!r} not found in {self.kind} database {self.db!r}"
                " (see --show_feature_tables / --ls; "
                + ("make it with --add_bert)" if table.startswith("feat$") else
                   "import one with --import_csv FILE)"))
        have = [c for c, _ in self.columns(table)]
        for col, flag in zip(columns, list(flags) + [None] * len(columns)):
            if col not in have:
                named = f" (named by {param(flag)})" if flag else ""
                raise BertfeatError(
                    f"column {col!r} not found in table {table!r}{named}; it has: {', '.join(have)}")
        return have

    # --- writing -----------------------------------------------------------------
    def drop_table(self, table):
        self.execute(f"DROP TABLE IF EXISTS {self.q(table)}")

    def copy_schema(self, src, dst, text_column):
        """Create empty `dst` with `src`'s columns, `text_column` widened to hold long text."""
        raise NotImplementedError

    # --- bookkeeping for resumable work: a note kept with the table itself ------------------
    def table_comment(self, table):
        raise NotImplementedError

    def set_table_comment(self, table, text):
        raise NotImplementedError

    def content_checksum(self, table, columns):
        """A fingerprint of `table`'s `columns` over all rows (row count and a hash sum): equal
        before and after means the rows are, with overwhelming probability, the same."""
        raise NotImplementedError

    def temp_name(self, table):
        """A fresh table name for writing `table` before it is swapped in: unique to this run, so
        concurrent runs never share one. It names this host and process, so that tables left by
        a killed run are recognized and dropped by the next job (`drop_stale_temps`)."""
        return f"{TEMP_PREFIX}{HOST_TAG}_{os.getpid()}_{uuid.uuid4().hex[:8]}"

    def drop_stale_temps(self):
        """Drop temporary tables of processes on this host that no longer run (killed runs)."""
        for name in self.tables():
            m = TEMP_RE.match(name)
            if m and m.group(1) == HOST_TAG and not alive(int(m.group(2))):
                self.drop_table(name)
                self.commit()

    def create_table(self, table, columns):
        """CREATE TABLE from [(name, SQL type, is primary key)]."""
        defs = ", ".join(f"{self.q(n, 'column name')} {t}{' PRIMARY KEY' if pk else ''}"
                         for n, t, pk in columns)
        self.execute(f"CREATE TABLE {self.q(table)} ({defs}){self.table_options}")

    table_options = ""

    def csv_column_type(self, duck_type, longest=None):
        """This engine's column type for a CSV column DuckDB typed `duck_type` (text: `longest` chars)."""
        return duck_type

    def swap_in(self, tmp, table):
        """Replace `table` (if any) by the complete `tmp` in one step: readers see the old table or
        the new one, never neither."""
        raise NotImplementedError

    def insert_select(self, table, columns, reader, sql, params, advance=lambda n: None):
        """INSERT INTO `table` the rows of `sql` run on DuckDB connection `reader`, in batches."""
        cur = reader.execute(sql, params)
        while rows := cur.fetchmany(2000):
            self.insert_rows(table, columns, rows)
            advance(len(rows))

    def insert_rows(self, table, columns, rows):
        if not rows:
            return
        cols = ", ".join(self.q(c, "column name") for c in columns)
        marks = ", ".join("?" for _ in columns)
        self.executemany(f"INSERT INTO {self.q(table)} ({cols}) VALUES ({marks})", rows)

    long_text_type = "VARCHAR"

    def feature_group_type(self, source_type):
        """The feature table's group_id type for a correl field of SQL type `source_type`."""
        return source_type

    def insert_staged(self, table, stage, fill):
        """INSERT INTO `table` the rows `fill` makes from the stage (Stage.fill_group_features or
        fill_message_features, its other arguments bound)."""
        for rows in stage.filled_rows(fill):
            self.insert_rows(table, ["id", "group_id", "feat", "value", "group_norm"], rows)
            self.commit()

    def create_feature_table(self, table, group_type):
        """DLATK feature table: id, group_id, feat, value, group_norm, indexed on group_id and feat."""
        raise NotImplementedError

    def record_run(self, feat_table, featname, settings, summary):
        """Keep what wrote `feat_table` (settings and summary as JSON) in the runs table."""
        import json
        import time

        from ..version import __version__
        text, runs = self.long_text_type, self.q(RUNS_TABLE)
        self.execute(f"CREATE TABLE IF NOT EXISTS {runs} (feat_table VARCHAR({MAX_NAME}), created DOUBLE,"
                     f" bertfeat_version VARCHAR(32), featname {text}, settings {text}, summary {text})"
                     f"{self.table_options}")
        self.execute(f"DELETE FROM {runs} WHERE feat_table = ?", [feat_table])
        self.execute(f"INSERT INTO {runs} VALUES (?, ?, ?, ?, ?, ?)",
                     [feat_table, time.time(), __version__, featname, json.dumps(settings),
                      json.dumps(summary, default=str)])
        self.commit()

    def runs(self):
        """[(feature table, settings, summary)] from the runs table (none before the first run)."""
        import json
        if not self.table_exists(RUNS_TABLE):
            return []
        return [(t, json.loads(st), json.loads(su)) for t, st, su in
                self.query(f"SELECT feat_table, settings, summary FROM {self.q(RUNS_TABLE)}")]

    def index_feature_table(self, table):
        """Indexes that could not be made at creation (DuckDB); a no-op where they were."""
