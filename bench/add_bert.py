"""Benchmark: --add_sent_tokenized + --add_bert on msgs100u (all-MiniLM-L6-v2, or --model), all in one run.

    .venv/bin/python bench/add_bert.py [--limit N] [--csv tests/data/msgs100u.csv] [--model NAME_OR_DIR]

Each part runs in its own process (so peak RSS is its own) on the same machine, same run:
  baseline   DLATK-style: PyTorch fp32 eager, the full model, windows batched 32 at a time per
             group in table order (what DLATK 1.3.15 does); the same windows bertfeat builds
  inference  bertfeat's runtime alone on the same windows (length-sorted, stops at the default
             layer, the second-to-last)
  e2e        bertfeat end to end: import, sentences, add_bert (fresh stage)
  reagg      the same add_bert with a new --bert_msg_aggregation (staged vectors reused)
  int8       bertfeat end to end with --precision int8
  int8_x10   the same on a 10x table (msgs100u repeated with new ids and a per-copy suffix on
             every message, so deduplication cannot hide the work): peak RSS must stay flat
Prints one table; real tokens = non-padding tokens of the windows.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (DEFAULT_CSV, MODEL, ROOT, default_layer, header, report, run_parts, torch_inputs,  # noqa: E402
                    windows_by_group)


def part_baseline(args):
    import numpy as np
    import torch
    from transformers import AutoModel
    groups, encoder, n_msgs = windows_by_group(args.work, args.csv, args.limit, args.model_dir, args.model)
    torch.set_num_threads(os.cpu_count())
    model = AutoModel.from_pretrained(encoder.manifest["source"]).eval()
    real = padded = 0
    start = time.perf_counter()
    with torch.no_grad():
        for ws in groups.values():
            for b in range(0, len(ws), 32):
                batch = ws[b:b + 32]
                width = max(len(w[0]) for w in batch)
                ids = np.zeros((len(batch), width), np.int64)
                types = np.zeros_like(ids)
                mask = np.zeros_like(ids)
                for r, (i, t) in enumerate(batch):
                    ids[r, :len(i)], types[r, :len(i)], mask[r, :len(i)] = i, t, 1
                model(**torch_inputs(model, ids, types, mask), output_hidden_states=True)
                real += int(mask.sum())
                padded += ids.size
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "messages": n_msgs, "real_tokens": real, "padded_tokens": padded}


def part_inference(args):
    groups, encoder, n_msgs = windows_by_group(args.work, args.csv, args.limit, args.model_dir, args.model)
    windows = [w for ws in groups.values() for w in ws]
    layer = default_layer(args.model)[1]
    start = time.perf_counter()
    for k in range(0, len(windows), 2048):  # bertfeat hands the runtime a chunk at a time
        encoder.run(windows[k:k + 2048], [layer])
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "messages": n_msgs, "real_tokens": sum(len(w[0]) for w in windows)}


def part_e2e(args, stage, aggs=None, precision="fp32", copies=1):
    import csv
    import bertfeat
    src = args.csv
    if copies > 1:
        src = os.path.join(args.work, f"x{copies}.csv")
        with open(args.csv, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
        with open(src, "w", encoding="utf-8", newline="") as g:
            w = csv.writer(g)
            w.writerow(rows[0])
            body = rows[1:args.limit + 1] if args.limit else rows[1:]
            for c in range(copies):
                w.writerows([int(r[0]) + c * 10_000_000, r[1], r[2], f"{r[3]} (copy {c})"] for r in body)
    elif args.limit:
        src = os.path.join(args.work, "limited.csv")
        with open(args.csv, encoding="utf-8", newline="") as f, open(src, "w", encoding="utf-8", newline="") as g:
            r, w = csv.reader(f), csv.writer(g)
            w.writerow(next(r))
            w.writerows(row for _, row in zip(range(args.limit), r))
    conn = {"db_engine": "duckdb", "db_dir": args.work}
    start = time.perf_counter()
    if aggs is None:
        bertfeat.import_csv("e", "msgs", src, overwrite=True, progress=False, **conn)
        bertfeat.add_sent_tokenized("e", "msgs", overwrite=True, progress=False, **conn)
    s = bertfeat.add_bert("e", "msgs", "user_id", bert_model=args.model, model_dir=args.model_dir,
                          stage_dir=stage, bert_msg_aggregation=aggs, precision=precision,
                          progress=False, **conn)
    return {"seconds": time.perf_counter() - start, "messages": s["messages"], "real_tokens": s["tokens"]}


def child(args):
    result = {"baseline": part_baseline, "inference": part_inference,
              "e2e": lambda a: part_e2e(a, os.path.join(a.work, "stage")),
              "reagg": lambda a: part_e2e(a, os.path.join(a.work, "stage"), ["median", "std"]),
              "int8": lambda a: part_e2e(a, os.path.join(a.work, "stage8"), precision="int8"),
              "int8_x10": lambda a: part_e2e(a, os.path.join(a.work, "stage8x"), precision="int8",
                                             copies=10)}[args.part](args)
    report(result)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--csv", default=str(DEFAULT_CSV))
    p.add_argument("--limit", type=int, default=0, help="first N messages only")
    p.add_argument("--model_dir", default=str(ROOT / "models"))
    p.add_argument("--model", default=MODEL, help="HF id or local folder (default all-MiniLM-L6-v2)")
    p.add_argument("--part")
    p.add_argument("--work")
    p.add_argument("--skip_baseline", action="store_true")
    p.add_argument("--x10", action="store_true", help="also run int8 on the 10x table (peak RSS check)")
    args = p.parse_args()
    if args.part:
        return child(args)
    work = tempfile.mkdtemp(prefix="bertfeat-bench-")
    parts = (["inference", "e2e", "reagg", "int8"] + (["int8_x10"] if args.x10 else [])
             + ([] if args.skip_baseline else ["baseline"]))
    results = run_parts(__file__, parts, args, work)
    base = results.get("baseline")
    print(header(f"msgs100u ({results['e2e']['messages']} messages)", args.model, "one run") + "\n")
    print(f"| {'run':44s} | {'seconds':>8s} | {'msgs/s':>7s} | {'real tok/s':>10s} | {'vs base':>7s}"
          f" | {'peak RSS MB':>11s} |")
    print(f"|{'-' * 46}|{'-' * 10}|{'-' * 9}|{'-' * 12}|{'-' * 9}|{'-' * 13}|")
    labels = {"baseline": "DLATK-style PyTorch eager, 32/batch per group",
              "inference": "bertfeat runtime only (same windows)",
              "e2e": "bertfeat end to end (import+sentences+bert)",
              "reagg": "bertfeat re-aggregation (new msg agg)",
              "int8": "bertfeat end to end, --precision int8",
              "int8_x10": "bertfeat int8 end to end, 10x table"}
    for part in ["baseline", "inference", "e2e", "reagg", "int8", "int8_x10"]:
        r = results.get(part)
        if not r:
            continue
        msgs_s = r["messages"] / r["seconds"]
        tok_s = r["real_tokens"] / r["seconds"] if r["real_tokens"] else 0
        speed = f"{msgs_s / (base['messages'] / base['seconds']):.1f}x" if base else "-"
        print(f"| {labels[part]:44s} | {r['seconds']:8.2f} | {msgs_s:7.1f} | {tok_s:10.0f} | {speed:>7s} |"
              f" {r['peak_rss_mb']:11.0f} |")
    if base:
        print(f"\nbaseline padding: {base['real_tokens'] / base['padded_tokens']:.0%} of its batch tokens are real")
    print(f"end to end / inference only: {results['e2e']['seconds'] / results['inference']['seconds']:.2f}")
    print(f"first run / re-aggregation: {results['e2e']['seconds'] / results['reagg']['seconds']:.0f}x")
    if "int8_x10" in results:
        print(f"peak RSS 10x / 1x (int8): {results['int8_x10']['peak_rss_mb'] / results['int8']['peak_rss_mb']:.2f}")


if __name__ == "__main__":
    main()
