"""--import_csv: DuckDB's CSV reader (header row, quoted multi-line fields, type sniffing) feeds either engine."""
import os
import tempfile

import duckdb

from ..errors import BertfeatError
from ..progress import Progress, notice
from . import check_name

# DuckDB type -> MySQL type (VARCHAR is decided by the longest value).
MYSQL_TYPES = {"BIGINT": "BIGINT", "INTEGER": "INT", "SMALLINT": "SMALLINT", "TINYINT": "TINYINT",
               "HUGEINT": "DECIMAL(38,0)", "UBIGINT": "BIGINT UNSIGNED", "DOUBLE": "DOUBLE",
               "FLOAT": "DOUBLE", "DATE": "DATE", "TIMESTAMP": "DATETIME(6)", "TIME": "TIME",
               "BOOLEAN": "TINYINT(1)"}


def _utf8_path(path):
    """Return (path, n_replaced): a temporary UTF-8-clean copy when the file holds invalid UTF-8."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        raw.decode("utf-8")
        return path, 0
    except UnicodeDecodeError:
        pass
    text = raw.decode("utf-8", errors="replace")
    fd, tmp = tempfile.mkstemp(suffix=".csv")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    return tmp, text.count("\ufffd") - raw.decode("utf-8", errors="ignore").count("\ufffd")


def import_csv(engine, table, csv_path, overwrite=False, messageid_field="message_id", progress=None):
    """Load `csv_path` into `table`; returns a summary dict (rows, table, replaced bytes)."""
    check_name(table, "table name")
    if not os.path.isfile(csv_path):
        raise BertfeatError(f"CSV file not found: {csv_path}")
    if engine.table_exists(table):
        if not overwrite:
            raise BertfeatError(f"table {table!r} already exists; pass --overwrite to replace it")
        engine.drop_table(table)
    clean_path, n_replaced = _utf8_path(csv_path)
    if n_replaced:
        notice(f"{csv_path}: {n_replaced} invalid UTF-8 sequence(s) replaced with U+FFFD")
    reader = duckdb.connect()
    try:
        src = ("read_csv(?, header = true, auto_detect = true, delim = ',', quote = '\"',"
               " escape = '\"', strict_mode = true, sample_size = -1)")
        try:
            schema = reader.execute(f"DESCRIBE SELECT * FROM {src}", [clean_path]).fetchall()
        except duckdb.Error as e:
            raise BertfeatError(f"cannot parse CSV {csv_path}: {str(e).splitlines()[0]}") from e
        columns = [(name, typ) for name, typ, *_ in schema]
        for name, _ in columns:
            check_name(name, f"column name in {csv_path}")
        n_rows = reader.execute(f"SELECT count(*) FROM {src}", [clean_path]).fetchone()[0]
        has_id = any(name == messageid_field for name, _ in columns)
        if has_id:
            dup = reader.execute(
                f"SELECT count(*) - count(DISTINCT {engine.quote(messageid_field)}) FROM {src}",
                [clean_path]).fetchone()[0]
            if dup:
                notice(f"{messageid_field} has {dup} repeated value(s): not made the primary key")
                has_id = False
        col_defs = []
        for name, typ in columns:
            sql_type = typ
            if engine.kind == "mysql":
                if typ in MYSQL_TYPES:
                    sql_type = MYSQL_TYPES[typ]
                else:  # text: indexable VARCHAR when short, LONGTEXT otherwise
                    longest = reader.execute(
                        f"SELECT max(length(CAST({engine.quote(name)} AS VARCHAR))) FROM {src}",
                        [clean_path]).fetchone()[0] or 0
                    sql_type = "VARCHAR(255)" if longest <= 255 else "LONGTEXT"
            key = " PRIMARY KEY" if has_id and name == messageid_field else ""
            col_defs.append(f"{engine.quote(name)} {sql_type}{key}")
        extra = " CHARACTER SET utf8mb4" if engine.kind == "mysql" else ""
        engine.execute(f"CREATE TABLE {engine.q(table)} ({', '.join(col_defs)}){extra}")
        names = [name for name, _ in columns]
        if engine.kind == "duckdb":  # DuckDB reads the file itself, no round trip through Python
            engine.execute(f"INSERT INTO {engine.q(table)} SELECT * FROM {src}", [clean_path])
        else:
            cur = reader.execute(f"SELECT * FROM {src}", [clean_path])
            with Progress(f"importing {table}", n_rows, enabled=progress) as bar:
                while rows := cur.fetchmany(2000):
                    engine.insert_rows(table, names, rows)
                    bar.update(len(rows))
        engine.commit()
    except BaseException:
        engine.drop_table(table)
        engine.commit()
        raise
    finally:
        reader.close()
        if clean_path != csv_path:
            os.unlink(clean_path)
    return {"table": table, "rows": n_rows, "columns": names, "replaced_utf8": n_replaced}
