"""The graph an export keeps: ONNX Runtime's transformer fusions (run in a child process) or the
plain traced graph, chosen by validation and by timing on this CPU (`seconds`)."""
import os
import time
from pathlib import Path

import numpy as np

from ..errors import BertfeatError
from ..progress import notice
from .validate import TOLERANCE, release_memory, validate


FASTER_BY = 1.05  # the plain graph is kept instead of the fused one only when this much faster here


MIN_TIMED_S = 0.02  # below this per timing round, a model is too small to tell the graphs apart


def best_graph(tmp, batch, reference, config, name, previous=None):
    """The graph to keep, (path, max error, optimizations applied): ONNX Runtime's transformer
    fusions when they keep it within TOLERANCE of PyTorch, unless the plain graph runs faster on
    this CPU (timed here: the fused graph was 4% faster on an AVX2 AMD EPYC, the plain one 22%
    faster on an Intel Xeon with AMX; bench/DECISIONS.md). Not timed: a model too small to
    time (fused kept) and an entry made again (`previous` choice kept). int8 and fp16 start from
    the graph their recipe names (`Recipe.graph`: the fused one, `fused_source`, or the kept one)."""
    raw = tmp / "raw.onnx"
    chosen, err, optimizations = raw, validate(raw, batch, reference), []
    fused = fuse(raw, tmp / "fused.onnx", config)
    if fused is not None:
        fused_err = validate(fused, batch, reference)
        if fused_err > TOLERANCE:
            notice(f"fused graph differs by {fused_err:.2e}: keeping the unfused export")
        else:
            if previous is not None:  # made again: the same graph as before
                plain = [o for o in previous if o.startswith("plain-graph-")]
            else:
                plain_s, fused_s = seconds([raw, fused], batch)
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


def seconds(paths, batch, rounds=7, budget_s=6.0, per_window=None):
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


def fused_source(fp32_entry, manifest, target):
    """(graph, its optimizations): the fp32 export's fused graph, what int8 and fp16 are made
    from: model.onnx itself, or, when the plain graph was kept for speed, the same fusions applied
    again (the fused graph was validated at export)."""
    optimizations = manifest.get("optimizations", [])
    if any(o.startswith("plain-graph-") for o in optimizations):
        from types import SimpleNamespace
        config = SimpleNamespace(num_attention_heads=manifest["num_heads"], hidden_size=manifest["hidden_size"])
        if fuse(fp32_entry / "model.onnx", target, config):
            return target, ["ort-transformers-fusion"]
    return fp32_entry / "model.onnx", optimizations


def fuse(raw, target, config):
    """ONNX Runtime's transformer fusions (attention, LayerNorm, GELU) of `raw` into `target`;
    None when they do not apply. They run in a child process (`fuse_main`), so what the fusion
    leaves behind in the heap is never held beside the sessions that time and validate the graph.

    opt_level=0: the Python fusions alone, without ONNX Runtime's basic graph pass first (a
    session that holds the weights while it writes a second copy). The same fused ops on BERT
    and MPNet, only a few Constant nodes more, which a session folds when it loads: the outputs
    are bitwise those of opt_level=1 (bench/LOG.md "Base-size models")."""
    import subprocess
    import sys
    target = Path(target)
    heads = getattr(config, "num_attention_heads", 0)
    code = "import sys; from bertfeat.exporter.graph import fuse_main; sys.exit(fuse_main(*sys.argv[1:]))"
    done = subprocess.run([sys.executable, "-c", code, str(Path(raw).resolve()), target.name, str(heads),
                           str(config.hidden_size)], cwd=target.parent, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True)
    if done.returncode != 0 or not target.exists():
        why = (done.stdout.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        notice(f"transformer fusions not applied ({why})")
        return None
    return target


FUSION_WEIGHTS = "fusion.weights"  # the fusion child's copy of the weights, beside its target


def fuse_main(raw, target, heads, hidden_size):
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
        release_memory()
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
