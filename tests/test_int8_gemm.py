"""How ONNX Runtime's int8 GEMM sums on this CPU, which the int8 recipes rest on. Needs ONNX
Runtime alone (the graphs are files, tests/make_int8_gemm_graphs.py made them): it runs on the
installs without torch that run int8 exports made elsewhere."""
import numpy as np
import pytest

from helpers import DATA

pytestmark = pytest.mark.unit


def _gemm(name):
    import onnxruntime as ort
    sess = ort.InferenceSession(str(DATA / f"int8_gemm_{name}.onnx"), providers=["CPUExecutionProvider"])
    return sess.run(None, {"a": np.full((4, 64), 255, np.uint8)})[0]  # every u8 activation at the top


def test_int8_gemm_sums_are_exact_where_the_recipes_assume_so():
    """u8 x u8 exactly everywhere (widened to 16 bits), u8 x s8 exactly only with VNNI or AMX
    (elsewhere products are added in pairs into 16 bits and saturate), 7-bit weights exactly
    everywhere. Checked with the largest products a per-token GEMM can meet: activations 255
    (zero point 128), every weight at the top of its range, 64 of them per sum."""
    from bertfeat.runtime import int8_dot_is_exact
    k = 64
    assert (_gemm("u8") == (255 - 128) * 127 * k).all()
    assert (_gemm("s8") == (255 - 128) * 127 * k).all() == int8_dot_is_exact()
    assert (_gemm("s7") == (255 - 128) * 63 * k).all()
