"""Benchmark: bulk-insert rate into MySQL/MariaDB by driver and method (issue 9's choice).

    .venv/bin/python bench/mysql_write.py [--feature_rows 300000] [--text_copies 20]

Needs a server on 127.0.0.1:3306 (root, no password); the mysql-connector-python rows need
`pip install mysql-connector-python` (bertfeat itself uses PyMySQL since 0.3). Two loads, each
method in the same run on the same server:
  feature  DLATK feature rows (id BIGINT, group_id BIGINT, feat VARCHAR, value DOUBLE,
           group_norm DOUBLE), as --add_bert writes them
  text     real blog posts (msgs100u repeated with new ids), as --import_csv writes them
Methods (`safe` = values never pass through a client-side SQL parser):
  connector executemany     mysql-connector-python's multi-row executemany (0.2; NOT safe: 9.2+
                            scans the composed statement for DELIMITER/comments, issue 9)
  connector prepared        server-side prepared multi-row INSERT, values bound (binary protocol)
  connector cmd_query       statements built from the driver's own escaping, sent with cmd_query
  pymysql executemany       PyMySQL: values escaped by the driver, joined into multi-row INSERTs
  pymysql load data         PyMySQL LOAD DATA LOCAL INFILE from a temporary TSV
Prints one table: rows/s and the time a 10^7-row feature table would take at that rate; then
bertfeat's own write (stage -> feature table, both paths it chooses between: LOAD DATA LOCAL
INFILE from the CSV DuckDB streams through a named pipe, or PyMySQL's executemany), the table
indexed as a run leaves it (`--stage_only --stage_groups 100000 --stage_paths "load data"`: the
issue's 10^5-group x 768 table alone).
"""
import argparse
import csv
import functools
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header  # noqa: E402

HOST, PORT, USER = "127.0.0.1", 3306, "root"
DB = "bertfeat_bench_write"
ROOT = Path(__file__).resolve().parents[1]
CSV = ROOT / "tests" / "data" / "msgs100u.csv"


def feature_rows(n):
    return [(i + 1, 1000 + i // 768, f"{i % 768}me", (i * 0.6180339887) % 1 - 0.5,
             (i * 0.6180339887) % 1 - 0.5) for i in range(n)]


def text_rows(copies):
    with open(CSV, newline="", encoding="utf-8") as f:
        base = [(int(r["message_id"]), int(r["user_id"]), r["created_date"], r["message"])
                for r in csv.DictReader(f)]
    return [(k * 10_000_000 + mid, uid, date, msg) for k in range(copies) for mid, uid, date, msg in base]


SCHEMAS = {
    "feature": ("(id BIGINT PRIMARY KEY, group_id BIGINT, feat VARCHAR(36), value DOUBLE, group_norm DOUBLE)",
                ["id", "group_id", "feat", "value", "group_norm"]),
    "text": ("(message_id BIGINT PRIMARY KEY, user_id BIGINT, created_date VARCHAR(32), message LONGTEXT)"
             " CHARACTER SET utf8mb4", ["message_id", "user_id", "created_date", "message"]),
}


def connector(**kw):
    import mysql.connector
    return mysql.connector.connect(host=HOST, port=PORT, user=USER, database=DB, charset="utf8mb4",
                                   autocommit=False, **kw)


def pymysql_con(**kw):
    import pymysql
    return pymysql.connect(host=HOST, port=PORT, user=USER, database=DB, charset="utf8mb4",
                           autocommit=False, **kw)


def batches(rows, n):
    for i in range(0, len(rows), n):
        yield rows[i:i + n]


def executemany(con, table, cols, rows):
    """The driver's own multi-row executemany, 2,000 rows per call, a commit after each."""
    cur = con.cursor()
    sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})"
    for b in batches(rows, 2000):
        cur.executemany(sql, b)
        con.commit()
    con.close()


def m_connector_executemany(table, cols, rows):
    executemany(connector(), table, cols, rows)


def m_connector_prepared(table, cols, rows, per=1000):
    con = connector()
    cur = con.cursor(prepared=True)
    one = "(" + ", ".join(["?"] * len(cols)) + ")"
    for b in batches(rows, per):
        cur.execute(f"INSERT INTO {table} ({', '.join(cols)}) VALUES " + ", ".join([one] * len(b)),
                    [v for r in b for v in r])
        con.commit()
    con.close()


def m_connector_cmd_query(table, cols, rows):
    con = connector()
    escape = con.cursor()._process_params  # the escaping its executemany uses (private API)
    head = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ".encode()
    for b in batches(rows, 2000):
        vals = [b"(" + b", ".join(bytes(v) for v in escape(r)) + b")" for r in b]
        con.cmd_query(head + b", ".join(vals))
        con.commit()
    con.close()


def m_pymysql_executemany(table, cols, rows):
    executemany(pymysql_con(), table, cols, rows)


def m_pymysql_load_data(table, cols, rows):
    con = pymysql_con(local_infile=True)
    cur = con.cursor()

    def field(v):
        if v is None:
            return "\\N"
        s = repr(v) if isinstance(v, float) else str(v)
        return (s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
                .replace("\r", "\\r").replace("\0", "\\0"))
    for b in batches(rows, 50_000):
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", suffix=".tsv", delete=False) as f:
            for r in b:
                f.write("\t".join(field(v) for v in r) + "\n")
        cur.execute(f"LOAD DATA LOCAL INFILE %s INTO TABLE {table} CHARACTER SET utf8mb4"
                    f" FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n'"
                    f" ({', '.join(cols)})", [f.name])
        con.commit()
        os.unlink(f.name)
    con.close()


METHODS = [("connector executemany", "no", m_connector_executemany),
           ("connector prepared", "yes", m_connector_prepared),
           ("connector cmd_query", "yes", m_connector_cmd_query),
           ("pymysql executemany", "yes", m_pymysql_executemany),
           ("pymysql load data", "yes", m_pymysql_load_data)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--feature_rows", type=int, default=300_000)
    ap.add_argument("--text_copies", type=int, default=20)
    ap.add_argument("--stage_groups", type=int, default=2000,
                    help="also time bertfeat's own feature-table write from a stage of this many groups (0: not)")
    ap.add_argument("--stage_paths", nargs="+", default=["executemany", "load data"],
                    help="which of bertfeat's write paths to time (e.g. 'load data' alone at 100000 groups)")
    ap.add_argument("--stage_only", action="store_true", help="skip the driver comparison")
    args = ap.parse_args()
    import pymysql
    try:
        import mysql.connector
        cv = mysql.connector.__version__
    except ImportError:
        cv = None
    admin = pymysql.connect(host=HOST, port=PORT, user=USER, autocommit=True)
    acur = admin.cursor()
    acur.execute("SELECT @@version")
    server = acur.fetchone()[0]
    acur.execute(f"DROP DATABASE IF EXISTS {DB}")
    acur.execute(f"CREATE DATABASE {DB} CHARACTER SET utf8mb4")
    print(header(f"server {server} on {HOST}:{PORT}") + f"; mysql-connector-python {cv}, PyMySQL {pymysql.__version__};"
          f" Python {sys.version.split()[0]}")
    loads = {} if args.stage_only else {"feature": feature_rows(args.feature_rows), "text": text_rows(args.text_copies)}
    print("\n| load | method | safe | rows | seconds | rows/s | MB/s | 10^7 feature rows |")
    print("|---|---|---|---|---|---|---|---|")
    for load, rows in ({} if args.stage_only else loads).items():
        mb = sum(len(str(v)) for r in rows for v in r) / 1e6
        schema, cols = SCHEMAS[load]
        for name, safe, fn in METHODS:
            if "connector" in name and cv is None:
                continue
            table = f"t_{load}"
            acur.execute(f"DROP TABLE IF EXISTS {DB}.{table}")
            acur.execute(f"CREATE TABLE {DB}.{table} {schema}")
            t = time.perf_counter()
            try:
                fn(table, cols, rows)
            except Exception as e:  # a method that fails is a row, not a crash
                print(f"| {load} | {name} | {safe} | {len(rows):,} | failed: {str(e)[:60]} | | | |")
                continue
            s = time.perf_counter() - t
            acur.execute(f"SELECT count(*) FROM {DB}.{table}")
            n = acur.fetchone()[0]
            assert n == len(rows), (name, n, len(rows))
            ten7 = f"{1e7 / (len(rows) / s) / 60:.1f} min" if load == "feature" else ""
            print(f"| {load} | {name} | {safe} | {len(rows):,} | {s:.2f} | {len(rows) / s:,.0f} |"
                  f" {mb / s:.1f} | {ten7} |", flush=True)
    if args.stage_groups:
        stage_writes(args.stage_groups, paths=args.stage_paths)
    acur.execute(f"DROP DATABASE IF EXISTS {DB}")
    admin.close()


def stage_writes(n_groups, dims=768, paths=("executemany", "load data")):
    """bertfeat's own feature-table write (engine.insert_staged via bert._write_feature_table),
    stage -> MySQL, by both paths: `n_groups` groups of one message, `dims`-dim vectors."""
    import numpy as np

    from bertfeat.jobs.add_bert import _write_feature_table
    from bertfeat.stage import Stage
    from bertfeat.tables import connect
    work = tempfile.mkdtemp(prefix="bertfeat-stage-write-")
    stage = Stage(os.path.join(work, "s.duckdb"), {"bench": 1}, "BIGINT", "BIGINT")
    rng = np.random.default_rng(0)
    for k in range(0, n_groups, 10_000):
        ids = range(k, min(k + 10_000, n_groups))
        stage.put([(i, f"h{i}", rng.standard_normal(dims).astype(np.float32)) for i in ids], [(i, i) for i in ids])
    conn = {"db_engine": "mysql", "mysql_host": HOST, "mysql_port": PORT, "mysql_user": USER,
            "mysql_config_file": str(ROOT / "tests" / "data" / "client_only.my.cnf")}
    rows = n_groups * dims
    print(f"\nbertfeat's write, stage -> feature table ({n_groups:,} groups x {dims} dims = {rows:,} rows,"
          " mean per group, table indexed after):\n")
    print("| path | seconds | rows/s | 10^5 groups x 768 |\n|---|---|---|---|")
    for path in paths:
        os.environ["BERTFEAT_MYSQL_LOAD_DATA"] = "1" if path == "load data" else "0"
        with connect(DB, **conn) as engine:
            t = time.perf_counter()
            n = _write_feature_table(engine, stage, f"feat$bench_{path[0]}",
                                     functools.partial(stage.fill_group_features, aggregations=["mean"]), "BIGINT")
            s = time.perf_counter() - t
            assert n == rows and engine.write_path == path, (n, engine.write_path)
        print(f"| {path} | {s:.1f} | {rows / s:,.0f} | {7.68e7 / (rows / s) / 60:.1f} min |", flush=True)


if __name__ == "__main__":
    main()
