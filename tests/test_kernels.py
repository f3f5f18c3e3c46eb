"""The numba reductions as pure functions, held against numpy in float64."""
import numpy as np
import pytest

from bertfeat.aggregate import AGGREGATIONS
from bertfeat.aggregate.kernels import message_vectors, sentence_vectors

pytestmark = pytest.mark.unit

NUMPY = {"mean": np.mean, "median": np.median, "max": np.max, "min": np.min, "sum": np.sum, "std": np.std}


@pytest.mark.parametrize("layer_aggs", [["concatenate"], ["mean"], ["std", "concatenate", "median"]])
@pytest.mark.parametrize("word_aggs", [["mean"], list(AGGREGATIONS)])
def test_sentence_vectors_match_numpy(layer_aggs, word_aggs):
    rng = np.random.default_rng(3)
    tokens = rng.normal(size=(11, 3, 5)).astype(np.float32)  # 11 tokens, 3 layers, H = 5
    offsets = [0, 1, 5, 11]  # sentences of 1, 4 and 6 tokens
    got = sentence_vectors(tokens, offsets, layer_aggs, word_aggs)
    t64 = tokens.astype(np.float64)
    for s in range(3):
        per_token = np.concatenate([t64[offsets[s]:offsets[s + 1]].reshape(-1, 15) if a == "concatenate"
                                    else NUMPY[a](t64[offsets[s]:offsets[s + 1]], axis=1) for a in layer_aggs], 1)
        want = np.concatenate([NUMPY[a](per_token, axis=0) for a in word_aggs])
        np.testing.assert_allclose(got[s], want, rtol=1e-12, atol=1e-12)


def test_concatenate_order_is_layer_major():
    tokens = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)  # dimension j of layer k -> k*H + j
    got = sentence_vectors(tokens, [0, 1], ["concatenate"], ["sum"])
    np.testing.assert_array_equal(got[0], tokens[0].reshape(-1))


def test_message_vectors_are_means_of_sentences():
    x = np.arange(12.0).reshape(6, 2)
    got = message_vectors(x, [0, 2, 3, 6])
    np.testing.assert_allclose(got, [x[0:2].mean(0), x[2:3].mean(0), x[3:6].mean(0)])
