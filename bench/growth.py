"""How cost grows with the corpus: every phase of a run from 10^3 to 10^6 posts (issue 24).

    .venv/bin/python bench/growth.py [--sizes 1000 10000 100000] [--engine duckdb|mysql]

Corpora: msgs100u's real posts cut to tweet size (at most 140 characters), repeated with a
unique suffix per copy so that deduplication cannot hide work, 10 posts per group (10^3 posts:
10^2 groups ... 10^6 posts: 10^5 groups). Each phase runs in a process of its own (its own peak
RSS), in this order: --import_csv, --add_sent_tokenized, --add_bert, the same --add_bert again
(every vector reused), a re-aggregation (a new --bert_msg_aggregation), and --add_bert with
--bert_keep_msg.

**The encoder is a stand-in in this bench only**: a deterministic vector per message (from its
text hash, all-MiniLM-L6-v2's 384 dimensions) instead of ONNX Runtime's inference, so the work
around the encoder (reading, splitting, staging, deduplication, group reduction, writing) is
what is measured at sizes where real inference would take a day on 2 cores. The real cost of
inference per token is bench/runtime.py's (2,000-20,000 tokens/s here); add it per token.

Per phase and size: seconds, peak RSS, disk (database, stage), rows written; then the growth
exponent per phase between consecutive sizes (log time ratio / log size ratio; 1 = linear).
"""
import argparse
import csv
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CSV = ROOT / "tests" / "data" / "msgs100u.csv"
MODEL = "sentence-transformers/all-MiniLM-L6-v2"
PHASES = ["import", "sentences", "add_bert", "rerun", "reagg", "keep_msg"]


def make_corpus(path, n_posts, posts_per_group=10):
    with open(CSV, encoding="utf-8", newline="") as f:
        posts = [r["message"][:140] for r in csv.DictReader(f)]
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["message_id", "user_id", "message"])
        for i in range(n_posts):
            w.writerow([i + 1, i // posts_per_group, f"{posts[i % len(posts)]} #{i // len(posts)}"])


def stand_in_encoder():
    """MessageEmbedder.__call__ -> a deterministic unit vector per message (its text's hash seeds
    it); the export and tokenizer load as in a real run, no inference runs."""
    import hashlib

    import numpy as np

    from bertfeat.embedder import MessageEmbedder

    def call(self, messages):
        out = []
        for sentences in messages:
            seed = int.from_bytes(hashlib.sha1("\x1f".join(sentences).encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).standard_normal(384).astype(np.float32)
            out.append(v / np.linalg.norm(v))
        return out
    MessageEmbedder.__call__ = call


def phase(args):
    import bertfeat
    conn = json.loads(args.conn)
    kw = dict(bert_model=MODEL, bert_layers=[0], model_dir=args.model_dir, stage_dir=args.work, progress=False)
    t = time.perf_counter()
    if args.part == "import":
        s = bertfeat.import_csv("g", "msgs", os.path.join(args.work, "corpus.csv"), overwrite=True,
                                progress=False, **conn)
        rows = s["rows"]
    elif args.part == "sentences":
        rows = bertfeat.add_sent_tokenized("g", "msgs", overwrite=True, progress=False, **conn)["written"]
    else:
        stand_in_encoder()
        extra = {"reagg": {"bert_msg_aggregation": ["max"]}, "keep_msg": {"bert_keep_msg": True}}.get(args.part, {})
        s = bertfeat.add_bert("g", "msgs", "user_id", **kw, **extra, **conn)
        rows = s["rows"]
    return {"seconds": time.perf_counter() - t, "rows": rows}


def disk(work, engine="duckdb"):
    def size(p):
        return os.path.getsize(p) if os.path.exists(p) else 0
    if engine == "mysql":  # the server's data and index size of database g (InnoDB's estimate)
        import pymysql
        con = pymysql.connect(host="127.0.0.1", user="root")
        with con.cursor() as cur:
            cur.execute("SELECT COALESCE(SUM(data_length + index_length), 0) FROM information_schema.tables"
                        " WHERE table_schema = 'g'")
            db = float(cur.fetchone()[0])
        con.close()
    else:
        db = size(os.path.join(work, "g.duckdb"))
    return {"db_mb": db / 1e6,
            "stage_mb": sum(size(os.path.join(work, f)) for f in os.listdir(work) if "stage" in f) / 1e6}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    ap.add_argument("--engine", default="duckdb", choices=["duckdb", "mysql"])
    ap.add_argument("--model_dir", default=str(ROOT / "models"))
    ap.add_argument("--phases", nargs="+", default=PHASES, choices=PHASES, help="which phases, in their order")
    ap.add_argument("--part")
    ap.add_argument("--work")
    ap.add_argument("--conn")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "bench"))
    if args.part:
        from common import report
        return report(phase(args))
    from common import header

    # the export once, before any timing (the stand-in still loads it), in a process of its own:
    # Linux carries a process's peak RSS across exec, so this one stays small for its children
    subprocess.run([sys.executable, "-c", "import sys; from bertfeat.exporter import export;"
                    " export(sys.argv[1], 'fp32', 1, sys.argv[2])", MODEL, args.model_dir], check=True)
    print(header(f"engine {args.engine}", "stand-in encoder (384 dims)") + "\n")
    print("| posts | groups | phase | seconds | peak RSS MB | database MB | stage MB | rows |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|")
    results = {}
    for n in args.sizes:
        work = tempfile.mkdtemp(prefix=f"bertfeat-growth-{n}-")
        make_corpus(os.path.join(work, "corpus.csv"), n)
        if args.engine == "duckdb":
            conn = {"db_engine": "duckdb", "db_dir": work}
        else:
            import pymysql
            con = pymysql.connect(host="127.0.0.1", user="root", autocommit=True)
            con.cursor().execute("DROP DATABASE IF EXISTS g")  # each size from an empty database
            con.close()
            conn = {"db_engine": "mysql", "mysql_host": "127.0.0.1", "mysql_user": "root",
                    "mysql_config_file": str(ROOT / "tests" / "data" / "client_only.my.cnf")}
        for part in [p for p in PHASES if p in args.phases]:
            cmd = [sys.executable, __file__, "--part", part, "--work", work, "--conn", json.dumps(conn),
                   "--model_dir", args.model_dir]
            out = subprocess.run(cmd, capture_output=True, text=True)
            line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
            if not line:
                sys.exit(f"{part} at {n} posts failed:\n{out.stderr[-3000:]}")
            r = {**json.loads(line[0][7:]), **disk(work, args.engine)}
            results[n, part] = r
            print(f"| {n:,} | {n // 10:,} | {part} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} | {r['db_mb']:.0f} |"
                  f" {r['stage_mb']:.0f} | {r['rows']:,} |", flush=True)
    if len(args.sizes) > 1:
        print("\ngrowth exponent of time (and of peak RSS) between consecutive sizes:\n")
        pairs = list(zip(args.sizes, args.sizes[1:]))
        print("| phase | " + " | ".join(f"{a:,} -> {b:,}" for a, b in pairs) + " |")
        print("|---|" + "---|" * len(pairs))
        for part in [p for p in PHASES if p in args.phases]:
            cells = []
            for a, b in pairs:
                x = math.log(b / a)
                t = math.log(results[b, part]["seconds"] / results[a, part]["seconds"]) / x
                m = math.log(results[b, part]["peak_rss_mb"] / results[a, part]["peak_rss_mb"]) / x
                cells.append(f"{t:.2f} ({m:.2f})")
            print(f"| {part} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
