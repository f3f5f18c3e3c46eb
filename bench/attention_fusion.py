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


def variant(raw, config, target, attention, mha=False):
    """ONNX Runtime's BERT fusions of `raw` at `target`; `attention` off leaves attention unfused,
    `mha` fuses it as MultiHeadAttention (QKV stays MatMuls) instead of Attention."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model
    options = FusionOptions("bert")
    options.enable_attention = attention
    options.use_multi_head_attention = mha
    fused = optimize_model(str(raw), model_type="bert", num_heads=config.num_attention_heads,
                           hidden_size=config.hidden_size, opt_level=1, optimization_options=options)
    fused.save_model_to_file(str(target))
    return target


def session(path, windows, lengths, batches, threads):
    """(run(): the outputs of every batch, op counts) for the graph at `path`, warmed up."""
    import onnx
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = {}
    for n in onnx.load(str(path)).graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    feeds = list(batches_of(windows, lengths, batches))
    run = lambda: [sess.run(None, {"input_ids": i, "attention_mask": m, "token_type_ids": t})[0]  # noqa: E731
                   for i, t, m in feeds]
    run()
    return run, ops


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--csv", default=str(DEFAULT_CSV))
    p.add_argument("--limit", type=int, default=150)
    p.add_argument("--model_dir", default=str(ROOT / "models"))
    p.add_argument("--rounds", type=int, default=3)
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
    sessions = {name: session(path, windows, lengths, batches, enc.threads) for name, path in graphs.items()}
    secs = {name: [] for name in graphs}
    for _ in range(args.rounds):  # alternating rounds: a slow spell of the host hits every graph
        for name, (run, _) in sessions.items():
            t = time.perf_counter()
            run()
            secs[name].append(time.perf_counter() - t)
    outs = {name: run() for name, (run, _) in sessions.items()}
    print(f"\n| graph | best of {args.rounds} s (all rounds) | real tok/s | vs shipped | max diff to unfused | ops |")
    print("|---|---:|---:|---:|---:|---|")
    shipped = min(secs["all fusions (shipped)"])
    for name, (_, ops) in sessions.items():
        diff = max(float(np.abs(a - b).max()) for a, b in zip(outs[name], outs["no fusion"]))
        top = ", ".join(f"{k} {v}" for k, v in sorted(ops.items(), key=lambda kv: -kv[1])[:4])
        best = min(secs[name])
        print(f"| {name} | {best:.2f} ({' '.join(f'{x:.2f}' for x in secs[name])}) | {real / best:.0f} |"
              f" {shipped / best:.2f}x | {diff:.1e} | {top} |")


if __name__ == "__main__":
    main()
