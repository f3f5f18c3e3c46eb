"""Benchmark: --add_bert --precision int8 locally vs on a local Ray (issue 13), same run.

    .venv/bin/python bench/scaleout.py [--copies 10] [--csv tests/data/msgs100u.csv]

The table is msgs100u repeated `--copies` times with new ids and a per-copy suffix on every message
(as bench/add_bert.py --x10 builds it), so deduplication cannot hide the work. Each part runs in a
process of its own (its CPU time and peak RSS are the driver's own), on the same machine, one after
another:
  local      add_bert, 2 threads, in this process (no Ray)
  ray 1x2    --ray: a local Ray started first (timed apart), 1 actor x 2 threads
  ray 2x1    --ray: 2 actors x 1 thread
  ray 2x1 1x the same on the 1x table: the driver's peak RSS must not grow with the table
  driver     the local run with inference replaced by zero vectors: the driver's own ceiling
Driver CPU is the driver process's user+system time during add_bert (Ray's own processes and the
actors are not in it). Then a projection to 1e8 posts from the measured numbers.
"""
import argparse
import csv
import json
import os
import resource
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from common import header  # noqa: E402  (the bench header every script prints)

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DEFAULT_CSV = ROOT / "tests" / "data" / "msgs100u.csv"  # copied from shared/data


def make_table(src, work, copies, db):
    import bertfeat
    path = os.path.join(work, f"x{copies}.csv")
    with open(src, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    with open(path, "w", encoding="utf-8", newline="") as g:
        w = csv.writer(g)
        w.writerow(rows[0])
        for c in range(copies):
            w.writerows([int(r[0]) + c * 10_000_000, r[1], r[2], f"{r[3]} (copy {c})"] for r in rows[1:])
    conn = {"db_engine": "duckdb", "db_dir": work}
    bertfeat.import_csv(db, "msgs", path, overwrite=True, progress=False, **conn)
    bertfeat.add_sent_tokenized(db, "msgs", overwrite=True, progress=False, **conn)


def part(args):
    import bertfeat
    conn = {"db_engine": "duckdb", "db_dir": args.work}
    kw = dict(bert_model=MODEL, model_dir=args.model_dir, precision="int8", progress=False,
              stage_dir=os.path.join(args.work, f"stage-{args.part}"), **conn)
    ray_start = 0.0
    if args.workers:
        import ray
        t = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        ray_start = time.perf_counter() - t
        kw.update(ray="local", workers=args.workers, threads=args.threads)
    elif args.part == "driver":
        import bertfeat.jobs.add_bert
        bertfeat.jobs.add_bert._executor_factory = lambda *a, **k: (lambda: NoInference(384))
    else:
        kw.update(threads=args.threads)
    cpu0, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    s = bertfeat.add_bert(args.db, "msgs", "user_id", **kw)
    seconds, cpu1 = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF)
    driver_cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    print("RESULT " + json.dumps({"seconds": seconds, "ray_start": ray_start, "driver_cpu": driver_cpu,
                                  "messages": s["messages"], "embedded": s["embedded"], "tokens": s["tokens"],
                                  "peak_rss_mb": peak_rss_mb()}))


def peak_rss_mb():
    """This process's own peak RSS (VmHWM; ru_maxrss would carry the parent's peak across exec)."""
    with open("/proc/self/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) / 1024


class NoInference:
    """An executor that returns zero vectors at once: what is left is the driver's own work per
    message (read, sentences JSON, hash, dedup, stage, feature table), its ceiling in msgs/s."""
    depth = 1

    def __init__(self, dims):
        import numpy as np
        self.zero, self.results = np.zeros(dims, np.float32), []
        self.encoder = type("E", (), {"windows_run": 0, "tokens_run": 0})()

    @property
    def pending(self):
        return len(self.results)

    def submit(self, tag, messages):
        self.results.append((tag, [self.zero] * len(messages)))

    def done(self, wait=False):
        out, self.results = self.results, []
        return out

    def status(self):
        return ""


def run(args, name, db, workers, threads):
    cmd = [sys.executable, __file__, "--part", name, "--work", args.work, "--db", db, "--model_dir",
           args.model_dir, "--workers", str(workers), "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    if not line:
        sys.exit(f"part {name} failed:\n{out.stderr[-3000:]}")
    return json.loads(line[0][7:])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--csv", default=str(DEFAULT_CSV))
    p.add_argument("--copies", type=int, default=10)
    p.add_argument("--model_dir", default=str(ROOT / "models"))
    p.add_argument("--part")
    p.add_argument("--work")
    p.add_argument("--db", default="x")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    if args.part:
        return part(args)
    import bertfeat
    args.work = tempfile.mkdtemp(prefix="bertfeat-scaleout-")
    print(header(f"ray {__import__('ray').__version__}", "one run"))
    bertfeat.export_model(MODEL, precision="int8", model_dir=args.model_dir, depth=5)  # not timed: both sides share it
    make_table(args.csv, args.work, args.copies, "x")
    make_table(args.csv, args.work, 1, "x1")
    parts = [("local", "x", 0, 2), ("ray 1x2", "x", 1, 2), ("ray 2x1", "x", 2, 1), ("ray 2x1 1x", "x1", 2, 1),
             ("driver", "x", 0, 2)]
    results = {name: run(args, name.replace(" ", "_"), db, w, t) for name, db, w, t in parts}
    local = results["local"]
    print(f"\nmsgs100u x{args.copies} ({local['messages']} messages), {MODEL} int8\n")
    print("| run | add_bert s | msgs/s | vs local | Ray start s | driver CPU s | driver CPU % of a core"
          " | driver µs/msg | peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        vs = f"{local['seconds'] / r['seconds']:.2f}x" if r["messages"] == local["messages"] else "-"
        print(f"| {name} | {r['seconds']:.1f} | {r['messages'] / r['seconds']:.1f} | {vs} |"
              f" {r['ray_start']:.1f} | {r['driver_cpu']:.1f} | {100 * r['driver_cpu'] / r['seconds']:.0f}% |"
              f" {1e6 * r['driver_cpu'] / r['messages']:.0f} | {r['peak_rss_mb']:.0f} |")
    ray2 = results["ray 2x1"]
    overhead = ray2["seconds"] / local["seconds"] - 1
    per_core = ray2["messages"] / ray2["seconds"] / 2  # msgs/s per actor core
    driver_rate = results["driver"]["messages"] / results["driver"]["seconds"]  # msgs/s one driver can feed
    print(f"\nRay overhead (2x1 vs local, Ray start apart): {100 * overhead:+.1f}%;"
          f" peak RSS {args.copies}x / 1x (ray 2x1): {ray2['peak_rss_mb'] / results['ray 2x1 1x']['peak_rss_mb']:.2f}")
    cores = 160
    print(f"projection, 1e8 posts on 10 x 16-core nodes: {per_core:.1f} msgs/s per core x {cores} cores ="
          f" {per_core * cores:.0f} msgs/s -> {1e8 / (per_core * cores) / 86400:.1f} days; one driver core"
          f" feeds {driver_rate:.0f} msgs/s ({driver_rate / (per_core * cores):.1f}x what the cluster needs)")


if __name__ == "__main__":
    main()
