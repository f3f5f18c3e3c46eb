"""Writes tests/data/int8_gemm_*.onnx, the three one-op graphs test_int8_gemm.py runs (made once
with onnx, kept as files so that the test needs ONNX Runtime alone, as a run on a machine without
torch or onnx does): `python tests/make_int8_gemm_graphs.py`."""
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

K, N = 64, 16


def graph(w, w_zero):
    g = helper.make_graph(
        [helper.make_node("MatMulIntegerToFloat", ["a", "w", "one", "one", "a_zero", "w_zero"], ["y"],
                          domain="com.microsoft")],
        "gemm", [helper.make_tensor_value_info("a", TensorProto.UINT8, [None, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, N])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.float32(1), "one"),
         numpy_helper.from_array(np.uint8(128), "a_zero"), numpy_helper.from_array(w_zero, "w_zero")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model.SerializeToString()


if __name__ == "__main__":
    data = Path(__file__).resolve().parent / "data"
    for name, w, zero in (("u8", np.full((K, N), 255, np.uint8), np.uint8(128)),
                          ("s8", np.full((K, N), 127, np.int8), np.int8(0)),
                          ("s7", np.full((K, N), 63, np.int8), np.int8(0))):
        (data / f"int8_gemm_{name}.onnx").write_bytes(graph(w, zero))
