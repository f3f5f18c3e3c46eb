"""MySQL / MariaDB engine through mysql-connector-python; settings from ~/.my.cnf as DLATK does."""
import getpass
import os

import mysql.connector
from mysql.connector import errorcode

from ..errors import BertfeatError
from . import Engine


class MySQLEngine(Engine):
    kind = "mysql"

    def __init__(self, db, config_file=None, host=None, port=None, user=None, create=False):
        self.db = db
        self.settings = {"charset": "utf8mb4", "use_unicode": True, "connection_timeout": 10,
                         "allow_local_infile": False, "autocommit": False}
        config_file = os.path.expanduser(config_file or "~/.my.cnf")
        if os.path.exists(config_file):
            self.settings["option_files"] = config_file
            self.settings["option_groups"] = ["client", "mysql"]
        elif host is None and user is None:
            self.settings["user"] = getpass.getuser()
        for key, value in (("host", host), ("port", port), ("user", user)):
            if value is not None:
                self.settings[key] = int(value) if key == "port" else value
        self.settings.setdefault("host", "127.0.0.1")
        if create:
            con = self._connect(None)
            cur = con.cursor()
            cur.execute(f"CREATE DATABASE IF NOT EXISTS {self.quote(db)} CHARACTER SET utf8mb4")
            con.close()
        self.con = self._connect(db)

    def _connect(self, database):
        where = f"{self.settings.get('host')}:{self.settings.get('port', 3306)}"
        try:
            return mysql.connector.connect(**self.settings, **({"database": database} if database else {}))
        except mysql.connector.Error as e:
            if e.errno == errorcode.ER_BAD_DB_ERROR:
                raise BertfeatError(
                    f"database {database!r} not found on the MySQL server at {where}"
                    " (import data with --import_csv FILE, or check -d)") from e
            if e.errno in (errorcode.ER_ACCESS_DENIED_ERROR, errorcode.ER_DBACCESS_DENIED_ERROR):
                raise BertfeatError(
                    f"MySQL at {where} refused the login ({e.msg}); set user and password in"
                    " ~/.my.cnf or --mysql_config_file, or use --mysql_user") from e
            raise BertfeatError(
                f"cannot reach the MySQL server at {where} ({e.msg}); start it, or fix"
                " --mysql_host/--mysql_port or the [client] section of ~/.my.cnf") from e

    def quote(self, name):
        return "`" + name.replace("`", "``") + "`"

    @staticmethod
    def _sql(sql):
        return sql.replace("?", "%s")

    def execute(self, sql, params=()):
        cur = self.con.cursor()
        cur.execute(self._sql(sql), tuple(params))
        cur.close()

    def executemany(self, sql, rows):
        cur = self.con.cursor()
        cur.executemany(self._sql(sql), [tuple(r) for r in rows])
        cur.close()

    def query(self, sql, params=()):
        cur = self.con.cursor()
        cur.execute(self._sql(sql), tuple(params))
        rows = cur.fetchall()
        cur.close()
        return rows

    def stream(self, sql, params=(), batch_size=1000):
        con = self._connect(self.db)
        try:
            cur = con.cursor(buffered=False)
            cur.execute(self._sql(sql), tuple(params))
            while rows := cur.fetchmany(batch_size):
                yield rows
            cur.close()
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

    def copy_schema(self, src, dst, text_column):
        self.execute(f"CREATE TABLE {self.q(dst)} LIKE {self.q(src)}")
        self.execute(f"ALTER TABLE {self.q(dst)} MODIFY {self.q(text_column)} LONGTEXT"
                     " CHARACTER SET utf8mb4")

    def create_feature_table(self, table, group_type):
        self.execute(
            f"CREATE TABLE {self.q(table)} (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,"
            f" group_id {group_type}, feat VARCHAR(36), value DOUBLE, group_norm DOUBLE,"
            " KEY correl_field (group_id), KEY feature (feat))"
            " CHARACTER SET utf8mb4")
