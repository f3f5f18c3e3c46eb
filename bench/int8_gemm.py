"""One BERT-sized GEMM through each int8 path ONNX Runtime offers (issue 10).

    .venv/bin/python bench/int8_gemm.py [--tokens 2048]

[tokens, K] x [K, N] for the three shapes of a MiniLM block (384x1536, 1536x384, 384x384), 1 and
2 threads, GOPS (2*M*K*N per second) and the largest error relative to the largest fp32 output:
  fp32                    MatMul (MLAS sgemm)
  dynamic, per tensor     DynamicQuantizeLinear + MatMulIntegerToFloat: one scale for the whole
                          input (what ORT's quantize_dynamic makes; shipped per-window int8)
  per token               x / max|x| per row -> QuantizeLinear -> MatMulIntegerToFloat -> x max
                          (the shipped per-token recipe, exporter/int8.py)
  MatMulNBits 8-bit bB    block-quantized 8-bit weights, accuracy_level 4 (int8 compute, input
                          quantized per row and block of B inside the kernel); needs
                          `pip install onnx-ir` for ORT's quantizer
Weights per output column, 7-bit; a few input channels are 20x larger (as LayerNorm outputs
have), which is what per-tensor scales handle worst.
"""
import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runtime import cpu_isa  # noqa: E402


def graphs(W, bias):
    from onnx import TensorProto as TP
    from onnx import helper as h
    from onnx import numpy_helper as nh
    K, N = W.shape

    def model(nodes, inits):
        g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", TP.FLOAT, ["m", K])],
                         [h.make_tensor_value_info("y", TP.FLOAT, ["m", N])], inits)
        return h.make_model(g, opset_imports=[h.make_opsetid("", 21), h.make_opsetid("com.microsoft", 1)])
    ws = (np.abs(W).max(0) / 63).astype(np.float32)
    w8 = np.clip(np.round(W / ws), -63, 63).astype(np.int8)
    consts = [nh.from_array(w8, "w8"), nh.from_array(ws, "ws"), nh.from_array(bias, "b"),
              nh.from_array(np.array(1 / 127, np.float32), "inv127"), nh.from_array(np.array(128, np.uint8), "zp"),
              nh.from_array(np.array(0, np.int8), "wzp"), nh.from_array(np.array([1], np.int64), "axes"),
              nh.from_array(np.array(1e-12, np.float32), "eps")]
    out = {"fp32": model([h.make_node("MatMul", ["x", "W"], ["t"]), h.make_node("Add", ["t", "b"], ["y"])],
                         [nh.from_array(W, "W"), nh.from_array(bias, "b")]),
           "dynamic, per tensor": model(
               [h.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"]),
                h.make_node("MatMulIntegerToFloat", ["q", "w8", "s", "ws", "z", "wzp", "b"], ["y"],
                            domain="com.microsoft")], consts[:3] + consts[5:6]),
           "per token": model(
               [h.make_node("Abs", ["x"], ["a"]), h.make_node("ReduceMax", ["a", "axes"], ["m"], keepdims=1),
                h.make_node("Max", ["m", "eps"], ["me"]), h.make_node("Div", ["x", "me"], ["u"]),
                h.make_node("QuantizeLinear", ["u", "inv127", "zp"], ["q"]),
                h.make_node("MatMulIntegerToFloat", ["q", "w8", "inv127", "ws", "zp", "wzp"], ["t"],
                            domain="com.microsoft"),
                h.make_node("Mul", ["t", "me"], ["t2"]), h.make_node("Add", ["t2", "b"], ["y"])], consts)}
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    except ImportError:  # onnx-ir missing
        return out
    import onnx
    for block in (32, 128):
        fp32 = onnx.ModelProto()
        fp32.CopyFrom(out["fp32"])  # the quantizer rewrites the model it is given
        q = MatMulNBitsQuantizer(fp32, bits=8, block_size=block, is_symmetric=True, accuracy_level=4)
        q.process()
        out[f"MatMulNBits 8-bit b{block}"] = q.model.model
    return out


def main():
    import logging
    logging.disable(logging.INFO)
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=2048)
    args = ap.parse_args()
    import onnxruntime as ort
    rng = np.random.default_rng(0)
    print(f"# {cpu_isa()}; {os.cpu_count()} CPUs; onnxruntime {ort.__version__}; M = {args.tokens} tokens\n")
    print("| K x N | threads | path | GOPS | vs fp32 | max error (relative) | row alone = in batch |")
    print("|---|---:|---|---:|---:|---:|---|")
    M = args.tokens
    for K, N in ((384, 1536), (1536, 384), (384, 384)):
        W = (rng.standard_normal((K, N)) * 0.05).astype(np.float32)
        bias = (rng.standard_normal(N) * 0.1).astype(np.float32)
        x = rng.standard_normal((M, K)).astype(np.float32)
        x[:, :4] *= 20
        ref = x @ W + bias
        models = graphs(W, bias)
        for threads in (1, 2):
            base = None
            for name, m in models.items():
                so = ort.SessionOptions()
                so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
                s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
                y = s.run(None, {"x": x})[0]
                t, n = time.perf_counter(), 20
                for _ in range(n):
                    s.run(None, {"x": x})
                rate = 2 * M * K * N * n / (time.perf_counter() - t) / 1e9
                base = base or rate
                alone = np.array_equal(s.run(None, {"x": x[7:8]})[0], y[7:8])
                print(f"| {K}x{N} | {threads} | {name} | {rate:,.0f} | {rate / base:.2f}x |"
                      f" {np.abs(y - ref).max() / np.abs(ref).max():.4f} | {'yes' if alone else 'no'} |")


if __name__ == "__main__":
    main()
