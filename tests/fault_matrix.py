"""Fault matrix (issue 9): break a run on purpose, rerun it, count what was lost or duplicated.

    sudo .venv/bin/python tests/fault_matrix.py [--copies 3] [--only CASE ...]

Real processes, real engines: kill -9 of bertfeat at chosen points, kill -9 of the MariaDB
server (on 127.0.0.1:3306, restarted the way .ci/run starts it), a full disk (a small tmpfs,
so this needs root), two writers, and a reader during a write. After each fault the same
command is run again (as a user would) and its tables are compared with a clean run's:
rows lost, rows duplicated, values that differ. Each run is the bertfeat CLI in its own process (the
table shows what it printed); a tiny random BERT (tests/tiny_models.py) keeps the matrix to a
few minutes: the protocol under test does not depend on the model.
Prints one table.
"""
import argparse
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
MYSQL = {"db_engine": "mysql", "mysql_host": "127.0.0.1", "mysql_port": 3306, "mysql_user": "root",
         "mysql_config_file": str(ROOT / "tests" / "data" / "client_only.my.cnf")}

# The child runs one bertfeat action; HOOK names a point where it prints "HOOK" and sleeps, so
# the parent can act (kill it, kill the server, fill the disk) at exactly that point.
CHILD = r"""
import json, sys, time, bertfeat
from bertfeat import stage as stage_module
from bertfeat.tables import Engine, duck, mysql
spec = json.loads(sys.argv[1])
hook = spec.get("hook") or ""
def pause(name):
    print("HOOK", name, flush=True)
    time.sleep(spec.get("sleep", 30))
if hook.startswith("chunk:"):
    put, n = stage_module.Stage.put, [0]
    def put_(self, rows, *more):
        put(self, rows, *more); n[0] += 1
        if n[0] == int(hook[6:]): pause(hook)
    stage_module.Stage.put = put_
if hook == "staging":  # inside the chunk's transaction: rows deleted, new ones not yet committed
    ins = stage_module.insert_columns
    def ins_(con, table, cols, rows):
        ins(con, table, cols, rows)
        if table.startswith("vec_"): pause(hook)
    stage_module.insert_columns = ins_
if hook == "write":  # the feature table half written under its temporary name
    for cls in (duck.DuckEngine, mysql.MySQLEngine):
        def make(orig):
            def staged(self, table, stage, fill):
                orig(self, table, stage, fill); pause(hook)
            return staged
        cls.insert_staged = make(cls.insert_staged)
if hook.startswith("split:"):
    for cls in (duck.DuckEngine, mysql.MySQLEngine):
        def make(orig):
            n = [0]
            def rows(self, table, columns, rows_):
                orig(self, table, columns, rows_)
                if table.endswith("__partial"):
                    self.commit(); n[0] += 1
                    if n[0] == int(hook[6:]): pause(hook)
            return rows
        cls.insert_rows = make(cls.insert_rows)
from bertfeat.cli import main
c = spec["conn"]
flags = ["-d", spec["db"], "-t", "msgs", "--no_progress"]
if c["db_engine"] == "duckdb":
    flags += ["--db_dir", c["db_dir"]]
else:
    flags += ["--db_engine", "mysql", "--mysql_host", c["mysql_host"], "--mysql_port", str(c["mysql_port"]),
              "--mysql_user", c["mysql_user"], "--mysql_config_file", c["mysql_config_file"]]
if spec["action"] == "split":
    flags += ["--add_sent_tokenized"]
else:
    flags += ["-c", "user_id", "--add_bert", "--bert_model", spec["model"], "--model_dir", spec["cache"],
              "--bert_keep_msg", "--stage_dir", spec["stage"]]
rc = main(flags)
if rc:
    sys.exit(rc)
print("DONE", flush=True)
"""


def child(spec):
    """The bertfeat CLI in a process of its own."""
    os.makedirs(spec["stage"], exist_ok=True)
    return subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(spec)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=spec["stage"],
                            env={**os.environ, "PYTHONPATH": str(ROOT)})


def wait_hook(p, timeout=300):
    t = time.monotonic()
    for line in p.stdout:
        if line.startswith("HOOK"):
            return True
        if time.monotonic() - t > timeout:
            break
    return False


def outcome(p):
    out, err = p.communicate(timeout=600)
    if p.returncode == 0:
        return "finished"
    if p.returncode in (-9, 137):
        return "killed"
    last = (err.strip().splitlines() or ["?"])[-1].replace("bertfeat: error: ", "")
    return f"exit {p.returncode}: {last[:110]}"


def mysql_up():
    s = socket.socket()
    s.settimeout(1)
    return s.connect_ex(("127.0.0.1", 3306)) == 0


def kill_mysql_server():
    pid = subprocess.run(["pidof", "mariadbd"], capture_output=True, text=True).stdout.split()
    for p in pid:
        os.kill(int(p), signal.SIGKILL)
    for _ in range(50):
        if not mysql_up():
            return
        time.sleep(0.1)


def start_mysql_server():
    subprocess.run(["start-stop-daemon", "--start", "--oknodo", "--background", "--exec", "/usr/sbin/mariadbd",
                    "--", "--user=mysql", "--bind-address=127.0.0.1", "--port=3306"], check=True)
    for _ in range(120):
        if mysql_up():
            try:
                import pymysql
                pymysql.connect(host="127.0.0.1", user="root").close()
                return
            except Exception:  # noqa: BLE001 - still recovering
                pass
        time.sleep(0.5)
    raise RuntimeError("MariaDB did not come back")


def tables(db, conn):
    """{table: [(group, feat, value)]} for the feature tables and the _stoks table."""
    from bertfeat.tables import connect
    out = {}
    with connect(db, **conn) as engine:
        for t in engine.tables():
            if t.startswith("feat$"):
                out[t] = engine.query(f"SELECT group_id, feat, value FROM {engine.q(t)}")
            elif t == "msgs_stoks":
                out[t] = [(m, "", s) for m, s in engine.query(f"SELECT message_id, message FROM {engine.q(t)}")]
        out["_leftover_tmp"] = [(t, "", 0) for t in engine.tables() if t.startswith("bertfeat_tmp")]
    return out


def compare(ref, got):
    """(rows lost, rows duplicated, values that differ, leftover temporary tables) of `got` vs `ref`."""
    lost = dup = wrong = 0
    for t, rows in ref.items():
        if t == "_leftover_tmp":
            continue
        have = {}
        for g, f, v in got.get(t, []):
            have.setdefault((str(g), f), []).append(v)
        dup += sum(len(v) - 1 for v in have.values() if len(v) > 1)
        for g, f, v in rows:
            if (str(g), f) not in have:
                lost += 1
            else:
                x = have[(str(g), f)][0]
                wrong += (abs(x - v) > 1e-6) if isinstance(v, float) else (x != v)
    return lost, dup, wrong, len(got.get("_leftover_tmp", []))


def drop_mysql(db):
    import pymysql
    con = pymysql.connect(host="127.0.0.1", user="root")
    con.cursor().execute(f"DROP DATABASE IF EXISTS `{db}`")
    con.close()


class Case:
    def __init__(self, work, engine, model, cache, csv_path):
        self.work, self.engine, self.model, self.cache, self.csv = work, engine, model, cache, csv_path
        self.n = 0

    def fresh(self, name, db_dir=None, split=True):
        import bertfeat
        self.n += 1
        folder = Path(db_dir or self.work / f"c{self.n}")
        folder.mkdir(parents=True, exist_ok=True)
        if self.engine == "duckdb":
            db, conn = "f", {"db_engine": "duckdb", "db_dir": str(folder)}
        else:
            db, conn = f"bertfeat_faults_{os.getpid()}_{self.n}", dict(MYSQL)
            drop_mysql(db)
        bertfeat.import_csv(db, "msgs", self.csv, progress=False, **conn)
        if split:
            bertfeat.add_sent_tokenized(db, "msgs", progress=False, **conn)
        stage = self.work / f"stage{self.n}"
        return db, conn, str(stage)

    def spec(self, db, conn, stage, action="bert", hook=None, sleep=30):
        return {"action": action, "db": db, "conn": conn, "model": self.model, "cache": self.cache,
                "stage": stage, "hook": hook, "sleep": sleep}

    def rerun(self, db, conn, stage, split=False):
        """The same command(s) again, as a user would after the fault: they must succeed."""
        for action in (["split"] if split else []) + ["bert"]:
            o = outcome(child(self.spec(db, conn, stage, action=action)))
            if o != "finished":
                raise RuntimeError(f"rerun of {action}: {o}")


def run_case(case, name, ref):
    """Run one named fault; returns (what happened, (lost, duplicated, differ, temp tables left))."""
    c = case
    if name == "kill -9 at start":
        db, conn, stage = c.fresh(name)
        p = child(c.spec(db, conn, stage))
        time.sleep(1.0)
        p.kill()
        happened = outcome(p)
    elif name in ("kill -9 mid-inference", "kill -9 mid-staging", "kill -9 mid-write"):
        db, conn, stage = c.fresh(name)
        hook = {"kill -9 mid-inference": "chunk:3", "kill -9 mid-staging": "staging",
                "kill -9 mid-write": "write"}[name]
        p = child(c.spec(db, conn, stage, hook=hook))
        reached = wait_hook(p)
        p.kill()
        happened = outcome(p) + ("" if reached else " (hook not reached)")
    elif name.startswith("server kill -9"):
        split = name.endswith("split")
        db, conn, stage = c.fresh(name, split=not split)
        hook = {"split": "split:1", "inference": "chunk:3", "write": "write"}[name.split()[-1]]
        p = child(c.spec(db, conn, stage, action="split" if split else "bert", hook=hook, sleep=3))
        wait_hook(p)
        kill_mysql_server()
        happened = outcome(p)
        start_mysql_server()
        c.rerun(db, conn, stage, split=split)
        return happened, compare(ref, tables(db, conn))
    elif name.startswith("disk full"):
        return disk_full(c, name, ref)
    elif name == "two writers":
        db, conn, stage = c.fresh(name)
        ps = [child(c.spec(db, conn, stage + str(k))) for k in (1, 2)]
        happened = " / ".join(outcome(p) for p in ps)
        got = tables(db, conn)
        return happened, compare(ref, got)
    elif name == "reader during a write":
        db, conn, stage = c.fresh(name)
        c.rerun(db, conn, stage)
        feat = next(t for t in ref if t.startswith("feat$") and "$user_id$" in t)
        errors, polls, stop = [], [0], threading.Event()

        def poll():
            from bertfeat.tables import connect
            while not stop.is_set():
                try:
                    with connect(db, **conn) as engine:
                        n = engine.query(f"SELECT count(*) FROM {engine.q(feat)}")[0][0]
                    if n != len(ref[feat]):
                        errors.append(f"{n} rows")
                except Exception as ex:  # noqa: BLE001
                    errors.append(str(ex)[:60])
                polls[0] += 1
        t = threading.Thread(target=poll)
        t.start()
        p = child(c.spec(db, conn, stage + "b"))  # a second full write while the reader polls
        happened = outcome(p)
        stop.set()
        t.join()
        happened += f"; reader: {polls[0]} reads, {len(errors)} failed" + (f" ({errors[0]})" if errors else "")
        return happened, compare(ref, tables(db, conn))
    else:
        raise ValueError(name)
    c.rerun(db, conn, stage)
    return happened, compare(ref, tables(db, conn))


def disk_full(c, name, ref):
    mnt = Path(tempfile.mkdtemp(prefix="bertfeat-full-"))
    try:
        if name == "disk full during staging":
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mnt)], check=True)
            db, conn, _ = c.fresh(name)
            stage = str(mnt)
        else:  # the database itself on a disk with room for the messages but not the features
            subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], check=True)
            if c.engine != "duckdb":
                return "n/a (the MySQL server's disk is not ours to fill)", None
            db, conn, stage = c.fresh(name, db_dir=mnt / "db")
            used = sum(f.stat().st_size for f in (mnt / "db").iterdir())
            subprocess.run(["mount", "-o", f"remount,size={used + 700_000}", str(mnt)], check=True)
        p = child(c.spec(db, conn, stage))
        happened = outcome(p)
        subprocess.run(["mount", "-o", "remount,size=256m", str(mnt)], check=True)  # space freed
        c.rerun(db, conn, stage)
        return happened, compare(ref, tables(db, conn))
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        shutil.rmtree(mnt, ignore_errors=True)


CASES = {
    "duckdb": ["kill -9 at start", "kill -9 mid-inference", "kill -9 mid-staging", "kill -9 mid-write",
               "disk full during staging", "disk full during write", "two writers", "reader during a write"],
    "mysql": ["kill -9 mid-inference", "kill -9 mid-write", "server kill -9 during split",
              "server kill -9 during inference", "server kill -9 during write", "disk full during staging",
              "two writers", "reader during a write"],
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=2, help="msgs100u copies in the table (741 messages each)")
    ap.add_argument("--only", nargs="*", default=None, help="case names (substring match)")
    args = ap.parse_args()
    import bertfeat
    from tiny_models import make_model
    work = Path(tempfile.mkdtemp(prefix="bertfeat-faults-"))
    model = str(make_model("bert", work / "tiny"))
    cache = str(work / "models")
    csv_path = work / "msgs.csv"
    with open(ROOT / "tests" / "data" / "msgs100u.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(csv_path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["message_id", "user_id", "message"])
        for k in range(args.copies):
            w.writerows([k * 100_000 + int(r["message_id"]), r["user_id"], r["message"] + f" ({k})"] for r in rows)
    print(f"# bertfeat {bertfeat.__version__}; {args.copies * len(rows)} messages; tiny BERT (3 layers);"
          f" default chunks (256 messages); work folder {work}")
    print("\n| engine | case | what happened | rows lost | rows duplicated | values differ | temp tables left |")
    print("|---|---|---|---|---|---|---|")
    for engine in ("duckdb", "mysql"):
        if engine == "mysql" and not mysql_up():
            print("| mysql | all | skipped: no server on 127.0.0.1:3306 | | | | |")
            continue
        case = Case(work, engine, model, cache, str(csv_path))
        db, conn, stage = case.fresh("reference")
        case.rerun(db, conn, stage)
        ref = tables(db, conn)
        for name in CASES[engine]:
            if args.only and not any(o in name for o in args.only):
                continue
            try:
                happened, cmp_ = run_case(case, name, ref)
            except Exception as ex:  # noqa: BLE001 - a case that cannot run is a row, not a crash
                happened, cmp_ = f"case failed: {type(ex).__name__}: {str(ex)[:80]}", None
            cells = [str(x) for x in cmp_] if cmp_ else ["-"] * 4
            print(f"| {engine} | {name} | {happened.replace('|', '/')} | " + " | ".join(cells) + " |", flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
