"""int8 with one activation scale per token, batched (issue 10 experiment; not what bertfeat ships).

    .venv/bin/python bench/int8_per_token.py [--windows N] [--model_dir DIR]

bertfeat 0.3's int8 (ONNX Runtime dynamic quantization) takes one activation scale per tensor,
so its sessions run one window per call to keep a message's vector independent of its
batch-mates. This prototype rewrites the fp32 graph so that every token is quantized with its own
scale (symmetric, max|x|/127, stored as u8 with zero point 128: ONNX Runtime's s8s8
MatMulInteger is a slow reference kernel, 31 vs 705 GOPS here), weights per output channel; the
fused Attention becomes an int8 QKV projection + MultiHeadAttention. A token's result then
depends on the token alone, so windows can be batched like fp32. Variants: plain, FFN output
projections kept fp32, and SmoothQuant migration (exporter.smooth_activations, alpha 0.75) + FFN
outputs fp32 (0.3's recipe); the "fused ops" rows build the same arithmetic with the shipped
`exporter.int8.per_token_int8` (QuantizeLinear + MatMulIntegerToFloat, 8-bit weights). Prints
real tok/s at the default layer (4) and, per layer, the minimum window token-mean cosine to fp32
over the msgs100u windows.
"""
import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from add_bert import DEFAULT_CSV, MODEL, windows_by_group  # noqa: E402
from runtime import cpu_isa  # noqa: E402


def per_token_int8(src, dst, skip=()):
    """Write `dst`: `src` with each MatMul/Attention weight in s8 per channel and its input
    quantized per token (Abs, ReduceMax, Div, Round, +128, Cast u8 -> MatMulInteger -> scales)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    model = onnx.load(str(src))
    graph = model.graph
    weights = {i.name: i for i in graph.initializer}
    consts = {"pt_eps": np.float32(1e-8), "pt_127": np.float32(127), "pt_128": np.float32(128),
              "pt_zp": np.uint8(128)}
    inits = [numpy_helper.from_array(np.array(v), k) for k, v in consts.items()]
    nodes, count = [], [0]

    def name(kind):
        count[0] += 1
        return f"pt{count[0]}_{kind}"

    def qmatmul(x, w_name, out):
        w = numpy_helper.to_array(weights[w_name]).astype(np.float32)
        w_scale = np.maximum(np.abs(w).max(0), 1e-12) / 127
        wq, ws = name("wq"), name("ws")
        inits.append(numpy_helper.from_array(np.clip(np.round(w / w_scale), -127, 127).astype(np.int8), wq))
        inits.append(numpy_helper.from_array(w_scale.astype(np.float32), ws))
        a, m, me, s, d, r, ru, q, y, yf, y1 = (name(k) for k in "a m me s d r ru q y yf y1".split())
        return [helper.make_node("Abs", [x], [a]),
                helper.make_node("ReduceMax", [a], [m], axes=[-1], keepdims=1),
                helper.make_node("Max", [m, "pt_eps"], [me]),
                helper.make_node("Div", [me, "pt_127"], [s]),
                helper.make_node("Div", [x, s], [d]),
                helper.make_node("Round", [d], [r]),
                helper.make_node("Add", [r, "pt_128"], [ru]),
                helper.make_node("Cast", [ru], [q], to=TensorProto.UINT8),
                helper.make_node("MatMulInteger", [q, wq, "pt_zp"], [y]),
                helper.make_node("Cast", [y], [yf], to=TensorProto.FLOAT),
                helper.make_node("Mul", [yf, s], [y1]),
                helper.make_node("Mul", [y1, ws], [out])]

    for n in graph.node:
        if n.op_type == "MatMul" and n.input[1] in weights and n.name not in skip:
            nodes += qmatmul(n.input[0], n.input[1], n.output[0])
        elif n.op_type == "Attention":
            heads = next(a.i for a in n.attribute if a.name == "num_heads")
            width = numpy_helper.to_array(weights[n.input[1]]).shape[1] // 3
            qkv, split, q, k, v = name("qkv"), name("split"), name("q"), name("k"), name("v")
            nodes += qmatmul(n.input[0], n.input[1], qkv)
            inits.append(numpy_helper.from_array(np.array([width] * 3, np.int64), split))
            nodes.append(helper.make_node("Split", [qkv, split], [q, k, v], axis=-1))
            nodes.append(helper.make_node("MultiHeadAttention", [q, k, v, n.input[2], n.input[3]],
                                          list(n.output), domain="com.microsoft", num_heads=heads))
        else:
            nodes.append(n)
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    kept = [i for i in list(graph.initializer) + inits if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.save(model, str(dst))


def entry_with(fp32_entry, model_path, folder):
    """A cache-entry-shaped folder around `model_path` that the runtime batches (per_window off)."""
    folder.mkdir()
    for f in fp32_entry.iterdir():
        if f.name != "model.onnx":
            shutil.copy(f, folder / f.name)
    shutil.move(str(model_path), folder / "model.onnx")
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "per_window": False}))
    return folder


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--windows", type=int, default=0, help="0 = every msgs100u window")
    ap.add_argument("--model_dir", default=None)
    args = ap.parse_args()
    import onnxruntime as ort

    from bertfeat.exporter import agreement_feeds, export, ffn_output_matmuls, int8, smooth_activations
    from bertfeat.models import read_manifest
    from bertfeat.runtime import Encoder
    cache = args.model_dir or tempfile.mkdtemp()
    work = Path(tempfile.mkdtemp())
    fp32 = export(MODEL, "fp32", None, cache)
    manifest = read_manifest(fp32)
    layers = list(range(manifest["depth"]))
    groups, _, _ = windows_by_group(str(work), DEFAULT_CSV, 0, cache)
    windows = [w for ws in groups.values() for w in ws]
    if args.windows:
        windows = windows[::max(1, len(windows) // args.windows)][:args.windows]
    tokens = sum(len(w[0]) for w in windows)
    print(f"# CPU: {cpu_isa()}; onnxruntime {ort.__version__}; {len(windows)} msgs100u windows,"
          f" {tokens} real tokens")
    ref = Encoder(fp32).run(windows, layers)
    print("\n| variant | calls | real tok/s (layer 4) | vs fp32 | " +
          " | ".join(f"L{k} min cos" for k in layers) + " | batched = alone |")
    print("|---|---|---|---|" + "---|" * len(layers) + "---|")
    rows = [("fp32", "batched", fp32), ("int8 0.3 (shipped)", "per window", export(MODEL, "int8", None, cache))]
    src = fp32 / "model.onnx"
    keep = ffn_output_matmuls(src)
    smoothed = smooth_activations(src, work / "smoothed.onnx",
                                  agreement_feeds(fp32 / "tokenizer.json", manifest["inputs"], manifest["depth"],
                                                  manifest["max_positions"]), alpha=0.75, skip=keep)
    for label, source, skip, fused in (
            ("per-token, all quantized", src, (), False),
            ("per-token, FFN outputs fp32", src, keep, False),
            ("per-token, smooth 0.75 + FFN outputs fp32", smoothed, keep, False),
            ("per-token fused ops, all quantized", src, (), True),
            ("per-token fused ops, smooth 0.75, all quantized", smoothed, (), True),
            ("per-token fused ops, smooth 0.75 + FFN outputs fp32", smoothed, keep, True)):
        if fused:  # the same arithmetic in fewer ops: what bertfeat ships (exporter/int8.py)
            int8.per_token_int8(source, work / "pt.onnx", skip, weight_bits=8)
        else:
            per_token_int8(source, work / "pt.onnx", skip)
        rows.append((label, "batched", entry_with(fp32, work / "pt.onnx", work / f"e{len(rows)}")))
    base = None
    for label, calls, entry in rows:
        enc = Encoder(entry)
        enc.run(windows[:50], [4])
        t = time.perf_counter()
        enc.run(windows, [4])
        rate = tokens / (time.perf_counter() - t)
        base = base or rate
        got = enc.run(windows, layers)
        worst = np.ones(len(layers))
        for r, g in zip(ref, got):
            a, b = r.mean(1), g.mean(1)
            worst = np.minimum(worst, (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1))
        alone = Encoder(entry, batch_tokens=1)
        same = max(float(np.abs(alone.run([w], layers)[0] - g).max()) for w, g in zip(windows[:40], got))
        print(f"| {label} | {calls} | {rate:,.0f} | {rate / base:.2f}x | " +
              " | ".join(f"{c:.4f}" for c in worst) + f" | max diff {same:.1e} |", flush=True)
        del got


if __name__ == "__main__":
    sys.exit(main())
