"""numba kernels for SPEC §3's reductions over flat arrays (float64 math, compiled once and cached).

Imported only when vectors are computed, so re-aggregating staged vectors never loads numba.
"""
import numpy as np
from numba import njit

from . import CODES


@njit(cache=True)
def _reduce(x, code, out):
    """Reduce rows of x [n, d] into out [d] with aggregation `code` (index into LAYER_AGGREGATIONS)."""
    n, d = x.shape
    for j in range(d):
        if code == 0 or code == 4 or code == 5:  # mean, sum, std
            s = 0.0
            for i in range(n):
                s += x[i, j]
            if code == 4:
                out[j] = s
                continue
            m = s / n
            if code == 0:
                out[j] = m
                continue
            v = 0.0
            for i in range(n):
                v += (x[i, j] - m) * (x[i, j] - m)
            out[j] = np.sqrt(v / n)
        elif code == 1:
            out[j] = np.median(x[:, j].copy())
        elif code == 2:
            out[j] = x[:, j].max()
        else:
            out[j] = x[:, j].min()


@njit(cache=True)
def _token_width(layer_codes, n_layers, hidden):
    d_tok = 0
    for c in layer_codes:
        d_tok += n_layers * hidden if c == 6 else hidden
    return d_tok


@njit(cache=True)
def _layer_reduce(layers, layer_codes, n_layers, hidden, out):
    """One token's layers [L, H] (float64) -> out [D_tok], the layer aggregations side by side."""
    col = 0
    for c in layer_codes:
        if c == 6:  # concatenate: dimension j of layer k -> k*H + j
            for k in range(n_layers):
                out[col:col + hidden] = layers[k]
                col += hidden
        else:
            _reduce(layers, c, out[col:col + hidden])
            col += hidden


@njit(cache=True)
def _sentence_vectors(tokens, offsets, layer_codes, word_codes, n_layers, hidden):
    n_sent = len(offsets) - 1
    d_tok = _token_width(layer_codes, n_layers, hidden)
    d_sent = d_tok * len(word_codes)
    out = np.empty((n_sent, d_sent))
    for s in range(n_sent):
        a, b = offsets[s], offsets[s + 1]
        tok = np.empty((b - a, d_tok))
        for t in range(a, b):
            _layer_reduce(tokens[t].astype(np.float64), layer_codes, n_layers, hidden, tok[t - a])
        col = 0
        for c in word_codes:
            _reduce(tok, c, out[s, col:col + d_tok])
            col += d_tok
    return out


@njit(cache=True)
def _token_vectors(tokens, layer_codes, n_layers, hidden):
    out = np.empty((tokens.shape[0], _token_width(layer_codes, n_layers, hidden)))
    for t in range(tokens.shape[0]):
        _layer_reduce(tokens[t].astype(np.float64), layer_codes, n_layers, hidden, out[t])
    return out


def token_vectors(tokens, layer_aggregation):
    """tokens [N, L, H] -> each token's vector after layer aggregation [N, D_tok] (float64): the
    rows a sentence's word aggregation reduces (`sentence_vectors`), kept (--bert_keep_tokens)."""
    tokens = np.ascontiguousarray(tokens, dtype=np.float32)
    layer_codes = np.array([CODES[a] for a in layer_aggregation], np.int64)
    return _token_vectors(tokens, layer_codes, tokens.shape[1], tokens.shape[2])


def sentence_vectors(tokens, offsets, layer_aggregation, word_aggregation):
    """tokens [N, L, H] of all sentences back to back, offsets [S+1] -> sentence vectors [S, D]."""
    tokens = np.ascontiguousarray(tokens, dtype=np.float32)
    layer_codes = np.array([CODES[a] for a in layer_aggregation], np.int64)
    word_codes = np.array([CODES[a] for a in word_aggregation], np.int64)
    return _sentence_vectors(tokens, np.asarray(offsets, np.int64), layer_codes, word_codes,
                             tokens.shape[1], tokens.shape[2])


@njit(cache=True)
def _segment_mean(x, offsets):
    out = np.zeros((len(offsets) - 1, x.shape[1]))
    for m in range(len(offsets) - 1):
        a, b = offsets[m], offsets[m + 1]
        for i in range(a, b):
            out[m] += x[i]
        out[m] /= b - a
    return out


def message_vectors(sentence_vecs, offsets):
    """Mean of each message's sentence vectors; offsets [M+1] index into sentence_vecs."""
    return _segment_mean(np.ascontiguousarray(sentence_vecs, dtype=np.float64),
                         np.asarray(offsets, np.int64))
