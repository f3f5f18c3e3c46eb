"""Benchmark the runtime alone on the windows SPEC §3 builds from msgs100u (all-MiniLM-L6-v2,
or --model: an HF id or a local folder, e.g. all-mpnet-base-v2 or a random bert-base config).

    .venv/bin/python bench/runtime.py [--limit N] [--device cuda] [--model NAME_OR_DIR]

All in one run, each in its own process (own peak RSS), same machine:
  (a) PyTorch fp32 eager, batches of 32 windows in corpus order, whole model (what DLATK does)
  (b) PyTorch fp32 eager, the same length-sorted token-budget batches as bertfeat, whole model
  (c) bertfeat fp32 (ONNX Runtime, stops after the default layer, the second-to-last)
  (d) bertfeat int8 (the export's recipe on this CPU: per token, batched, or per window)
plus a --batch_tokens sweep for (c), the FLOP-bound ceiling from a measured GEMM rate, and the
cold start (fresh process: import, cached export, session, first batch).
With --device cuda (onnxruntime-gpu and a CUDA torch): (a), (b) and (c) on the GPU, (e) bertfeat
fp16 instead of (d), and the sweep; the CPU-only GEMM ceiling and cold start are left out.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (DEFAULT_CSV, MODEL, ROOT, batches_of, cpu_isa, default_layer, flops_per_token,  # noqa: E402
                    gemm_rate, ort_gemm_rate, report, run_parts, torch_inputs, windows_by_group)


def part(args):
    import numpy as np
    if args.part == "gemm":
        return {"gflops": gemm_rate() / 1e9, "ort_gflops": ort_gemm_rate() / 1e9}
    if args.part == "cold":
        t = time.perf_counter()
        from bertfeat.exporter import locate
        from bertfeat.runtime import Encoder
        depth, layer, _ = default_layer(args.model)
        enc = Encoder(locate(args.model, depth, "fp32", args.model_dir))
        from bertfeat.text import windows
        tokenizer = windows.load_tokenizer(enc.entry / "tokenizer.json")
        pieces = windows.word_pieces(tokenizer, ["A first sentence for the cold start.", "And a second one."])
        enc.run(windows.plan(windows.learn_template(tokenizer), [pieces]).windows, [layer])
        return {"seconds": time.perf_counter() - t}
    depth, layer, _ = default_layer(args.model)
    groups, enc, _ = windows_by_group(args.work, args.csv, args.limit, args.model_dir, args.model)
    windows = [w for ws in groups.values() for w in ws]
    real = sum(len(w[0]) for w in windows)
    lengths = np.array([len(w[0]) for w in windows])
    if args.part in ("a", "b"):
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained(enc.manifest["source"]).eval().to(args.device)
        if args.part == "a":
            batches = [list(range(k, min(k + 32, len(windows)))) for k in range(0, len(windows), 32)]
        else:
            batches = list(enc.batches(lengths))
        padded = 0
        t = time.perf_counter()
        with torch.no_grad():
            for ids, types, mask in batches_of(windows, lengths, batches):
                inputs = {k: v.to(args.device) for k, v in torch_inputs(model, ids, types, mask).items()}
                out = model(**inputs, output_hidden_states=True)
                out.hidden_states[-2].cpu()  # the default layer back on the host, as a run needs it
                padded += ids.size
        return {"seconds": time.perf_counter() - t, "real": real, "padded": padded, "windows": len(windows),
                "mean_len": real / len(windows)}
    from bertfeat.exporter import locate
    from bertfeat.runtime import Encoder
    precision = {"d": "int8", "e": "fp16"}.get(args.part, "fp32")
    entry = locate(args.model, depth, precision, args.model_dir)
    if args.part == "sweep":
        out = {}
        cuda = args.device == "cuda"  # a GPU wants far bigger batches: sweep them on all windows
        sample = windows if cuda else windows[: min(len(windows), 3000)]
        for budget in ((2048, 8192, 32768, 131072) if cuda else (512, 1024, 2048, 4096, 8192)):
            e = Encoder(entry, device=args.device, batch_tokens=budget)
            e.run(sample[:50], [layer])
            t = time.perf_counter()
            e.run(sample, [layer])
            out[budget] = sum(len(w[0]) for w in sample) / (time.perf_counter() - t)
        return {"sweep": out}
    e = Encoder(entry, device=args.device)
    e.run(windows[:50], [layer])  # warm-up (CUDA kernels, memory arenas)
    t = time.perf_counter()
    for k in range(0, len(windows), 2048):
        e.run(windows[k:k + 2048], [layer])
    return {"seconds": time.perf_counter() - t, "real": real, "padded": real if e.per_window else None,
            "windows": len(windows)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--csv", default=str(DEFAULT_CSV))
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--model_dir", default=str(ROOT / "models"))
    p.add_argument("--model", default=MODEL, help="HF id or local folder (default all-MiniLM-L6-v2)")
    p.add_argument("--part")
    p.add_argument("--work")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = p.parse_args()
    if args.part:
        return report(part(args))
    work = tempfile.mkdtemp(prefix="bertfeat-bench-")
    if args.device == "cuda":
        return main_cuda(args, work)
    res = run_parts(__file__, ("gemm", "c", "d", "sweep", "cold", "a", "b"), args, work)
    gemm = max(res["gemm"]["gflops"], res["gemm"]["ort_gflops"]) * 1e9
    mean_len = res["a"]["mean_len"]
    depth, _, config = default_layer(args.model)
    n, h, inter = config.num_hidden_layers, config.hidden_size, config.intermediate_size
    full = flops_per_token(h, inter, n, mean_len)
    five = flops_per_token(h, inter, depth, mean_len)
    print(f"model: {args.model} ({n} x {h}); CPU: {cpu_isa()}")
    print(f"msgs100u windows: {res['a']['windows']} windows, {res['a']['real']} real tokens"
          f" (mean {mean_len:.0f}/window); {os.cpu_count()} CPUs; fp32 GEMM 2048^3: numpy"
          f" {res['gemm']['gflops']:.0f} GFLOP/s, ONNX Runtime {res['gemm']['ort_gflops']:.0f} GFLOP/s"
          " (the ceiling uses the faster)\n")
    print("| run | layers run | real tok/s | real/batch tokens | vs (a) | vs (b) | % of FLOP ceiling | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    base_a = res["a"]["real"] / res["a"]["seconds"]
    base_b = res["b"]["real"] / res["b"]["seconds"]
    labels = {"a": "(a) PyTorch eager, 32/batch, corpus order", "b": "(b) PyTorch eager, length-sorted batches",
              "c": "(c) bertfeat fp32", "d": "(d) bertfeat int8"}
    for name in "abcd":
        r = res[name]
        tps = r["real"] / r["seconds"]
        flops = full if name in "ab" else five
        frac = f"{r['real'] / r['padded']:.0%}" if r.get("padded") else "100%"
        ceiling = f"{tps * flops / gemm:.0%}" if name != "d" else "- (int8)"
        print(f"| {labels[name]} | {n if name in 'ab' else depth} | {tps:,.0f} | {frac} | {tps / base_a:.2f}x |"
              f" {tps / base_b:.2f}x | {ceiling} | {r['peak_rss_mb']:.0f} |")
    print(f"\nint8 / fp32: {res['c']['seconds'] / res['d']['seconds']:.2f}x")
    print(f"\nFLOP-bound ceiling: {gemm / full:,.0f} tok/s for {n} layers, {gemm / five:,.0f} for {depth}"
          f" ({full / 1e6:.1f} / {five / 1e6:.1f} MFLOP per token at the mean window length)")
    print("\n--batch_tokens sweep, (c) on up to 3,000 windows: " +
          ", ".join(f"{k}: {v:,.0f} tok/s" for k, v in res["sweep"]["sweep"].items()))
    print(f"cold start (fresh process: import, cached export, session, first batch): {res['cold']['seconds']:.2f} s")


def main_cuda(args, work):
    res = run_parts(__file__, ("c", "e", "sweep", "a", "b"), args, work, ("--device", "cuda"))
    print(f"msgs100u windows on CUDA: {res['a']['windows']} windows, {res['a']['real']} real tokens\n")
    print("| run | real tok/s | vs (a) | vs (b) | peak RSS MB |\n|---|---|---|---|---|")
    base_a, base_b = (res[k]["real"] / res[k]["seconds"] for k in "ab")
    labels = {"a": "(a) PyTorch fp32 eager, 32/batch, corpus order", "b": "(b) PyTorch fp32 eager, sorted batches",
              "c": "(c) bertfeat fp32", "e": "(e) bertfeat fp16"}
    for name in "abce":
        tps = res[name]["real"] / res[name]["seconds"]
        print(f"| {labels[name]} | {tps:,.0f} | {tps / base_a:.2f}x | {tps / base_b:.2f}x"
              f" | {res[name]['peak_rss_mb']:.0f} |")
    print("\n--batch_tokens sweep, (c) on all windows: "
          + ", ".join(f"{k}: {v:,.0f} tok/s" for k, v in res["sweep"]["sweep"].items()))


if __name__ == "__main__":
    main()
