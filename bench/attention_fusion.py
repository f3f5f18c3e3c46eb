"""Experiment (issue 10): ONNX Runtime's fused Attention op vs unfused MatMul/Softmax, fp32.

    .venv/bin/python bench/attention_fusion.py [--limit 150]

bench/profile_ops.py found the fused Attention op taking ~27% of fp32 time for ~2% of the FLOPs on
short windows. Here all-MiniLM-L6-v2 cut to 5 layers is exported once (torch.onnx, last hidden
state) and optimized by onnxruntime.transformers three ways: no fusion, all fusions (what bertfeat
ships), all fusions but attention. Each runs the same length-sorted batches of msgs100u windows
(warm-up, then timed), 2 threads; max |diff| to the unfused graph is printed too.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from add_bert import DEFAULT_CSV, ROOT, windows_by_group  # noqa: E402
from runtime import batches_of, cpu_isa  # noqa: E402


def export(source, layers, path):
    import torch
    from transformers import AutoModel
    model = AutoModel.from_pretrained(source, attn_implementation="eager").eval()
    model.encoder.layer = model.encoder.layer[:layers]
    class Last(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    ids = torch.ones(2, 16, dtype=torch.long)
    torch.onnx.export(Last(), (ids, torch.ones_like(ids), torch.zeros_like(ids)), str(path),
                      input_names=["input_ids", "attention_mask", "token_type_ids"], output_names=["last"],
                      dynamic_axes={n: {0: "b", 1: "t"} for n in ("input_ids", "attention_mask", "token_type_ids")},
                      opset_version=17, dynamo=False)
    return model.config


def variant(raw, config, target, attention):
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model
    options = FusionOptions("bert")
    options.enable_attention = attention
    fused = optimize_model(str(raw), model_type="bert", num_heads=config.num_attention_heads,
                           hidden_size=config.hidden_size, opt_level=1, optimization_options=options)
    fused.save_model_to_file(str(target))
    return target


def timed(path, windows, lengths, batches, threads):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = {}
    import onnx
    for n in onnx.load(str(path)).graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    run = lambda: [sess.run(None, {"input_ids": i, "attention_mask": m, "token_type_ids": t})[0]  # noqa: E731
                   for i, t, m in batches_of(windows, lengths, batches)]
    run()
    t = time.perf_counter()
    out = run()
    return time.perf_counter() - t, out, ops


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--csv", default=str(DEFAULT_CSV))
    p.add_argument("--limit", type=int, default=150)
    p.add_argument("--model_dir", default=str(ROOT / "models"))
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bertfeat-attn-"))
    groups, enc, n_msgs = windows_by_group(str(work), args.csv, args.limit, args.model_dir)
    windows = [w for ws in groups.values() for w in ws]
    lengths = np.array([len(w[0]) for w in windows])
    batches = list(enc.batches(lengths))
    real = int(lengths.sum())
    print(f"# {cpu_isa()}; {os.cpu_count()} CPUs; {enc.threads} threads; {len(windows)} windows of {n_msgs}"
          f" posts, {real} real tokens, mean {real / len(windows):.0f}, {len(batches)} batches")
    config = export(enc.manifest["source"], enc.depth, work / "raw.onnx")
    graphs = {"no fusion": work / "raw.onnx",
              "all fusions (shipped)": variant(work / "raw.onnx", config, work / "all.onnx", True),
              "all but attention": variant(work / "raw.onnx", config, work / "noattn.onnx", False)}
    results = {name: timed(path, windows, lengths, batches, enc.threads) for name, path in graphs.items()}
    base = results["no fusion"][1]
    print("\n| graph | seconds | real tok/s | vs shipped | max abs diff to unfused | ops |")
    print("|---|---:|---:|---:|---:|---|")
    shipped = results["all fusions (shipped)"][0]
    for name, (secs, out, ops) in results.items():
        diff = max(float(np.abs(a - b).max()) for a, b in zip(out, base))
        top = ", ".join(f"{k} {v}" for k, v in sorted(ops.items(), key=lambda kv: -kv[1])[:4])
        print(f"| {name} | {secs:.2f} | {real / secs:.0f} | {shipped / secs:.2f}x | {diff:.1e} | {top} |")


if __name__ == "__main__":
    main()
