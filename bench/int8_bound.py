"""How fast can int8 be on this CPU? ONNX Runtime's per-op profile of fp32 and int8 (issue 10).

    .venv/bin/python bench/int8_bound.py [--limit 150] [--model_dir DIR]

bertfeat's fp32 export of all-MiniLM-L6-v2 (depth 5, the default run's) and the int8 recipe this
CPU batches first, built by the exporter's own code from it (per token with every MatMul in int8
where u8 x s8 sums are exact; else per token with 7-bit weights), each profiled once after a
warm-up on the same length-sorted batches of msgs100u's windows, 2 threads. Printed: seconds per
op type, then Amdahl's bounds on int8's speed-up over fp32 from fp32's own split into GEMMs and
the rest (the rest - LayerNorm, GELU, Softmax, Adds, Transposes - stays fp32 in every int8 recipe):
  with int8 GEMMs as fast as measured here and the per-token quantization free,
  with int8 GEMMs 4x fp32's (what VNNI's instructions allow at most) and the quantization free.
Attention's two fp32 products count as GEMMs there, as if they sped up too: both bounds are
generous. A target above the second bound needs faster non-GEMM kernels, not a better int8 recipe.
"""
import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from add_bert import DEFAULT_CSV, MODEL, ROOT, windows_by_group  # noqa: E402
from profile_ops import ort_profile  # noqa: E402
from runtime import cpu_isa  # noqa: E402

GEMM = {"MatMul", "FusedMatMul", "Gemm", "MatMulIntegerToFloat", "MatMulInteger", "Attention", "QAttention"}
QUANTIZING = {"Abs", "ReduceMax", "Max", "Div", "QuantizeLinear", "DynamicQuantizeLinear", "Sub"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=150, help="msgs100u posts")
    ap.add_argument("--model_dir", default=str(ROOT / "models"))
    args = ap.parse_args()
    import onnxruntime as ort

    from bertfeat.exporter import _fused_source, agreement_feeds, export, int8_recipes
    from bertfeat.models import read_manifest
    from bertfeat.runtime import int8_dot_is_exact
    fp32 = export(MODEL, "fp32", 5, args.model_dir)
    manifest = read_manifest(fp32)
    work = Path(tempfile.mkdtemp(prefix="bertfeat-bound-"))
    groups, enc, n_posts = windows_by_group(str(work), DEFAULT_CSV, args.limit, args.model_dir)
    windows = [w for ws in groups.values() for w in ws]
    lengths = np.array([len(w[0]) for w in windows])
    batches = list(enc.batches(lengths))
    feeds = agreement_feeds(fp32 / "tokenizer.json", manifest["inputs"], 5, manifest["max_positions"])
    recipe = next(r for r in int8_recipes() if not r.per_window)  # batched like fp32: one profile each
    source = _fused_source(fp32, manifest, work / "fused.onnx")[0] if recipe.graph == "fused" else fp32 / "model.onnx"
    recipe.convert(source, work / "int8.onnx", feeds)
    print(f"# {cpu_isa()}; exact int8 sums: {int8_dot_is_exact()}; {os.cpu_count()} CPUs; onnxruntime"
          f" {ort.__version__}; {n_posts} msgs100u posts, {len(windows)} windows, {int(lengths.sum())} real"
          f" tokens, {len(batches)} batches; 2 threads\n# int8: {recipe.label}\n")
    sides = {"fp32": ort_profile(fp32 / "model.onnx", 2, 4, windows, lengths, batches, str(work)),
             "int8": ort_profile(work / "int8.onnx", 2, 4, windows, lengths, batches, str(work))}
    ops = sorted({k for _, o in sides.values() for k in o}, key=lambda k: -max(o.get(k, 0) for _, o in sides.values()))
    print("| op type | fp32 s | int8 s |\n|---|---:|---:|")
    for k in ops:
        if max(o.get(k, 0) for _, o in sides.values()) >= 0.01:
            print(f"| {k} | {sides['fp32'][1].get(k, 0):.2f} | {sides['int8'][1].get(k, 0):.2f} |")

    def split(o):
        gemm = sum(v for k, v in o.items() if k in GEMM)
        quant = sum(v for k, v in o.items() if k in QUANTIZING)
        return gemm, quant, sum(o.values()) - gemm - quant
    (f_gemm, _, f_rest), (i_gemm, i_quant, i_rest) = split(sides["fp32"][1]), split(sides["int8"][1])
    f_total = f_gemm + f_rest
    print(f"| **GEMMs** | {f_gemm:.2f} | {i_gemm:.2f} |\n| **quantizing (Abs, ReduceMax, Max, Div, QuantizeLinear,"
          f" Sub)** | - | {i_quant:.2f} |\n| **the rest (incl. the rescale Muls in int8)** | {f_rest:.2f} |"
          f" {i_rest:.2f} |\n| **total kernel time** | {f_total:.2f} | {sum(sides['int8'][1].values()):.2f} |\n"
          f"| wall | {sides['fp32'][0]:.2f} | {sides['int8'][0]:.2f} |\n")
    print(f"- int8 / fp32 here: {sides['fp32'][0] / sides['int8'][0]:.2f}x (wall of one profiled pass each)")
    print(f"- fp32 time outside GEMMs: {f_rest / f_total:.0%}; int8 GEMMs {f_gemm / i_gemm:.2f}x fp32's")
    print(f"- bound, int8 GEMMs as measured, quantization free: {f_total / (f_rest + i_gemm):.2f}x fp32")
    print(f"- bound, int8 GEMMs 4x fp32's, quantization free: {f_total / (f_rest + f_gemm / 4):.2f}x fp32")


if __name__ == "__main__":
    sys.exit(main())
