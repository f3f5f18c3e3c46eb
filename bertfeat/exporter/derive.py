"""int8 and fp16 exports, derived from the fp32 one: recipes tried in order, each gated per layer
on its agreement with fp32 on this machine, the result timed against fp32 and recorded."""
import functools
import hashlib
import json
import os
import shutil
from typing import Callable, NamedTuple

import numpy as np

from ..errors import BertfeatError
from ..models import INT8_PAYS, MIN_COSINE, cache_entry, cosine, fingerprint, read_manifest
from ..progress import notice
from ..runtime import int8_dot_is_exact
from . import int8
from .graph import fused_source, seconds
from .source import resolve_source
from .trace import export_fp32
from .validate import AGREEMENT_METRIC, AGREEMENT_TEXT, SHORT_TEXT, agreement, agreement_feeds, recorded


class Recipe(NamedTuple):
    """A reduced-precision recipe: its cache-key label, `convert(graph, target, fp32 entry)`,
    whether the result runs one window per call, manifest extras, and which fp32 graph it starts
    from: "fused" (ONNX Runtime's fusions) or "kept" (the graph the fp32 export kept)."""
    label: str
    convert: Callable
    per_window: bool = False
    extra: dict = {}
    graph: str = "fused"
    searched: bool = False  # convert(..., agrees) keeps MatMuls fp32 until every layer agrees


def int8_recipes():
    """The int8 recipes (exporter/int8.py), convert(graph, target, calibration feeds), tried in
    this order at export, the first that agrees with fp32 on every layer of the export kept.
    Where this CPU's u8 x s8 sums cannot saturate (VNNI, AMX): per token with 8-bit weights, every
    MatMul int8 (batched; 2.0x fp32 on the EPYC of bench/README.md) except the fewest, most
    damaging first, that every layer needs in fp32 (`int8.per_token_mixed`: none on
    all-MiniLM-L6-v2 at depth 5). Elsewhere: per window (one window per call, FFN outputs fp32,
    7-bit weights), then per token with 7-bit weights and the same search (no pair of u8 x s8
    products can saturate 16 bits). Per token starts from the graph the fp32 export kept, per
    window from the fused one."""
    every = f"smoothquant{int8.SMOOTH_ALPHA}-ffn-output-{int8.FFN_OUTPUT_ALPHA}-shifted-fewest-fp32"
    if int8_dot_is_exact():
        return [Recipe(f"int8-per-token-8bit-weights-{every}",
                       functools.partial(int8.per_token_mixed, weight_bits=8),
                       extra={"needs_int8_dot": True}, graph="kept", searched=True)]
    return [Recipe(f"dynamic-int8-per-window-7bit-weights-smoothquant{int8.SMOOTH_ALPHA}-ffn-output-fp32-agreement2",
                   int8.per_window, per_window=True),
            Recipe(f"int8-per-token-7bit-weights-{every}", functools.partial(int8.per_token_mixed, weight_bits=7),
                   graph="kept", searched=True)]


SEARCH_MARGIN = 0.001  # the search stops at the gate + this on the built-in windows: unseen text needs room
# (all-MiniLM-L6-v2 with 7-bit weights: 0.9957 at the gate, 0.99497 on real msgs100u windows)


def export_int8(name, depth=None, root=None, force=False):
    """int8 from the fp32 export: per-channel weights after SmoothQuant-style scale migration,
    activations quantized per token (batched) or per window (one window per call), by the first
    of `int8_recipes()` that agrees with fp32 on every layer of this export on this machine.
    Agreement is measured per layer at export (AGREEMENT_TEXT and SHORT_TEXT windows), recorded,
    and gated (models.Manifest.usable_layers)."""
    def calibrated(recipe):
        def run(source, target, fp32_entry):
            m = read_manifest(fp32_entry)
            feeds = agreement_feeds(fp32_entry / "tokenizer.json", m["inputs"], m["depth"], m["max_positions"])
            if not recipe.searched:
                return recipe.convert(source, target, feeds)

            def agrees(path):
                per_layer, _ = agreement(fp32_entry, path, m, "int8")
                return min(per_layer) >= MIN_COSINE + SEARCH_MARGIN, per_layer
            return recipe.convert(source, target, feeds, agrees)
        return run
    recipes = [r._replace(convert=calibrated(r)) for r in int8_recipes()]
    return derive(name, "int8", depth, root, force, recipes)


def export_fp16(name, depth=None, root=None, force=False):
    """fp16 from the fp32 export, for CUDA: weights and activations in half precision, inputs
    and the `hidden_states` output kept int64/fp32 (so the graph casts on the device).

    The fused ops (Attention, SkipLayerNormalization, ...) are converted by ONNX Runtime's own
    transformer converter. On a CPU the graph still runs (ONNX Runtime computes unsupported
    half-precision ops in fp32 between casts), so the export and its agreement check work on a
    machine without a GPU; the check runs on CUDA when the provider is there.
    """
    def convert(fp32_model, target, fp32_entry):
        import onnx
        from onnxruntime.transformers.onnx_model import OnnxModel
        model = OnnxModel(onnx.load(str(fp32_model)))
        model.convert_float_to_float16(keep_io_types=True)
        model.save_model_to_file(str(target))
    return derive(name, "fp16", depth, root, force, [Recipe("fp16", convert)])


def derive(name, precision, depth, root, force, recipes):
    """A reduced-precision cache entry made from the fp32 export by the first of `recipes`
    (`Recipe`s) that agrees with fp32 on every layer, else by the one that agrees on the most
    layers. Agreement is measured per layer on this machine (window cosine, see `agreement`)
    and recorded; runs asking for a layer below MIN_COSINE are refused (jobs/add_bert.py), and an export
    whose first layer is already below it is not kept."""
    fp32_entry = export_fp32(name, depth, root, force)
    fp32 = read_manifest(fp32_entry)
    src = fp32["source"] if os.path.isdir(fp32["source"]) else resolve_source(name)
    # the recipes are part of the key: a changed quantization never reuses an old entry
    # and so are the gate's metric and windows (the calibration's too): an entry gated on other
    # windows, or on every token's mean, is not reused
    labels = "|".join(r.label for r in recipes)
    gate = json.dumps([AGREEMENT_METRIC, SEARCH_MARGIN, AGREEMENT_TEXT, SHORT_TEXT])
    gate = hashlib.sha256(gate.encode()).hexdigest()[:12]
    final = fp32_entry.parent / fingerprint(src, fp32["depth"], f"{precision}:{gate}:{labels}", root)

    def build(tmp):
        tried = {}
        fused = None
        for recipe in recipes:
            if recipe.graph == "fused":
                fused = fused or fused_source(fp32_entry, fp32, tmp / "fused.onnx")
                source, optimizations = fused
            else:
                source, optimizations = fp32_entry / "model.onnx", fp32["optimizations"]
            (tmp / recipe.label).mkdir()
            record = recipe.convert(source, tmp / recipe.label / "model.onnx", fp32_entry) or {}
            per_layer, provider = agreement(fp32_entry, tmp / recipe.label / "model.onnx", fp32, precision)
            tried[recipe.label] = (per_layer, provider, recipe, optimizations, record)
            if min(per_layer) >= MIN_COSINE:
                break
        label = max(tried, key=lambda k: (sum(c >= MIN_COSINE for c in tried[k][0]), min(tried[k][0])))
        per_layer, provider, recipe, optimizations, record = tried[label]
        fp32_s, own_s = seconds([fp32_entry / "model.onnx", tmp / label / "model.onnx"],
                                 timing_batch(fp32_entry, fp32), per_window=(False, recipe.per_window))
        speedup = round(fp32_s / own_s, 2)
        if precision == "int8" and speedup < INT8_PAYS:
            notice(f"int8 runs at {speedup}x fp32's speed on this CPU (measured now): no faster; --precision fp32"
                   " gives exact features at about the same speed")
        if len(tried) > 1:
            first = next(iter(tried))
            weak = ", ".join(f"L{k} {cosine(c)}" for k, c in enumerate(tried[first][0]) if c < MIN_COSINE)
            notice(f"{precision} recipe {first.split('-smooth')[0]} agrees with fp32 below {MIN_COSINE} here on"
                   f" {weak}; " + (f"using {label.split('-smooth')[0]} instead (min {cosine(min(per_layer))})"
                                   if label != first else "no other recipe does better"))
        if per_layer[0] < MIN_COSINE:
            raise BertfeatError(f"{precision} export of {name} agrees with fp32 only to cosine"
                                f" {per_layer[0]:.4f} on its first layer (< {MIN_COSINE}); use"
                                " --precision fp32 for this model")
        os.replace(tmp / label / "model.onnx", tmp / "model.onnx")
        for folder in tried:
            shutil.rmtree(tmp / folder)
        if fused and fused[0].parent == tmp:
            fused[0].unlink()
        shutil.copy(fp32_entry / "tokenizer.json", tmp / "tokenizer.json")
        return {**fp32, "fingerprint": final.name, "precision": precision, "per_window": recipe.per_window,
                "optimizations": optimizations + [label],
                "fp32_min_window_cosine": recorded(min(per_layer)), "fp32_layer_cosine": recorded(per_layer),
                "recipes_tried": {k: recorded(v[0]) for k, v in tried.items()},
                "min_cosine": MIN_COSINE, "agreement_provider": provider, "speedup_vs_fp32": speedup,
                **recipe.extra, **record}

    return cache_entry(final, force, build)


def timing_batch(fp32_entry, manifest):
    """A batch for `seconds` from the agreement windows' pieces, the export's deepest layer."""
    feeds = agreement_feeds(fp32_entry / "tokenizer.json", manifest["inputs"], manifest["depth"],
                            manifest["max_positions"])
    ids = np.concatenate([f["input_ids"][0] for f in feeds])[None]
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "layers": np.arange(manifest["depth"])}
