"""Export a Hugging Face encoder to ONNX once (the only module that imports torch).

The exported graph takes input_ids, attention_mask (and token_type_ids when the model has
them) plus `layers` (0-based block indices) and returns `hidden_states` [len(layers), batch,
tokens, hidden]: the chosen outputs of transformer blocks 1..depth, picked inside the graph so
that only they leave it (on CUDA, only they cross to the host). A run asks for the depth it
needs (its deepest layer), so no block past it runs.
Each export is validated against the PyTorch model on real sentences before it enters the cache.
"""
import contextlib
import fcntl
import functools
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from ..version import __version__
from ..errors import BertfeatError
from ..models import (FAMILIES, INT8_PAYS, MANIFEST, MIN_COSINE, cosine, OFFLINE_PACKAGES, OPSET, canonical_name,
                      check_precision, config_layers, entry_is_intact, file_sha256, fingerprint,
                      model_dir, read_manifest, safe_dir_name)
from ..models import locate as _locate
from ..progress import notice
from ..runtime import int8_dot_is_exact
from . import int8
from .int8 import ffn_output_matmuls, smooth_activations  # noqa: F401 (bench scripts use them)

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model",
                   "tokenizer.model")
TOLERANCE = 1e-4  # max |onnx - torch| / max(1, max |torch|) on the validation windows
VALIDATION_TEXT = [
    "Mr. Smith arrived at 5 p.m. on Jan. 3rd!", "Did he?",
    "I have been a member of the site for quite a while now and am pleased to say so.",
    "The weather was lovely, so we walked to the lake and back before lunch.",
    "lol that was the best show ever :)", "Honestly, I don't know what to think about it anymore.",
    "Short.", "We finally painted the kitchen, and it looks great in the morning light.",
]
# Reduced precision is checked on more, and more varied, windows: informal posts are where int8
# activation outliers show (each consecutive pair is one window, as SPEC §3 builds them).
AGREEMENT_TEXT = VALIDATION_TEXT + [
    "OMG!!! u guys will NOT believe what happened at work today... my boss actually said thank you :O",
    "Anyway, back to the point: the meeting ran three hours over, nobody took notes, and we decided"
    " exactly nothing, which is pretty much how every Tuesday goes around here.",
    "I've been listening to the same album on repeat since 2004 & I'm not even sorry.",
    "http://www.example.com/blog/2004/07/30/entry.html <- read this first, then come back.",
    "Grocery list: eggs, milk, 2 lbs of apples, coffee (the good kind), and more coffee.",
    "My grandmother turned 93 yesterday; she still beats everyone at cards and refuses to retire"
    " from her volunteer job at the library, where she has worked every Thursday since 1961.",
    "Why does it always rain on the one day I forget my umbrella?? seriously.",
    "Quote of the day: \"Be yourself; everyone else is already taken.\" -- Oscar Wilde",
    "The new policy (effective Monday, 8 a.m.) requires all staff to sign in at the front desk.",
    "Blah blah blah. Whatever. I'm going to bed.",
    "We drove 450 miles in one day, stopped twice for gas, once for pie, and saw exactly one moose.",
    "In chapter 3 the author argues that memory is reconstructive rather than reproductive, which"
    " explains why eyewitness accounts so often disagree on the small details.",
    "haha yes!! see you at 7 :-) bring the dog",
    "Ugh, the code compiled on the first try and now I am deeply suspicious of everything.",
    "Posted by Anna at 11:42 PM | 3 comments | Labels: life, work, cats",
    "Dear diary, today I learned that you should never microwave a fork. Never. Ever.",
]
# Short posts are where int8 agrees least: in a window of a few pieces the special tokens' large
# activations set the one activation scale, and they weigh most in the token mean (the worst
# msgs100u windows are 7-13 pieces). These run as pairs and alone, as one-sentence messages do.
# Punctuation-only sentences (". . ." splits into "." sentences) make windows of one or two word
# pieces among four special tokens, where int8 can fail outright: all-mpnet-base-v2's
# "<s> . </s></s> . </s>" measured cosine 0.32 to fp32 at layer 8 with a graph whose other
# windows all agreed to >= 0.995.
SHORT_TEXT = [".", ".", "!", "?", "...", "-", ":)", "what?!", "Wow.", "ok", "Nope!!", "hmm...", "seriously?",
              "yay :)", "Thanks!", "no way.", "LOL", "Good night, all.", "ugh."]


def available():
    """True where exports can be made (torch installed: pip install 'bertfeat[export]')."""
    import importlib.util
    return importlib.util.find_spec("torch") is not None


def locate(name, depth, precision="fp32", root=None, verify=False):
    """models.locate, exporting when no cached entry fits and torch is here."""
    return _locate(name, depth, precision, root, verify, export=export if available() else None)


def resolve_source(name):
    """A local folder holding the HF model `name`: local dir, HF cache (offline), package, download."""
    name = canonical_name(name)
    if os.path.isdir(name):
        if not os.path.isfile(os.path.join(name, "config.json")):
            raise BertfeatError(f"{name} has no config.json: not a Hugging Face model folder")
        return name
    if name in OFFLINE_PACKAGES:
        try:
            module = __import__(OFFLINE_PACKAGES[name])
            return str(module.get_model_path())
        except ImportError:
            pass
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, RepositoryNotFoundError
    from huggingface_hub.utils import validate_repo_id
    try:
        validate_repo_id(name)
    except HFValidationError as e:
        if name.startswith((".", "/", "~")) or os.sep in name:
            raise BertfeatError(f"model folder not found: {name} (a model is a Hugging Face id such as"
                                " sentence-transformers/all-MiniLM-L6-v2, or a folder with config.json)") from e
        raise BertfeatError(f"{name!r} is neither a model folder here nor a valid Hugging Face model id"
                            " (such as sentence-transformers/all-MiniLM-L6-v2): check the spelling") from e
    patterns = ["*.json", "*.txt", "*.model", "*.safetensors", "*.bin"]
    try:
        return snapshot_download(name, local_files_only=True, allow_patterns=patterns)
    except Exception:
        pass
    try:
        return snapshot_download(name, allow_patterns=patterns)
    except RepositoryNotFoundError as e:
        raise BertfeatError(f"no model {name!r} on the Hugging Face hub, and no such folder here: check the"
                            " spelling") from e
    except Exception as e:
        raise BertfeatError(
            f"model {name!r} is not in the local Hugging Face cache and the hub cannot be reached"
            f" ({type(e).__name__}); pass a local model directory to --bert_model, or run"
            " `bertfeat --export_model NAME` on a connected machine and copy its models/ folder here") from e


def _version(module):
    try:
        return __import__(module).__version__
    except ImportError:
        return None


@contextlib.contextmanager
def _quiet():
    """transformers' and torch's notices off while exporting, restored after (the caller's
    process keeps its own logging and warning settings)."""
    import warnings

    import transformers
    from transformers.utils import logging as hf_logging
    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"(torch|transformers)\..*")
            yield
    finally:
        transformers.logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _load(src, depth):
    """The PyTorch model cut to `depth` blocks and its fast tokenizer (the architecture was
    checked by models.config_layers)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    config = AutoConfig.from_pretrained(src)
    n_layers = config.num_hidden_layers
    depth = n_layers if depth is None else depth
    if not 1 <= depth <= n_layers:
        raise BertfeatError(f"depth {depth} out of range: the model has {n_layers} layers")
    config.num_hidden_layers = depth  # build only the blocks a run needs
    if not any((Path(src) / f).exists() for f in TOKENIZER_FILES):
        raise BertfeatError(f"{src} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...):"
                            " copy the model's tokenizer into that folder")
    try:
        tokenizer = AutoTokenizer.from_pretrained(src, use_fast=True)
    except Exception as e:
        raise BertfeatError(f"{src}: cannot load its tokenizer ({type(e).__name__}: {e})") from e
    if not getattr(tokenizer, "is_fast", False):
        raise BertfeatError(f"{src}: no fast (tokenizers) tokenizer available for this model")
    model = AutoModel.from_pretrained(src, config=config, attn_implementation="eager").eval()
    return model, tokenizer, n_layers, depth


def _max_positions(config):
    """Usable positions: RoBERTa-style models reserve pad_token_id + 1 of theirs."""
    max_pos = config.max_position_embeddings
    if config.model_type in ("roberta", "xlm-roberta", "camembert", "mpnet"):
        max_pos -= (config.pad_token_id or 0) + 1
    return int(max_pos)


def _validation_batch(tokenizer, input_names, depth):
    pairs = [(VALIDATION_TEXT[i], VALIDATION_TEXT[i + 1]) for i in range(0, len(VALIDATION_TEXT) - 1)]
    enc = tokenizer([a for a, _ in pairs], [b for _, b in pairs], padding=True, return_tensors="np")
    ids = enc["input_ids"].astype(np.int64)
    batch = {k: (enc[k].astype(np.int64) if k in enc else np.zeros_like(ids)) for k in input_names}
    return {**batch, "layers": np.arange(depth, dtype=np.int64)}


def _cache_entry(final, force, build):
    """Return the intact cache entry `final`, building it first when missing or corrupted.

    `build(tmp)` writes model.onnx and tokenizer.json into a temporary folder and returns the
    manifest; the folder is renamed into place only when complete (a half-written export is
    never seen), under a per-model lock (two processes never export the same model at once).
    """
    base = final.parent
    base.mkdir(parents=True, exist_ok=True)
    with open(base / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.is_dir() and not force and entry_is_intact(final):
            return final
        if final.is_dir():
            notice(f"cache entry {final} " + ("is made again (forced)" if force else
                                               "is incomplete or corrupted: exporting it again"))
            shutil.rmtree(final)
        started = time.perf_counter()
        notice(f"exporting {base.name} to ONNX once, into {final} ...")
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=base))
        try:
            manifest = build(tmp)
            manifest.update(files={f: file_sha256(tmp / f) for f in ("model.onnx", "tokenizer.json")},
                            created=time.time(), export_seconds=round(time.perf_counter() - started, 1))
            with open(tmp / MANIFEST, "w") as f:
                json.dump(manifest, f, indent=1)
            os.rename(tmp, final)
            weak = [f"L{k} {cosine(c)}" for k, c in enumerate(manifest.get("fp32_layer_cosine", []))
                    if c < manifest.get("min_cosine", MIN_COSINE)]
            agreement = (f"min window cosine to fp32 {cosine(manifest['fp32_min_window_cosine'])}"
                         + (f"; runs asking for {', '.join(weak)} (< {MIN_COSINE}) are refused" if weak else "")
                         if manifest["precision"] != "fp32" else
                         f"max difference to PyTorch {manifest['validation_max_error']:.1e}")
            notice(f"exported {manifest['name']} (depth {manifest['depth']}, {manifest['precision']}) in"
                   f" {manifest['export_seconds']} s; {agreement}")
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final


def export(name, precision="fp32", depth=None, root=None, force=False):
    """Export `name` (up to block `depth`) into the cache and return the entry's folder."""
    if check_precision(precision) != "fp32":
        return (export_int8 if precision == "int8" else export_fp16)(name, depth, root, force)
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise BertfeatError("exporting a model needs torch: pip install 'bertfeat[export]'"
                            " (or copy an exported models/ folder from another machine)") from e
    name = canonical_name(name)
    src = resolve_source(name)
    n_layers = config_layers(src)
    depth = n_layers if depth is None else depth
    final = model_dir(root) / safe_dir_name(name) / fingerprint(src, depth, precision, root)
    # an entry made again (corrupted, or forced) keeps its graph, so it is the same file as before
    previous = (read_manifest(final) or {}).get("optimizations") if final.is_dir() else None

    def build(tmp):
        return _build_fp32(name, src, depth, tmp, final.name, previous)
    return _cache_entry(final, force, build)


def _build_fp32(name, src, depth, tmp, key, previous=None):
    """model.onnx (validated against PyTorch) and tokenizer.json into `tmp`; returns the manifest.
    `previous`: the optimizations of the entry this one replaces (its graph choice is kept).

    PyTorch runs in a child process of its own (`_traced`), which exits before ONNX Runtime
    loads the graph: its ~1 GB (libraries, the model's weights, the tracer's copies) is never
    held beside the sessions'; the fusion has a child process of its own (`_fuse`). The export's
    peak is the PyTorch child's (all-mpnet-base-v2: 4.75 -> 2.2 GB, bench/README.md "Base-size models")."""
    import subprocess
    import sys
    code = "import sys; from bertfeat.exporter import _traced_main; sys.exit(_traced_main(*sys.argv[1:]))"
    rc = subprocess.run([sys.executable, "-c", code, src, str(depth), str(tmp)], stdin=subprocess.DEVNULL).returncode
    if (tmp / "traced.error").exists():
        raise BertfeatError((tmp / "traced.error").read_text())
    if rc != 0:
        raise BertfeatError(f"exporting {name}: its PyTorch step failed (exit status {rc}"
                            f"{', killed: out of memory?' if rc < 0 else ''}; its error is above)")
    with open(tmp / "traced.json") as f:
        traced = json.load(f)
    with np.load(tmp / "traced.npz") as arrays:
        traced.update(reference=arrays["reference"], batch={k[6:]: arrays[k] for k in arrays if k.startswith("batch_")})
    for f in ("traced.json", "traced.npz"):
        (tmp / f).unlink()
    from types import SimpleNamespace
    config = SimpleNamespace(**traced.pop("config"))
    chosen, err, optimizations = _best_graph(tmp, traced.pop("batch"), traced.pop("reference"), config, name,
                                             previous)
    os.replace(chosen, tmp / "model.onnx")
    for leftover in (tmp / "raw.onnx", tmp / "fused.onnx"):
        if leftover.exists():
            leftover.unlink()
    return {"name": name, "source": os.path.abspath(src), "fingerprint": key,
            "model_type": config.model_type, "layers": traced["layers"], "depth": depth,
            "hidden_size": config.hidden_size, "num_heads": config.num_attention_heads,
            "max_positions": traced["max_positions"],
            "inputs": traced["inputs"], "pad_id": traced["pad_id"], "opset": OPSET,
            "precision": "fp32", "optimizations": optimizations, "validation_max_error": float(err),
            "bertfeat_version": __version__, "torch_version": traced["torch_version"],
            "transformers_version": traced["transformers_version"], "onnxruntime_version": _version("onnxruntime")}


def _traced_main(src, depth, tmp):
    """The export's PyTorch process: raw.onnx and tokenizer.json into `tmp`, and what the rest of
    the export needs: traced.json (graph inputs, config) and traced.npz (the validation batch and
    PyTorch's output on it). A BertfeatError's line goes to traced.error; returns the exit status."""
    import torch
    tmp = Path(tmp)
    try:
        with _quiet():
            model, tokenizer, layers, _ = _load(src, int(depth))
            graph_inputs, batch, reference = _trace(model, tokenizer, int(depth), tmp / "raw.onnx")
    except BertfeatError as e:
        (tmp / "traced.error").write_text(str(e))
        return 2
    tokenizer.backend_tokenizer.save(str(tmp / "tokenizer.json"))
    c = model.config
    np.savez(tmp / "traced.npz", reference=reference, **{f"batch_{k}": v for k, v in batch.items()})
    with open(tmp / "traced.json", "w") as f:
        json.dump({"inputs": graph_inputs, "layers": layers,
                   "config": {"model_type": c.model_type, "hidden_size": c.hidden_size,
                              "num_attention_heads": getattr(c, "num_attention_heads", 0)},
                   "max_positions": _max_positions(c), "pad_id": int(tokenizer.pad_token_id or 0),
                   "torch_version": torch.__version__, "transformers_version": _version("transformers")}, f)
    return 0


def _release_memory():
    """Hand freed memory back to the OS: a base-size model's PyTorch weights and the fusion's
    ONNX protobufs are ~0.5 GB each, and glibc keeps freed blocks in the process otherwise
    (bench/README.md "Base-size models": what a base-size export peaks at)."""
    import ctypes
    import gc
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def _trace(model, tokenizer, depth, raw):
    """The model as ONNX at `raw`, returning the chosen blocks' hidden states (a `layers` input
    picks them inside the graph); returns (graph inputs, validation batch, PyTorch's output)."""
    import inspect
    import warnings

    import torch
    input_names = ["input_ids", "attention_mask"]
    if "token_type_ids" in inspect.signature(model.forward).parameters:
        input_names.append("token_type_ids")
    graph_inputs = input_names + ["layers"]

    class Stacked(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            out = self.model(**dict(zip(input_names, inputs[:-1])), output_hidden_states=True)
            return torch.index_select(torch.stack(out.hidden_states[1:], 0), 0, inputs[-1])

    wrapper = Stacked(model).eval()
    batch = _validation_batch(tokenizer, input_names, depth)
    with torch.no_grad():  # reference first: tracing can leave the eager model altered
        reference = wrapper(*[torch.from_numpy(batch[k]) for k in graph_inputs]).numpy()
    dummy = tuple(torch.from_numpy(batch[k][:2, :9].copy()) for k in input_names)
    dummy += (torch.arange(min(2, depth)),)
    axes = {k: {0: "batch", 1: "tokens"} for k in input_names}
    axes.update(layers={0: "layers"}, hidden_states={0: "layers", 1: "batch", 2: "tokens"})
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript exporter deprecation and tracer notes
        torch.onnx.export(wrapper, dummy, str(raw), input_names=graph_inputs,
                          output_names=["hidden_states"], dynamic_axes=axes,
                          opset_version=OPSET, dynamo=False)
    return graph_inputs, batch, reference


FASTER_BY = 1.05  # the plain graph is kept instead of the fused one only when this much faster here
MIN_TIMED_S = 0.02  # below this per timing round, a model is too small to tell the graphs apart


def _best_graph(tmp, batch, reference, config, name, previous=None):
    """The graph to keep, (path, max error, optimizations applied): ONNX Runtime's transformer
    fusions when they keep it within TOLERANCE of PyTorch, unless the plain graph runs faster on
    this CPU (timed here: the fused graph was 4% faster on an AVX2 AMD EPYC, the plain one 22%
    faster on an Intel Xeon with AMX; bench/DECISIONS.md). Not timed: a model too small to
    time (fused kept) and an entry made again (`previous` choice kept). int8 and fp16 start from
    the graph their recipe names (`Recipe.graph`: the fused one, `_fused_source`, or the kept one)."""
    raw = tmp / "raw.onnx"
    chosen, err, optimizations = raw, _validate(raw, batch, reference), []
    fused = _fuse(raw, tmp / "fused.onnx", config)
    if fused is not None:
        fused_err = _validate(fused, batch, reference)
        if fused_err > TOLERANCE:
            notice(f"fused graph differs by {fused_err:.2e}: keeping the unfused export")
        else:
            if previous is not None:  # made again: the same graph as before
                plain = [o for o in previous if o.startswith("plain-graph-")]
            else:
                plain_s, fused_s = _seconds([raw, fused], batch)
                plain = ([f"plain-graph-{fused_s / plain_s:.2f}x-faster-here"]
                         if fused_s >= MIN_TIMED_S and plain_s * FASTER_BY <= fused_s else [])
                if plain:
                    notice(f"keeping the unfused graph: {fused_s / plain_s:.2f}x as fast as ONNX Runtime's"
                           " fused one on this CPU")
            if plain:
                optimizations = plain
            else:
                chosen, err, optimizations = fused, fused_err, ["ort-transformers-fusion"]
    if err > TOLERANCE:
        raise BertfeatError(f"export of {name} failed validation: ONNX differs from PyTorch by"
                            f" {err:.2e} (> {TOLERANCE}); please report this model")
    return chosen, err, optimizations


def _seconds(paths, batch, rounds=7, budget_s=6.0, per_window=None):
    """Best-of-`rounds` seconds of each graph (rounds alternate between them, so a slow spell of
    the machine hits all; past `budget_s` seconds, 2 timed rounds are enough: a round of two
    base-size graphs takes ~4 s on 2 cores and of two bert-large ones ~15 s, where 4 rounds took
    74 of a 142 s export) on batches shaped like bertfeat's: 1024 tokens of windows of 16 and of
    64 pieces (msgs100u's windows average 43), ids from `batch`, the deepest layer. A graph
    marked in `per_window` runs a window per call."""
    import onnxruntime as ort

    from ..runtime import physical_cores
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = physical_cores(), 1
    sessions = [ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for p in paths]
    ids = batch["input_ids"][batch["attention_mask"] > 0]
    feeds = []
    for width in (16, 64):
        rows = 1024 // width
        tiled = np.resize(ids, rows * width).reshape(rows, width).astype(np.int64)
        feeds.append({"input_ids": tiled, "attention_mask": np.ones_like(tiled), "token_type_ids": np.zeros_like(tiled),
                      "layers": batch["layers"][-1:]})
    names = [{i.name for i in s.get_inputs()} for s in sessions]
    best = [float("inf")] * len(sessions)
    started_all = time.perf_counter()
    for r in range(rounds + 1):  # round 0 warms up
        if r > 2 and time.perf_counter() - started_all > budget_s:
            break
        for k, s in enumerate(sessions):
            started = time.perf_counter()
            for feed in feeds:
                if per_window and per_window[k]:  # such a graph runs one window per call
                    for row in range(len(feed["input_ids"])):
                        s.run(["hidden_states"], {n: feed[n][row:row + 1] if n != "layers" else feed[n]
                                                  for n in names[k]})
                else:
                    s.run(["hidden_states"], {n: feed[n] for n in names[k]})
            if r:
                best[k] = min(best[k], time.perf_counter() - started)
    return best


def _fused_source(fp32_entry, manifest, target):
    """(graph, its optimizations): the fp32 export's fused graph, what int8 and fp16 are made
    from: model.onnx itself, or, when the plain graph was kept for speed, the same fusions applied
    again (the fused graph was validated at export)."""
    optimizations = manifest.get("optimizations", [])
    if any(o.startswith("plain-graph-") for o in optimizations):
        from types import SimpleNamespace
        config = SimpleNamespace(num_attention_heads=manifest["num_heads"], hidden_size=manifest["hidden_size"])
        if _fuse(fp32_entry / "model.onnx", target, config):
            return target, ["ort-transformers-fusion"]
    return fp32_entry / "model.onnx", optimizations


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
    and gated (models.usable_layers)."""
    def calibrated(recipe):
        def run(source, target, fp32_entry):
            m = read_manifest(fp32_entry)
            feeds = agreement_feeds(fp32_entry / "tokenizer.json", m["inputs"], m["depth"], m["max_positions"])
            if not recipe.searched:
                return recipe.convert(source, target, feeds)

            def agrees(path):
                per_layer, _ = _agreement(fp32_entry, path, m, "int8")
                return min(per_layer) >= MIN_COSINE + SEARCH_MARGIN, per_layer
            return recipe.convert(source, target, feeds, agrees)
        return run
    recipes = [r._replace(convert=calibrated(r)) for r in int8_recipes()]
    return _derive(name, "int8", depth, root, force, recipes)


def agreement_feeds(tokenizer_path, input_names, depth, max_positions=512, word_pieces=False):
    """Input dicts of the agreement windows (one window each, cut to the model's positions),
    for calibration and checks; with `word_pieces`, (input dict, bool mask of the window's word
    pieces: not the template's <s>/</s>/[CLS]/[SEP]) pairs."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(tokenizer_path))
    tok.no_padding()
    tok.enable_truncation(max_length=max_positions)
    out = []
    pairs = list(zip(AGREEMENT_TEXT, AGREEMENT_TEXT[1:])) + list(zip(SHORT_TEXT, SHORT_TEXT[1:]))
    for a, b in pairs + [(t, None) for t in SHORT_TEXT]:
        enc = tok.encode(a, b) if b is not None else tok.encode(a)
        feeds = {"input_ids": np.array([enc.ids]), "attention_mask": np.ones((1, len(enc.ids)), np.int64),
                 "token_type_ids": np.array([enc.type_ids]), "layers": np.arange(depth)}
        feeds = {k: feeds[k] for k in input_names}
        out.append((feeds, np.array(enc.special_tokens_mask) == 0) if word_pieces else feeds)
    return out


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
    return _derive(name, "fp16", depth, root, force, [Recipe("fp16", convert)])


def _derive(name, precision, depth, root, force, recipes):
    """A reduced-precision cache entry made from the fp32 export by the first of `recipes`
    (`Recipe`s) that agrees with fp32 on every layer, else by the one that agrees on the most
    layers. Agreement is measured per layer on this machine (window cosine, see `_agreement`)
    and recorded; runs asking for a layer below MIN_COSINE are refused (jobs/add_bert.py), and an export
    whose first layer is already below it is not kept."""
    fp32_entry = export(name, "fp32", depth, root, force)
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
                fused = fused or _fused_source(fp32_entry, fp32, tmp / "fused.onnx")
                source, optimizations = fused
            else:
                source, optimizations = fp32_entry / "model.onnx", fp32["optimizations"]
            (tmp / recipe.label).mkdir()
            record = recipe.convert(source, tmp / recipe.label / "model.onnx", fp32_entry) or {}
            per_layer, provider = _agreement(fp32_entry, tmp / recipe.label / "model.onnx", fp32, precision)
            tried[recipe.label] = (per_layer, provider, recipe, optimizations, record)
            if min(per_layer) >= MIN_COSINE:
                break
        label = max(tried, key=lambda k: (sum(c >= MIN_COSINE for c in tried[k][0]), min(tried[k][0])))
        per_layer, provider, recipe, optimizations, record = tried[label]
        fp32_s, own_s = _seconds([fp32_entry / "model.onnx", tmp / label / "model.onnx"],
                                 _timing_batch(fp32_entry, fp32), per_window=(False, recipe.per_window))
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
                "fp32_min_window_cosine": _recorded(min(per_layer)), "fp32_layer_cosine": _recorded(per_layer),
                "recipes_tried": {k: _recorded(v[0]) for k, v in tried.items()},
                "min_cosine": MIN_COSINE, "agreement_provider": provider, "speedup_vs_fp32": speedup,
                **recipe.extra, **record}

    return _cache_entry(final, force, build)


AGREEMENT_METRIC = "word-piece-mean"  # what `_agreement` compares (it was every token's mean before 0.4)


def _recorded(cosines):
    """Cosines as the manifest keeps them: 6 digits, rounded down (a recorded value never
    passes the gate where the measured one did not)."""
    if isinstance(cosines, list):
        return [_recorded(c) for c in cosines]
    return math.floor(cosines * 1e6) / 1e6


def _timing_batch(fp32_entry, manifest):
    """A batch for `_seconds` from the agreement windows' pieces, the export's deepest layer."""
    feeds = agreement_feeds(fp32_entry / "tokenizer.json", manifest["inputs"], manifest["depth"],
                            manifest["max_positions"])
    ids = np.concatenate([f["input_ids"][0] for f in feeds])[None]
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "layers": np.arange(manifest["depth"])}


def _agreement(fp32_entry, path, manifest, precision):
    """Per layer, the smallest cosine over the agreement windows of `path` vs fp32 word-piece-mean
    vectors, and the provider it was measured on (CUDA for fp16 when there). Word pieces only, as
    a message's vector is made: the template's special tokens carry very large activations in
    some models' later layers (all-mpnet-base-v2's), which made a mean over every token agree
    to 0.995 where the words' vectors agreed to 0.92 on real posts."""
    import onnxruntime as ort
    provider = ("CUDAExecutionProvider" if precision == "fp16" and
                "CUDAExecutionProvider" in ort.get_available_providers() else "CPUExecutionProvider")
    feeds = agreement_feeds(fp32_entry / "tokenizer.json", manifest["inputs"], manifest["depth"],
                            manifest["max_positions"], word_pieces=True)
    model = fp32_entry / "model.onnx"
    refs = _token_means(str(model), model.stat().st_mtime_ns, provider, feeds)
    got = _token_means(str(path), None, provider, feeds)
    refs, got = refs.astype(np.float64), got.astype(np.float64)  # float32 cosines resolve only ~1e-7
    cos = (refs * got).sum(-1) / np.linalg.norm(refs, axis=-1) / np.linalg.norm(got, axis=-1)  # [windows, layers]
    return [float(c) for c in cos.min(0)], provider


_FP32_MEANS = {}  # the fp32 export's token means, computed once per export (a search measures many graphs)


def _token_means(path, stamp, provider, feeds):
    """[windows, layers, hidden]: each window's word-piece-mean vector per layer (`feeds`: (input
    dict, word-piece mask) pairs); cached by `stamp` (the fp32 graph's mtime) when given."""
    key = (path, stamp, provider)
    if stamp is not None and key in _FP32_MEANS:
        return _FP32_MEANS[key]
    import onnxruntime as ort
    session = ort.InferenceSession(path, providers=[provider])
    out = np.stack([session.run(["hidden_states"], f)[0][:, 0, mask].mean(1) for f, mask in feeds])
    if stamp is not None:
        _FP32_MEANS.clear()
        _FP32_MEANS[key] = out
    return out


def _validate(path, batch, reference):
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(["hidden_states"], {i.name: batch[i.name] for i in sess.get_inputs()})[0]
    real = batch["attention_mask"].astype(bool)
    diff = np.abs(out - reference)[:, real].max()
    del sess
    _release_memory()
    return float(diff / max(1.0, np.abs(reference[:, real]).max()))


def _fuse(raw, target, config):
    """ONNX Runtime's transformer fusions (attention, LayerNorm, GELU) of `raw` into `target`;
    None when they do not apply. They run in a child process (`_fuse_main`), so what the fusion
    leaves behind in the heap is never held beside the sessions that time and validate the graph.

    opt_level=0: the Python fusions alone, without ONNX Runtime's basic graph pass first (a
    session that holds the weights while it writes a second copy). The same fused ops on BERT
    and MPNet, only a few Constant nodes more, which a session folds when it loads: the outputs
    are bitwise those of opt_level=1 (bench/README.md "Base-size models")."""
    import subprocess
    import sys
    target = Path(target)
    heads = getattr(config, "num_attention_heads", 0)
    code = "import sys; from bertfeat.exporter import _fuse_main; sys.exit(_fuse_main(*sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", code, str(Path(raw).resolve()), target.name, str(heads),
                           str(config.hidden_size)], cwd=target.parent, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True)
    if done.returncode != 0 or not target.exists():
        why = (done.stdout.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        notice(f"transformer fusions not applied ({why})")
        return None
    return target


FUSION_WEIGHTS = "fusion.weights"  # the fusion child's copy of the weights, beside its target


def _fuse_main(raw, target, heads, hidden_size):
    """The fusion's process, run in the target's folder: the graph goes through the fusions with
    its weights left on disk (an external-data copy in FUSION_WEIGHTS, read back only where a
    fusion needs the values: the attention's Q, K and V), so symbolic shape inference's copies of
    the model hold no weights. The weights are read back for the one-file `target`, bitwise the
    graph the fusions make from the loaded model (all-mpnet-base-v2: peak 2.8 -> 1.0 GB, 10 -> 6 s).
    A failure's one line goes to stdout; returns the exit status."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model
    weightless = target + ".weightless"
    try:
        onnx.save(onnx.load(raw), weightless, save_as_external_data=True, all_tensors_to_one_file=True,
                  location=FUSION_WEIGHTS, size_threshold=1024)
        _release_memory()
        from onnxruntime.transformers.optimizer import optimize_model
        fused = optimize_model(onnx.load(weightless, load_external_data=False), model_type="bert",
                               num_heads=int(heads), hidden_size=int(hidden_size), opt_level=0)
        load_external_data_for_model(fused.model, ".")
        for tensor in fused.model.graph.initializer:  # as if never external: the same bytes
            tensor.ClearField("data_location")
        fused.save_model_to_file(target)
    except Exception as e:  # fusion is an optimization: the caller falls back to the plain graph
        print(f"{type(e).__name__}: {e}".splitlines()[0])
        return 1
    finally:
        for leftover in (weightless, FUSION_WEIGHTS):
            if os.path.exists(leftover):
                os.unlink(leftover)
    return 0


def list_models(root=None, verify=False):
    """[(name, entry dir, manifest, size in bytes, intact)] for every cache entry.

    `verify=True` re-hashes every file (see models.entry_is_intact)."""
    out = []
    base = model_dir(root)
    if not base.is_dir():
        return out
    for model_folder in sorted(p for p in base.iterdir() if p.is_dir()):
        for entry in sorted(p for p in model_folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            manifest = read_manifest(entry)
            size = sum(f.stat().st_size for f in entry.iterdir() if f.is_file())
            out.append((manifest["name"] if manifest else model_folder.name, entry, manifest, size,
                        entry_is_intact(entry, manifest, full=verify)))
    return out


__all__ = ["export", "resolve_source", "list_models", "FAMILIES"]
