"""What several test modules share: the data's paths (copied from shared/data, see
data/README.md), the MariaDB connection, CSV writers, the CLI in a process, kill points, and
window checks. Fixtures stay in conftest.py; test modules import no other test module."""
import csv
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np

from bertfeat.tables import connect

DATA = Path(__file__).resolve().parent / "data"  # copied from shared/data (see data/README.md)
MSGS_CSV = DATA / "msgs100u.csv"
USERS_CSV = DATA / "users100.csv"
MYSQL = {"db_engine": "mysql", "mysql_host": os.environ.get("BERTFEAT_TEST_MYSQL_HOST", "127.0.0.1"),
         "mysql_port": int(os.environ.get("BERTFEAT_TEST_MYSQL_PORT", "3306")),
         "mysql_user": os.environ.get("BERTFEAT_TEST_MYSQL_USER", "root"),
         "mysql_config_file": str(Path(__file__).resolve().parent / "data" / "client_only.my.cnf")}
# (an option file with an empty [client] section: the tests never read the user's ~/.my.cnf)


def mysql_reachable():
    import pymysql
    try:
        con = pymysql.connect(host=MYSQL["mysql_host"], port=MYSQL["mysql_port"],
                              user=MYSQL["mysql_user"], connect_timeout=3)
        con.close()
        return None
    except pymysql.err.MySQLError as e:
        return str(e)


def write_rows_csv(path, rows):
    """`rows` (dicts with the same keys) as a CSV file at `path`, header first; returns `path`."""
    rows = list(rows)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def big_csv(path, transform=lambda s: s, copies=4):
    with open(MSGS_CSV, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["message_id", "user_id", "message"])
        for k in range(copies):
            for i, r in enumerate(rows):
                w.writerow([k * 1000 + i + 1, r["user_id"], transform(r["message"])])
    return path


def real_posts(n, seed):
    with open(MSGS_CSV, encoding="utf-8", newline="") as f:
        rows = [r["message"] for r in csv.DictReader(f)]
    return random.Random(seed).sample(rows, n)


TOKENS = ["'", "''", '"', '""', "\\", "\\\\", "\\'", '\\"', "`", "delimiter ", "DELIMITER ",
          "DELIMITER ;;", "delimiter $$ ", "--", "-- ", "#", "/*", "*/", "/*!50000 x*/", ";", "?",
          "%s", "%", "%(x)s", "%%", "{}", "\n", "\r", "\r\n", "\t", "\x00", "\x1a", "😀", "👩‍👩‍👧",
          "中文字", "日本語。", "עברית", "مرحبا", "\u200b", "\u200d", "\u200f", "\ufeff", "Mr.", ". ",
          "! ", "? ", "it's", "word", " ", ",", "NULL", "\\N"]


def feature_rows(db, conn, table):
    with connect(db, **conn) as engine:
        return sorted(engine.query(f"SELECT group_id, feat, value FROM {engine.q(table)}"))


KEYS = ("N R R2 R2_folds mae mae_folds mse mse_folds num_features r r_folds r_p r_p_folds rho rho_p"
        " se_R2_folds se_mae_folds se_mse_folds se_r_folds se_r_p_folds se_train_mean_mae_folds test_size"
        " train_mean_mae train_mean_mae_folds train_size {model_desc} {modelFS_desc}").split()


# A child process's prelude that prints "staged N" after each batch of vectors the stage commits.
NOISY_STAGE = """
import sys, bertfeat
from bertfeat.stage import Stage
put = Stage.put
def noisy(self, rows, *more):
    put(self, rows, *more)
    if rows:
        print("staged", len(rows), flush=True)
Stage.put = noisy
"""


def kill_at(child, prefix, n):
    """SIGKILL `child` (no cleanup of any kind) once it has printed `n` lines starting with
    `prefix`; returns how many it printed."""
    seen = 0
    for line in child.stdout:
        if line.startswith(prefix):
            seen += 1
            if seen == n:
                child.kill()
                break
    child.wait()
    return seen


def run_cli(*args, cwd=None):
    """`python -m bertfeat ARGS` in a process of its own."""
    return subprocess.run([sys.executable, "-m", "bertfeat", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def one_line_error(result, *needles):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bertfeat: error:"), result.stderr
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


def message_windows(entry, messages):
    """SPEC §3 windows of `messages` (each a list of sentences) for the cache entry's tokenizer:
    neighbouring sentences as pairs, a one-sentence message alone, long sentences cut."""
    from bertfeat.models import read_manifest
    from bertfeat.text import windows
    tokenizer = windows.load_tokenizer(Path(entry) / "tokenizer.json")
    limit = windows.piece_limit(read_manifest(entry)["max_positions"])
    pieces = [windows.split_long(windows.word_pieces(tokenizer, sents), limit) for sents in messages]
    return windows.plan(windows.learn_template(tokenizer), pieces).windows


def real_windows(encoder, n=400):
    """SPEC §3 windows of msgs100u's posts, an even sample of n."""
    import csv
    from bertfeat.text.sentences import split_sentences
    with open(MSGS_CSV, encoding="utf-8", newline="") as f:
        out = message_windows(encoder.entry, [split_sentences(r["message"]) for r in csv.DictReader(f)])
    return out[::max(1, len(out) // n)][:n]


def worst_window_cosines(ref, got, n_layers):
    """Per layer, the smallest cosine between a window's token-mean vectors in `ref` and `got`
    (each a list of [layers, tokens, H] arrays, one per window)."""
    worst = []
    for k in range(n_layers):
        a = np.stack([r[k].mean(0) for r in ref])
        b = np.stack([g[k].mean(0) for g in got])
        worst.append(float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min()))
    return worst
