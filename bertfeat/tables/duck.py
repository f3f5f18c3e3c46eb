"""DuckDB engine: database `NAME` is the file `<db_dir>/NAME.duckdb`."""
import hashlib
import os

import duckdb

from ..errors import BertfeatError
from . import Engine


class DuckEngine(Engine):
    kind = "duckdb"

    def __init__(self, db, db_dir, create=False):
        self.db = db
        self.path = os.path.join(db_dir, f"{db}.duckdb")
        if not create and not os.path.exists(self.path):
            raise BertfeatError(
                f"database {db!r} not found: no file {self.path} (import data with --import_csv FILE,"
                " or point --db_dir / BERTFEAT_DB_DIR at the folder that holds it)")
        if create:
            os.makedirs(db_dir, exist_ok=True)
        try:
            self.con = duckdb.connect(self.path)
        except duckdb.Error as e:
            raise BertfeatError(f"cannot open DuckDB file {self.path}: {str(e).splitlines()[0]}") from e

    def quote(self, name):
        return '"' + name.replace('"', '""') + '"'

    def execute(self, sql, params=()):
        self.con.execute(sql, list(params))

    def executemany(self, sql, rows):
        self.con.executemany(sql, [list(r) for r in rows])

    def insert_rows(self, table, columns, rows):
        # One statement with a list per column: DuckDB's executemany is row-at-a-time and slow.
        if rows:
            insert_columns(self.con, self.q(table), [self.q(c, "column name") for c in columns], rows)

    def query(self, sql, params=()):
        return self.con.execute(sql, list(params)).fetchall()

    def stream(self, sql, params=(), batch_size=1000):
        cur = self.con.cursor()
        try:
            cur.execute(sql, list(params))
            while rows := cur.fetchmany(batch_size):
                yield rows
        finally:
            cur.close()

    def insert_from_file(self, table, path, alias, sql, params):
        """INSERT INTO table the rows of `sql`, run here over DuckDB file `path` attached read-only
        as `alias`: the rows never pass through Python."""
        self.execute(f"ATTACH ? AS {self.q(alias)} (READ_ONLY)", [path])
        try:
            self.execute(f"INSERT INTO {self.q(table)} {sql}", params)
        finally:
            self.execute(f"DETACH {self.q(alias)}")

    def commit(self):
        pass  # autocommit: each statement is its own transaction

    def close(self):
        self.con.close()

    def tables(self):
        return [r[0] for r in self.query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'"
            " ORDER BY table_name")]

    def columns(self, table):
        return [(r[0], r[1]) for r in self.query(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = 'main' AND table_name = ? ORDER BY ordinal_position", [table])]

    def rename_table(self, old, new):
        self.execute(f"ALTER TABLE {self.q(old)} RENAME TO {self.q(new)}")

    def copy_schema(self, src, dst, text_column):
        self.execute(f"CREATE TABLE {self.q(dst)} AS SELECT * FROM {self.q(src)} LIMIT 0")
        self.execute(f"ALTER TABLE {self.q(dst)} ALTER {self.q(text_column)} TYPE VARCHAR")

    def create_feature_table(self, table, group_type):
        self.execute(
            f"CREATE TABLE {self.q(table)} (id BIGINT PRIMARY KEY, group_id {group_type},"
            " feat VARCHAR, value DOUBLE, group_norm DOUBLE)")

    def index_feature_table(self, table):
        # DuckDB cannot rename a table that has indexes: they are added after the rename.
        digest = hashlib.sha1(table.encode()).hexdigest()[:12]
        self.execute(f"CREATE INDEX IF NOT EXISTS {self.q('gi_' + digest)} ON {self.q(table)} (group_id)")
        self.execute(f"CREATE INDEX IF NOT EXISTS {self.q('fi_' + digest)} ON {self.q(table)} (feat)")


def insert_columns(con, quoted_table, quoted_columns, rows):
    """INSERT rows into a DuckDB table as one statement of unnested column lists."""
    cols = list(zip(*rows))
    select = ", ".join("unnest(?)" for _ in cols)
    con.execute(f"INSERT INTO {quoted_table} ({', '.join(quoted_columns)}) SELECT {select}",
                [list(c) for c in cols])
