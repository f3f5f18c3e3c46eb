"""Where fp32 time goes: ONNX Runtime's per-op profile beside PyTorch's, same batches (issue 10).

    .venv/bin/python bench/profile_ops.py [--limit 150]

bertfeat's fp32 export (depth 5: layers 0-4, what a default run computes) and PyTorch eager
truncated to the same 5 layers, on the same length-sorted token-budget batches of msgs100u's
windows, same threads, one process. Each side runs once to warm up, then once profiled
(ORT: SessionOptions.enable_profiling; PyTorch: torch.profiler, self CPU time). Op time is
grouped into kinds (GEMM, attention, normalization, activation, the rest) and printed per side.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_CSV, ROOT, batches_of, header, windows_by_group  # noqa: E402

KINDS = [  # (kind, substrings of ORT op types / torch op names), first match wins
    ("GEMM (MatMul, Linear, FusedMatMul)", ("matmul", "gemm", "addmm", "linear", "bmm", "mm")),
    ("attention (ORT: fused op incl. its QKV projection; torch: softmax)", ("attention", "softmax")),
    ("normalization", ("layernorm", "layer_norm", "skiplayernorm")),
    ("activation (GELU)", ("gelu", "erf")),
]


def kind(name):
    low = name.lower()
    return next((k for k, keys in KINDS if any(s in low for s in keys)), "other (add, reshape, copy, ...)")


def ort_profile(model, threads, layer, windows, lengths, batches, work):
    """ONNX Runtime's profile of `model` (its CPU provider, `threads` threads) on the batches, run
    once to warm up, then once profiled: (wall seconds of that pass, {op type: kernel seconds})."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(work, Path(model).stem)
    sess = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    layer = np.asarray([layer], np.int64)
    feeds = lambda ids, types, mask: {n: v for n, v in  # noqa: E731
                                      zip(("input_ids", "token_type_ids", "attention_mask", "layers"),
                                          (ids, types, mask, layer)) if n in names}
    for ids, types, mask in batches_of(windows, lengths, batches):  # warm-up (also profiled: dropped below)
        sess.run(None, feeds(ids, types, mask))
    marker = time.perf_counter()
    for ids, types, mask in batches_of(windows, lengths, batches):
        sess.run(None, feeds(ids, types, mask))
    seconds = time.perf_counter() - marker
    events = json.load(open(sess.end_profiling()))
    runs = [e for e in events if e.get("name") == "model_run"]
    second_half = runs[len(runs) // 2]["ts"]
    out = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= second_half:
            out[e["args"]["op_name"]] = out.get(e["args"]["op_name"], 0) + e["dur"] / 1e6
    return seconds, out


def torch_profile(enc, windows, lengths, batches, layers):
    import torch
    from transformers import AutoModel
    torch.set_num_threads(enc.threads)
    model = AutoModel.from_pretrained(enc.manifest["source"], attn_implementation="eager").eval()
    model.encoder.layer = model.encoder.layer[:layers]
    with torch.no_grad():
        for ids, types, mask in batches_of(windows, lengths, batches):
            model(input_ids=torch.from_numpy(ids), token_type_ids=torch.from_numpy(types),
                  attention_mask=torch.from_numpy(mask))
        t = time.perf_counter()
        for ids, types, mask in batches_of(windows, lengths, batches):
            model(input_ids=torch.from_numpy(ids), token_type_ids=torch.from_numpy(types),
                  attention_mask=torch.from_numpy(mask))
        seconds = time.perf_counter() - t
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for ids, types, mask in batches_of(windows, lengths, batches):
                model(input_ids=torch.from_numpy(ids), token_type_ids=torch.from_numpy(types),
                      attention_mask=torch.from_numpy(mask))
    out = {}
    for ev in prof.key_averages():
        k = kind(ev.key)
        out[k] = out.get(k, 0) + ev.self_cpu_time_total / 1e6
    return seconds, out


def main():
    import tempfile
    p = argparse.ArgumentParser()
    p.add_argument("--csv", default=str(DEFAULT_CSV))
    p.add_argument("--limit", type=int, default=150)
    p.add_argument("--model_dir", default=str(ROOT / "models"))
    args = p.parse_args()
    work = tempfile.mkdtemp(prefix="bertfeat-prof-")
    groups, enc, n_msgs = windows_by_group(work, args.csv, args.limit, args.model_dir)
    windows = [w for ws in groups.values() for w in ws]
    lengths = np.array([len(w[0]) for w in windows])
    batches = list(enc.batches(lengths))
    real = int(lengths.sum())
    print(header(f"{enc.threads} threads") + f"; {n_msgs} msgs100u posts, {len(windows)} windows, {real} real tokens,"
          f" {len(batches)} batches")
    ort_s, by_op = ort_profile(enc.entry / "model.onnx", enc.threads, enc.depth - 1,  # the default layer
                               windows, lengths, batches, work)
    ort_ops = {}
    for op, sec in by_op.items():
        ort_ops[kind(op)] = ort_ops.get(kind(op), 0) + sec
    torch_s, torch_ops = torch_profile(enc, windows, lengths, batches, enc.depth)
    print(f"\nwall: ONNX Runtime {ort_s:.2f} s ({real / ort_s:.0f} real tok/s), PyTorch eager (same 5 layers,"
          f" same batches) {torch_s:.2f} s ({real / torch_s:.0f} real tok/s): ORT/PyTorch speed"
          f" {torch_s / ort_s:.2f}x\n")
    print("| op kind | ONNX Runtime s | PyTorch s (self CPU, profiled run) |")
    print("|---|---:|---:|")
    for k in [k for k, _ in KINDS] + ["other (add, reshape, copy, ...)"]:
        print(f"| {k} | {ort_ops.get(k, 0):.2f} | {torch_ops.get(k, 0):.2f} |")
    print(f"| total | {sum(ort_ops.values()):.2f} | {sum(torch_ops.values()):.2f} |")


if __name__ == "__main__":
    main()
