"""How fast can int8 be on this CPU? ONNX Runtime's per-op profile of fp32 and int8 (issue 10).

    .venv/bin/python bench/int8_bound.py [--limit 150] [--model_dir DIR] [--model NAME_OR_DIR]

bertfeat's fp32 export of all-MiniLM-L6-v2 (or --model) at the default run's depth, and its int8
export on this CPU (what --precision int8 runs: per token where u8 x s8 sums are exact, the
fewest MatMuls kept fp32 for every layer to agree; it must batch: a per-window export is not
profiled), each profiled once after a
warm-up on the same length-sorted batches of msgs100u's windows, 2 threads. Printed: seconds per
op type, then Amdahl's bounds on int8's speed-up over fp32 from fp32's own split into GEMMs and
the rest (the rest - LayerNorm, GELU, Softmax, Adds, Transposes - stays fp32 in every int8 recipe):
  with int8 GEMMs as fast as measured here and the per-token quantization free,
  with int8 GEMMs 4x fp32's (what VNNI's instructions allow at most) and the quantization free.
Attention's two fp32 products count as GEMMs there, as if they sped up too: both bounds are
generous. A target above the second bound needs faster non-GEMM kernels, not a better int8 recipe.
"""
import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_CSV, MODEL, ROOT, default_layer, header, windows_by_group  # noqa: E402
from profile_ops import ort_profile  # noqa: E402

GEMM = {"MatMul", "FusedMatMul", "Gemm", "MatMulIntegerToFloat", "MatMulInteger", "Attention", "QAttention"}
QUANTIZING = {"Abs", "ReduceMax", "Max", "Div", "QuantizeLinear", "DynamicQuantizeLinear", "Sub"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=150, help="msgs100u posts")
    ap.add_argument("--model_dir", default=str(ROOT / "models"))
    ap.add_argument("--model", default=MODEL, help="HF id or local folder (default all-MiniLM-L6-v2)")
    args = ap.parse_args()
    import onnxruntime as ort

    from bertfeat.exporter import export
    from bertfeat.models import read_manifest
    from bertfeat.runtime import int8_dot_is_exact
    depth, layer, _ = default_layer(args.model)
    fp32 = export(args.model, "fp32", depth, args.model_dir)
    int8 = export(args.model, "int8", depth, args.model_dir)
    m8 = read_manifest(int8)
    if m8["per_window"]:
        sys.exit("this CPU's int8 export runs a window per call: not profiled against batched fp32")
    work = Path(tempfile.mkdtemp(prefix="bertfeat-bound-"))
    groups, enc, n_posts = windows_by_group(str(work), DEFAULT_CSV, args.limit, args.model_dir, args.model)
    windows = [w for ws in groups.values() for w in ws]
    lengths = np.array([len(w[0]) for w in windows])
    batches = list(enc.batches(lengths))
    print(header(f"exact int8 sums: {int8_dot_is_exact()}") + f"; onnxruntime {ort.__version__}; {args.model} depth"
          f" {depth}; {n_posts} msgs100u posts, {len(windows)} windows,"
          f" {int(lengths.sum())} real tokens, {len(batches)} batches; 2 threads\n# int8: {m8['optimizations'][-1]};"
          f" {m8.get('int8_matmuls', '?')} MatMuls int8, {len(m8.get('int8_fp32_matmuls', []))} kept fp32\n")
    sides = {"fp32": ort_profile(fp32 / "model.onnx", 2, layer, windows, lengths, batches, str(work)),
             "int8": ort_profile(int8 / "model.onnx", 2, layer, windows, lengths, batches, str(work))}
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
