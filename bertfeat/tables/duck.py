"""DuckDB engine: database `NAME` is the file `<db_dir>/NAME.duckdb`."""
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
        self.execute(f"CREATE INDEX {self.q('gi_' + table[:40])} ON {self.q(table)} (group_id)")
        self.execute(f"CREATE INDEX {self.q('fi_' + table[:40])} ON {self.q(table)} (feat)")
