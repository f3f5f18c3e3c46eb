"""int8 runtime on this CPU: one process with two per-window threads vs two processes (issue 10).

    .venv/bin/python bench/int8_threads.py [--limit 150]

The same msgs100u windows (first `--limit` posts) through (1) fp32, 2 threads, batched; (2) int8,
one process, its 2-thread pool of per-window calls (what bertfeat runs); (3) int8, two processes
of one thread, each half of the windows, at once (what two Ray actors do). Each after a warm-up,
each in a fresh process; times are the inference alone.
"""
import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from add_bert import DEFAULT_CSV, ROOT, windows_by_group  # noqa: E402
from runtime import cpu_isa  # noqa: E402

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def part(args):
    from bertfeat.exporter import locate
    from bertfeat.runtime import Encoder
    groups, _, _ = windows_by_group(args.work, args.csv, args.limit, args.model_dir)
    windows = [w for ws in groups.values() for w in ws]
    precision, threads, share = {"fp32": ("fp32", 2, None), "int8": ("int8", 2, None),
                                 "half0": ("int8", 1, 0), "half1": ("int8", 1, 1)}[args.part]
    enc = Encoder(locate(MODEL, 5, precision, args.model_dir), threads=threads)
    mine = windows if share is None else windows[share::2]
    enc.run(mine[:20], [4])
    t = time.perf_counter()
    enc.run(mine, [4])
    print(f"RESULT {time.perf_counter() - t} {len(windows)} {sum(len(w[0]) for w in windows)}")


def run(args, *parts):
    """Start `parts` at once; (wall seconds of the slowest, windows, real tokens)."""
    procs = [subprocess.Popen([sys.executable, __file__, "--part", p, "--work", args.work, "--limit",
                               str(args.limit), "--model_dir", args.model_dir, "--csv", args.csv],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for p in parts]
    outs = [p.communicate()[0] for p in procs]
    vals = [next(line.split()[1:] for line in o.splitlines() if line.startswith("RESULT")) for o in outs]
    return max(float(v[0]) for v in vals), int(vals[0][1]), int(vals[0][2])


def main():
    import tempfile
    p = argparse.ArgumentParser()
    p.add_argument("--csv", default=str(DEFAULT_CSV))
    p.add_argument("--limit", type=int, default=150)
    p.add_argument("--model_dir", default=str(ROOT / "models"))
    p.add_argument("--part")
    p.add_argument("--work")
    args = p.parse_args()
    if args.part:
        return part(args)
    args.work = tempfile.mkdtemp(prefix="bertfeat-int8t-")
    run(args, "fp32")  # builds the windows' table (and exports) outside the timings
    rows = [("fp32, 2 threads, batched", run(args, "fp32")),
            ("int8, 1 process x 2 per-window threads (shipped)", run(args, "int8")),
            ("int8, 2 processes x 1 thread, half the windows each", run(args, "half0", "half1"))]
    print(f"# {cpu_isa()}; {os.cpu_count()} CPUs; {rows[0][1][1]} windows, {rows[0][1][2]} real tokens\n")
    print("| run | seconds | real tok/s | vs fp32 |")
    print("|---|---:|---:|---:|")
    for name, (secs, _, real) in rows:
        print(f"| {name} | {secs:.2f} | {real / secs:.0f} | {rows[0][1][0] / secs:.2f}x |")


if __name__ == "__main__":
    main()
