"""int8 agreement with fp32, per layer, on real windows (issue 10): which quantization holds?

    .venv/bin/python bench/int8_layers.py [--windows 600] [--model_dir DIR]

all-MiniLM-L6-v2 exported at full depth (fp32), then quantized several ways; each variant runs
the same msgs100u windows one at a time (as bertfeat's int8 sessions do) and is compared with
fp32 per layer: the window's token-mean vector cosine (min and 0.1% quantile over windows) and
real tokens/s. Variants (ONNX Runtime dynamic quantization, per-channel s8 weights unless said):
  all        every MatMul/Attention quantized (bertfeat 0.2)
  ffn2-last  the last block's FFN output MatMul kept fp32
  ffn2-all   every block's FFN output MatMul kept fp32
  ffn2-all (0.3)  what bertfeat 0.3 does (exporter.ffn_output_matmuls: MatMuls that read a GELU)
  no-attn    the fused Attention ops kept fp32 (their QKV projection)
  ffn2+attn-out, ffn2+ffn1, last block fp32: more kept in fp32
  smooth a=A [+ ffn2 fp32]  SmoothQuant-style scale migration (exporter.smooth_activations,
             calibrated on the exporter's agreement windows, not on msgs100u), then quantized
Prints the host's ISA and ONNX Runtime version, then one table.
"""
import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def isa():
    flags = ""
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    have = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f" {f}" in flags]
    name = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                platform.processor())
    return name, have


def windows(n, encoder):
    import csv
    from bertfeat.text import windows as w
    from bertfeat.text.sentences import split_sentences
    with open(ROOT / "tests" / "data" / "msgs100u.csv", encoding="utf-8", newline="") as f:
        msgs = [r["message"] for r in csv.DictReader(f)]
    tokenizer = w.load_tokenizer(encoder.entry / "tokenizer.json")
    limit = w.piece_limit(encoder.max_positions)
    out = w.plan(w.learn_template(tokenizer),
                 [w.split_long(w.word_pieces(tokenizer, split_sentences(m)), limit) for m in msgs]).windows
    step = max(1, len(out) // n)
    return out[::step][:n]


def matmul_nodes(model_path):
    import onnx
    g = onnx.load(str(model_path), load_external_data=False).graph
    return [(n.name, n.op_type, list(n.input)) for n in g.node if n.op_type in ("MatMul", "Attention")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--windows", type=int, default=600)
    ap.add_argument("--model_dir", default=None)
    ap.add_argument("--variants", nargs="*", default=None, help="names (substring match)")
    ap.add_argument("--reduce_range", choices=["off", "on", "both"], default="off",
                    help="7-bit weights (no u8*s8 pair-sum saturation on CPUs without VNNI)")
    args = ap.parse_args()
    import onnxruntime as ort

    from bertfeat.exporter import export
    from bertfeat.models import read_manifest
    from bertfeat.runtime import Encoder
    cache = args.model_dir or tempfile.mkdtemp()
    fp32 = export(MODEL, "fp32", None, cache)
    depth = read_manifest(fp32)["depth"]
    enc = Encoder(fp32, threads=1)
    ws = windows(args.windows, enc)
    tokens = sum(len(w[0]) for w in ws)
    name, have = isa()
    print(f"# {name}; ISA {' '.join(have)}; {os.cpu_count()} CPUs; onnxruntime {ort.__version__};"
          f" {len(ws)} msgs100u windows, {tokens} tokens, one window per call, 1 thread")
    layers = list(range(depth))
    ref = enc.run(ws, layers)  # fp32, [L, n, H] each
    ref_mean = np.stack([r.mean(1) for r in ref])  # [windows, L, H]

    nodes = matmul_nodes(fp32 / "model.onnx")
    mm = [n for n, op, _ in nodes if op == "MatMul"]
    # FFN output MatMuls: the second MatMul after each block's GELU, found by name order per block
    ffn2 = [n for n in mm if "output/dense" in n and "attention" not in n]
    attn = [n for n, op, _ in nodes if op == "Attention"]
    attn_out = [n for n in mm if "attention/output/dense" in n]
    ffn1 = [n for n in mm if "intermediate/dense" in n]
    from bertfeat.exporter import ffn_output_matmuls
    variants = {"all": [], "ffn2-last": ffn2[-1:], "ffn2-all (0.3)": ffn_output_matmuls(fp32 / "model.onnx"),
                "no-attn": attn, "ffn2+attn-out": ffn2 + attn_out, "ffn2+ffn1": ffn2 + ffn1,
                "last block fp32": [n for n in mm if f"layer.{depth - 1}/" in n] + attn[-1:]}
    smooth = {"smooth a=0.5": (0.5, []), "smooth a=0.5 + ffn2 fp32": (0.5, ffn2),
              "smooth a=0.75": (0.75, []), "smooth a=0.75 + ffn2 fp32": (0.75, ffn2),
              "smooth a=0.75, ffn2 a=0.95": (0.75, []), "smooth a=0.85, ffn2 a=0.95": (0.85, []),
              "smooth a=0.75 + ffn2 + last ffn1 fp32": (0.75, ffn2 + ffn1[-1:]),
              "smooth a=0.75 + ffn2 + last attention fp32": (0.75, ffn2 + attn[-1:] + attn_out[-1:]),
              "smooth a=0.75 + ffn2 + last block fp32": (0.75, ffn2 + ffn1[-1:] + attn[-1:] + attn_out[-1:])}
    variants.update({k: v[1] for k, v in smooth.items()})
    if args.variants:
        variants = {k: v for k, v in variants.items() if any(x in k for x in args.variants)}
    work = Path(tempfile.mkdtemp())
    print("\n| variant | kept fp32 | " + " | ".join(f"L{k} min / q0.1%" for k in layers)
          + " | real tok/s | vs fp32 |")
    print("|---|---|" + "---|" * len(layers) + "---|---|")
    t = time.perf_counter()
    for w in ws:
        enc.run([w], layers)
    fp32_rate = tokens / (time.perf_counter() - t)
    print("| fp32 | - | " + " | ".join("1 / 1" for _ in layers) + f" | {fp32_rate:,.0f} | 1.00x |", flush=True)
    for vname, exclude in variants.items():
        target = work / f"{vname}.onnx"
        source = fp32 / "model.onnx"
        if vname in smooth:
            from bertfeat.exporter import agreement_feeds, smooth_activations
            m = read_manifest(fp32)
            source = smooth_activations(source, work / f"{vname}-smooth.onnx",
                                        agreement_feeds(fp32 / "tokenizer.json", m["inputs"], depth),
                                        alpha=smooth[vname][0], skip=exclude,
                                        alphas={n: 0.95 for n in ffn2} if "ffn2 a=" in vname else None)
        for reduce in {"off": [False], "on": [True], "both": [False, True]}[args.reduce_range]:
            run_variant(vname + (", 7-bit weights" if reduce else ""), source, target, exclude, reduce, fp32,
                        work, ws, layers, ref_mean, tokens, fp32_rate)


def run_variant(vname, source, target, exclude, reduce_range, fp32, work, ws, layers, ref_mean, tokens, fp32_rate):
    """Quantize `source`, run the windows one per call, print the variant's row."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from bertfeat.models import read_manifest
    from bertfeat.runtime import Encoder
    quantize_dynamic(str(source), str(target), per_channel=True, reduce_range=reduce_range,
                     weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                     extra_options={"DefaultTensorType": 1})
    entry = work / vname.replace(" ", "_").replace("=", "").replace(",", "")
    entry.mkdir()
    os.replace(target, entry / "model.onnx")
    for f in ("tokenizer.json",):
        (entry / f).write_bytes((fp32 / f).read_bytes())
    manifest = {**read_manifest(fp32), "precision": "int8", "per_window": True}
    (entry / "manifest.json").write_text(json.dumps(manifest))
    q = Encoder(entry, threads=1)
    t = time.perf_counter()
    got = q.run(ws, layers)
    rate = tokens / (time.perf_counter() - t)
    got_mean = np.stack([g.mean(1) for g in got])
    cos = (ref_mean * got_mean).sum(-1) / np.linalg.norm(ref_mean, axis=-1) / np.linalg.norm(got_mean, axis=-1)
    cells = [f"{cos[:, k].min():.4f} / {np.quantile(cos[:, k], 0.001):.4f}" for k in layers]
    print(f"| {vname} | {len(exclude)} | " + " | ".join(cells) + f" | {rate:,.0f} | {rate / fp32_rate:.2f}x |",
          flush=True)


if __name__ == "__main__":
    sys.exit(main())
