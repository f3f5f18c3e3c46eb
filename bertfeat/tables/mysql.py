"""MySQL / MariaDB engine through PyMySQL; settings from ~/.my.cnf as DLATK does.

Why PyMySQL (bench/LOG.md, "MySQL writes"): mysql-connector-python 9.2+ rewrites every
statement it executes with a client-side script splitter (DELIMITER and comment handling that
ignores backslash escapes), so ordinary text such as "the delimiter between ... it's" broke
multi-row INSERTs (issue 9). PyMySQL escapes each value and joins them into multi-row INSERTs
without parsing the result; it wrote feature rows 1.9x faster than the old path here.
"""
import contextlib
import getpass
import os

import pymysql
from pymysql.constants import ER

from ..errors import BertfeatError
from . import DEFAULT_MYSQL_CONFIG, Engine

CONNECT_TIMEOUT = 10
LOAD_WAIT_S = 86400  # how long the server waits for LOAD DATA's streamed rows (net_read_timeout)
# DuckDB type of a CSV column -> MySQL type (text: decided by the longest value).
MYSQL_TYPES = {"BIGINT": "BIGINT", "INTEGER": "INT", "SMALLINT": "SMALLINT", "TINYINT": "TINYINT",
               "HUGEINT": "DECIMAL(38,0)", "UBIGINT": "BIGINT UNSIGNED", "DOUBLE": "DOUBLE",
               "FLOAT": "DOUBLE", "DATE": "DATE", "TIMESTAMP": "DATETIME(6)", "TIME": "TIME",
               "BOOLEAN": "TINYINT(1)"}


@contextlib.contextmanager
def _streamed_csv(stage, fill, path):
    """`path` holds the stage's rows as CSV (Stage.to_csv) while the block reads it once, start
    to end. Where the OS has named pipes it is one: DuckDB writes into it from a thread while
    the block's reader (LOAD DATA LOCAL INFILE) takes the rows, so no temporary file holds the
    table (a 10^5-group x 768 table is 7.7e7 rows, ~5 GB of CSV) and both run at once. Else a
    file is written first. Yields `complete()`, which the reader calls once it has read to the
    end (before it commits): it raises the writer's error, if any (the reader then saw a short
    file). A failure on either side ends the other."""
    if not hasattr(os, "mkfifo"):
        stage.to_csv(fill, path)
        yield lambda: None
        return
    import threading
    os.mkfifo(path, 0o600)
    failed, finished = [], threading.Event()

    def write():
        try:
            stage.to_csv(fill, path)
        except BaseException as e:  # raised in the caller's thread below
            failed.append(e)
        finally:  # after a failure, a reader still waiting for the pipe to open gets an end of file
            while failed and not finished.is_set():
                try:
                    os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
                    break
                except OSError:  # no reader yet (ENXIO) or any more
                    finished.wait(0.05)

    def complete():
        finished.set()  # the reader has read to the end
        writer.join()
        if failed:
            raise failed[0]
    writer = threading.Thread(target=write, name="bertfeat-csv", daemon=True)
    writer.start()
    try:
        yield complete
    finally:
        finished.set()
        while writer.is_alive():  # the reader stopped early: a writer blocked on the pipe gets EPIPE
            try:
                os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
            except OSError:
                pass
            writer.join(0.05)


ACCESS_DENIED_NO_PASSWORD = 1698  # an unknown user, or root allowed through the socket only


def _client_section(path):
    """The option file's [client] host and port (PyMySQL reads the file itself; these only name
    the server in messages)."""
    import configparser
    parser = configparser.ConfigParser(allow_no_value=True, strict=False, interpolation=None)
    try:
        parser.read(path)
        section = parser["client"] if parser.has_section("client") else {}
        return {k: section[k].strip("'\"") for k in ("host", "port") if section.get(k)}
    except (configparser.Error, UnicodeDecodeError, OSError):
        return {}


class MySQLEngine(Engine):
    kind = "mysql"

    def __init__(self, db, config_file=None, host=None, port=None, user=None, create=False):
        self.db = db
        self.settings = {"charset": "utf8mb4", "use_unicode": True, "connect_timeout": CONNECT_TIMEOUT,
                         "local_infile": False, "autocommit": False}
        if config_file is not None and not os.path.isfile(os.path.expanduser(config_file)):
            raise BertfeatError(f"MySQL option file not found: {config_file} (--mysql_config_file; leave it out to"
                                f" use {DEFAULT_MYSQL_CONFIG} when there is one)")
        config_file = os.path.expanduser(config_file or DEFAULT_MYSQL_CONFIG)
        self.option_file = {}
        if os.path.exists(config_file):
            self.settings["read_default_file"] = config_file
            self.settings["read_default_group"] = "client"  # DLATK's section
            self.option_file = _client_section(config_file)
        elif host is None and user is None:
            self.settings["user"] = getpass.getuser()
        for key, value in (("host", host), ("port", port), ("user", user)):
            if value is not None:
                self.settings[key] = int(value) if key == "port" else value
        if "read_default_file" not in self.settings:
            self.settings.setdefault("host", "127.0.0.1")
        if create:
            con = self._connect(None)
            with con.cursor() as cur:
                cur.execute(f"CREATE DATABASE IF NOT EXISTS {self.quote(db)} CHARACTER SET utf8mb4")
            con.close()
        self.con = self._connect(db)

    def where(self):
        """host:port as the connection uses them: the flags, else the option file's [client]."""
        def get(key, default):
            return self.settings.get(key, self.option_file.get(key, default))
        return f"{get('host', 'localhost')}:{get('port', 3306)}"

    def _connect(self, database, **extra):
        try:
            return pymysql.connect(**{**self.settings, **extra, **({"database": database} if database else {})})
        except pymysql.err.MySQLError as e:
            errno, msg = (e.args + (None, None))[:2]
            if errno == ER.BAD_DB_ERROR:
                raise BertfeatError(
                    f"database {database!r} not found on the MySQL server at {self.where()}"
                    " (import data with --import_csv FILE, or check -d)") from e
            if errno in (ER.ACCESS_DENIED_ERROR, ER.DBACCESS_DENIED_ERROR, ACCESS_DENIED_NO_PASSWORD):
                raise BertfeatError(
                    f"MySQL at {self.where()} refused the login ({msg}); set user and password in"
                    " ~/.my.cnf or --mysql_config_file, or use --mysql_user") from e
            raise BertfeatError(
                f"cannot reach the MySQL server at {self.where()} ({msg}); start it, or fix"
                " --mysql_host/--mysql_port or the [client] section of ~/.my.cnf") from e

    def quote(self, name):
        return "`" + name.replace("`", "``") + "`"

    @staticmethod
    def _sql(sql, params):
        """`?` placeholders -> PyMySQL's `%s` (a literal `%` doubles when values are substituted)."""
        if not params:
            return sql, None
        return sql.replace("%", "%%").replace("?", "%s"), tuple(params)

    def execute(self, sql, params=()):
        with self.con.cursor() as cur:
            cur.execute(*self._sql(sql, params))

    def executemany(self, sql, rows):
        # PyMySQL joins escaped values into multi-row INSERTs (up to ~1 MB per statement).
        if rows:
            with self.con.cursor() as cur:
                cur.executemany(self._sql(sql, [0])[0], [tuple(r) for r in rows])

    def query(self, sql, params=()):
        with self.con.cursor() as cur:
            cur.execute(*self._sql(sql, params))
            return list(cur.fetchall())

    def stream(self, sql, params=(), batch_size=1000):
        con = self._connect(self.db, cursorclass=pymysql.cursors.SSCursor)
        try:
            with con.cursor() as cur:
                cur.execute(*self._sql(sql, params))
                while rows := cur.fetchmany(batch_size):
                    yield rows
        finally:
            con.close()

    def commit(self):
        self.con.commit()

    def close(self):
        try:
            self.con.commit()
        finally:
            self.con.close()

    def tables(self):
        return [r[0] for r in self.query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = ?"
            " ORDER BY table_name", [self.db])]

    def columns(self, table):
        return [(r[0], r[1]) for r in self.query(
            "SELECT column_name, column_type FROM information_schema.columns"
            " WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position", [self.db, table])]

    def rename_table(self, old, new):
        self.execute(f"RENAME TABLE {self.q(old)} TO {self.q(new)}")

    long_text_type = "LONGTEXT"

    @property
    def table_options(self):
        """Every table bertfeat creates compares its text byte for byte, as DuckDB does: ids and
        group ids that differ by case or a trailing space (`abc`/`ABC`, `x`/`x `) stay distinct
        keys and groups. A binary collation without padding: MariaDB's utf8mb4_nopad_bin, MySQL
        8's utf8mb4_0900_bin (utf8mb4_bin pads, so `x` = `x `)."""
        if not hasattr(self, "_collation"):
            found = {r[0] for r in self.query(
                "SELECT collation_name FROM information_schema.collations WHERE collation_name IN"
                " ('utf8mb4_nopad_bin', 'utf8mb4_0900_bin')")}
            self._collation = next((c for c in ("utf8mb4_nopad_bin", "utf8mb4_0900_bin") if c in found),
                                   "utf8mb4_bin")
        return f" CHARACTER SET utf8mb4 COLLATE {self._collation}"

    def vector_type(self, dims):
        return "LONGBLOB"  # MySQL has no array type: float32 little-endian, np.frombuffer(v, "<f4")

    def insert_vector_rows(self, table, columns, values, vectors):
        """INSERT rows of scalar `columns` (`values`: a list per column) and vector columns
        [(name, [n, d] array)], each vector as its float32 little-endian bytes."""
        blobs = [[row.astype("<f4").tobytes() for row in a] for _, a in vectors]
        self.insert_rows(table, list(columns) + [c for c, _ in vectors], list(zip(*values, *blobs)))

    def feature_group_type(self, source_type):
        t = source_type.lower()
        if "int" in t:
            return "BIGINT"
        if "char" in t and "(" in t:
            return source_type
        return "VARCHAR(255)"  # indexable

    def csv_column_type(self, duck_type, longest=None):
        if duck_type in MYSQL_TYPES:
            return MYSQL_TYPES[duck_type]
        return "VARCHAR(255)" if (longest or 0) <= 255 else "LONGTEXT"  # short text stays indexable

    def table_comment(self, table):
        rows = self.query("SELECT table_comment FROM information_schema.tables WHERE table_schema = ?"
                          " AND table_name = ?", [self.db, table])
        return rows[0][0] if rows else None

    def set_table_comment(self, table, text):
        self.execute(f"ALTER TABLE {self.q(table)} COMMENT = ?", [text])

    def content_checksum(self, table, columns):
        parts = ", 0x1f, ".join(f"COALESCE(CAST({self.q(c, 'column name')} AS BINARY), 0x1e)" for c in columns)
        n, total = self.query(f"SELECT COUNT(*), SUM(CRC32(CONCAT({parts}))) FROM {self.q(table)}")[0]
        return f"{n}:{total or 0}"

    def swap_in(self, tmp, table):
        # RENAME TABLE is atomic; another run may create or swap `table` between our look and our
        # rename, so a rename that finds the table (not) there is retried the other way.
        for attempt in range(5):
            try:
                if not self.table_exists(table):
                    self.rename_table(tmp, table)
                    return
                old = self.temp_name(table)
                self.execute(f"RENAME TABLE {self.q(table)} TO {self.q(old)}, {self.q(tmp)} TO {self.q(table)}")
                self.execute(f"DROP TABLE {self.q(old)}")
                return
            except pymysql.err.MySQLError as e:
                if attempt == 4 or not e.args or e.args[0] not in (ER.TABLE_EXISTS_ERROR, ER.NO_SUCH_TABLE):
                    raise

    def copy_schema(self, src, dst, text_column):
        self.execute(f"CREATE TABLE {self.q(dst)} LIKE {self.q(src)}")
        self.execute(f"ALTER TABLE {self.q(dst)} MODIFY {self.q(text_column)} LONGTEXT{self.table_options}")

    write_path = None  # how the last feature table was written: "load data" or "executemany"

    def insert_staged(self, table, stage, fill):
        """The stage's rows into `table`: by LOAD DATA LOCAL INFILE from a CSV the stage writes
        (1.6-1.7x executemany's rate, bench/LOG.md "MySQL writes") where the server allows it
        (`local_infile`), else by the driver's multi-row INSERTs. The same table either way
        (tests/test_ids_compare_bytewise.py, test_mysql_write_paths). `write_path` says which."""
        if self._local_infile_allowed():
            import tempfile
            with tempfile.TemporaryDirectory(prefix="bertfeat-load-") as folder:
                path = os.path.join(folder, "rows.csv")
                with _streamed_csv(stage, fill, path) as complete:
                    con = self._connect(self.db, local_infile=True)
                    try:
                        with con.cursor() as cur:
                            # the rows come only once DuckDB has reduced and sorted them (minutes for
                            # 10^7+ rows): the server must wait longer than its 30 s default for them
                            cur.execute(f"SET SESSION net_read_timeout = {LOAD_WAIT_S}")
                            cur.execute(f"LOAD DATA LOCAL INFILE %s INTO TABLE {self.q(table)} CHARACTER SET utf8mb4"
                                        " FIELDS TERMINATED BY ',' OPTIONALLY ENCLOSED BY '\"' ESCAPED BY ''"
                                        " LINES TERMINATED BY '\n' (id, group_id, feat, value, group_norm)", [path])
                            warnings = cur.execute("SHOW WARNINGS") and cur.fetchall()
                        complete()  # every row was written (else: its error, nothing committed)
                        if warnings:  # a value the server changed (truncated, converted): never a silent table
                            raise BertfeatError(f"MySQL changed values while loading {table}: {warnings[0][2]}")
                        con.commit()
                    finally:
                        con.close()
            self.write_path = "load data"
            return
        self.write_path = "executemany"
        super().insert_staged(table, stage, fill)

    def _local_infile_allowed(self):
        """The server accepts LOAD DATA LOCAL (checked once per connection; BERTFEAT_MYSQL_LOAD_DATA=0
        turns the fast path off)."""
        if not hasattr(self, "_local_infile"):
            off = os.environ.get("BERTFEAT_MYSQL_LOAD_DATA") == "0"
            self._local_infile = not off and bool(self.query("SELECT @@GLOBAL.local_infile")[0][0])
        return self._local_infile

    def create_feature_table(self, table, group_type):
        self.execute(
            f"CREATE TABLE {self.q(table)} (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,"
            f" group_id {group_type}, feat VARCHAR(36), value DOUBLE, group_norm DOUBLE,"
            f" KEY correl_field (group_id), KEY feature (feat)){self.table_options}")
