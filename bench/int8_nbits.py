"""Experiment (issue 10): int8 that batches — 8-bit block-quantized weights with int8 compute
(ONNX Runtime's MatMulNBits, accuracy_level 4), where activations are quantized per token and
per block of K inside the kernel.

    .venv/bin/pip install onnx-ir   # ONNX Runtime's MatMulNBits quantizer needs it
    .venv/bin/python bench/int8_nbits.py [--limit 150] [--blocks 32,128]

Shipped int8 (dynamic quantization) takes one activation scale per MatMul input tensor, so a
window must run alone. MatMulNBits with accuracy_level 4 quantizes each row of its input (one
token) in blocks of `block_size` along K with the row's own scale, so a token's result depends
on that token alone and windows batch like fp32. Variants, each run batched (length-sorted,
2048 padded tokens, like fp32), on the windows of the first `--limit` msgs100u posts:
  nbits8/fused:  the shipped fused fp32 graph, its MatMuls (attention output, FFN in and out)
                 as MatMulNBits; the fused Attention op keeps its QKV projection in fp32.
  nbits8/mha:    the graph fused with MultiHeadAttention instead (QKV stays three MatMuls), so
                 all four GEMMs of a block are MatMulNBits.
Printed: real tok/s vs fp32 batched and vs shipped int8 (one window per call), per-layer min
window token-mean cosine to fp32 over every test window (the bar: 0.995), and the largest
difference between a window run alone and in its batch.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from add_bert import DEFAULT_CSV, ROOT  # noqa: E402
from attention_fusion import variant  # noqa: E402
from int8_static import corpus_windows  # noqa: E402
from runtime import cpu_isa  # noqa: E402

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def raw_graph(work, depth):
    """The unfused traced graph of MODEL (the exporter's own trace), at work/raw.onnx."""
    from bertfeat.exporter import _load, _trace, resolve_source
    model, tokenizer, _, _ = _load(resolve_source(MODEL), depth)
    _trace(model, tokenizer, depth, work / "raw.onnx")
    return work / "raw.onnx", model.config


def nbits(src, target, block, bits=8, exclude=()):
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    q = MatMulNBitsQuantizer(onnx.load(str(src)), bits=bits, block_size=block, is_symmetric=True,
                             accuracy_level=4, nodes_to_exclude=list(exclude))
    q.process()
    q.model.save_model_to_file(str(target), use_external_data_format=False)
    return target


def entry_like(fp32_entry, graph, work):
    """A runnable cache-entry folder: `graph` with fp32's tokenizer and manifest (batched)."""
    work.mkdir(parents=True, exist_ok=True)
    os.replace(graph, work / "model.onnx")
    for name in ("tokenizer.json", "manifest.json"):
        (work / name).write_bytes((fp32_entry / name).read_bytes())
    return work


def ops(path):
    import onnx
    from collections import Counter
    return dict(Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node
                        if n.op_type in ("MatMul", "MatMulNBits", "Attention", "MultiHeadAttention")))


def main():
    import csv
    p = argparse.ArgumentParser()
    p.add_argument("--limit", type=int, default=150)
    p.add_argument("--blocks", default="32,128")
    p.add_argument("--model_dir", default=str(ROOT / "models"))
    args = p.parse_args()
    from bertfeat.exporter import locate
    from bertfeat.runtime import Encoder
    depth, layers = 6, list(range(6))
    fp32 = Encoder(locate(MODEL, depth, "fp32", args.model_dir), threads=2)
    dyn = Encoder(locate(MODEL, depth, "int8", args.model_dir), threads=2)
    with open(DEFAULT_CSV, encoding="utf-8", newline="") as f:
        posts = [r["message"] for r in csv.DictReader(f)]
    test = corpus_windows(fp32.entry, posts[:args.limit])
    work = Path(tempfile.mkdtemp(prefix="bertfeat-nbits-"))
    raw, config = raw_graph(work, depth)
    mha = variant(raw, config, work / "mha.onnx", attention=True, mha=True)
    variants = {}
    for block in [int(b) for b in args.blocks.split(",")]:
        for label, src in (("fused", fp32.entry / "model.onnx"), ("mha", mha)):
            g = nbits(src, work / f"{label}{block}.onnx", block)
            variants[f"nbits8/{label} b{block}"] = (ops(g), entry_like(fp32.entry, g, work / f"{label}{block}"))
    g = work / "mha_fp32.onnx"
    g.write_bytes(mha.read_bytes())
    variants["fp32/mha (no int8)"] = (ops(g), entry_like(fp32.entry, g, work / "mha_fp32"))
    encoders = {"fp32 batched (shipped)": fp32, "int8 per window (shipped)": dyn}
    encoders.update({k: Encoder(e, threads=2) for k, (_, e) in variants.items()})
    timings, outs = {}, {}
    for name, enc in encoders.items():
        enc.run(test[:20], layers)
        best = None
        for _ in range(2):
            t = time.perf_counter()
            outs[name] = enc.run(test, layers)
            best = min(best or 1e9, time.perf_counter() - t)
        timings[name] = best
    real = sum(len(w[0]) for w in test)
    print(f"# {cpu_isa()}; {os.cpu_count()} CPUs; onnxruntime {__import__('onnxruntime').__version__};"
          f" {len(test)} windows ({real} real tokens) of the first {args.limit} msgs100u posts; all 6 layers"
          " returned; best of 2 runs\n")
    print("| run | graph ops | real tok/s | vs fp32 | vs shipped int8 | min window cosine to fp32, L0..L5 |"
          " alone vs batch max diff |")
    print("|---|---|---:|---:|---:|---|---:|")
    ref = [np.stack([o[k].mean(0) for o in outs["fp32 batched (shipped)"]]) for k in layers]
    probe = [3, len(test) // 2, len(test) - 1]
    for name, secs in timings.items():
        cos = []
        for k in layers:
            got = np.stack([o[k].mean(0) for o in outs[name]])
            cos.append(((ref[k] * got).sum(1) / np.linalg.norm(ref[k], axis=1) / np.linalg.norm(got, axis=1)).min())
        alone = max(float(np.abs(encoders[name].run([test[i]], layers)[0] - outs[name][i]).max()) for i in probe)
        graph = variants.get(name, ({}, None))[0]
        print(f"| {name} | {', '.join(f'{k} {v}' for k, v in graph.items()) or '-'} | {real / secs:,.0f} |"
              f" {timings['fp32 batched (shipped)'] / secs:.2f}x | {timings['int8 per window (shipped)'] / secs:.2f}x |"
              f" {' '.join(f'{c:.4f}' for c in cos)} | {alone:.1e} |")


if __name__ == "__main__":
    main()
