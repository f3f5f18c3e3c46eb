"""PyTorch -> ONNX: the fp32 export. The model is traced in a child process of its own
(`traced_main`), with every block's hidden states and a `layers` input that picks them in the graph."""
import json
import os
from pathlib import Path

import numpy as np

from ..errors import BertfeatError
from ..models import (OPSET, cache_entry, canonical_name, config_layers, fingerprint, model_dir, read_manifest,
                      safe_dir_name)
from ..version import __version__
from .graph import best_graph
from .source import load, max_positions, quiet, resolve_source, version_of
from .validate import VALIDATION_TEXT


def export_fp32(name, depth=None, root=None, force=False):
    """Export `name` in fp32 (up to block `depth`) into the cache and return the entry's folder:
    traced by PyTorch in a child process, validated against it, the faster valid graph kept."""
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise BertfeatError("exporting a model needs torch: pip install 'bertfeat[export]'"
                            " (or copy an exported models/ folder from another machine)") from e
    name = canonical_name(name)
    src = resolve_source(name)
    n_layers = config_layers(src)
    depth = n_layers if depth is None else depth
    final = model_dir(root) / safe_dir_name(name) / fingerprint(src, depth, "fp32", root)
    # an entry made again (corrupted, or forced) keeps its graph, so it is the same file as before
    previous = (read_manifest(final) or {}).get("optimizations") if final.is_dir() else None

    def build(tmp):
        return build_fp32(name, src, depth, tmp, final.name, previous)
    return cache_entry(final, force, build)


def build_fp32(name, src, depth, tmp, key, previous=None):
    """model.onnx (validated against PyTorch) and tokenizer.json into `tmp`; returns the manifest.
    `previous`: the optimizations of the entry this one replaces (its graph choice is kept).

    PyTorch runs in a child process of its own (`traced_main`), which exits before ONNX Runtime
    loads the graph: its ~1 GB (libraries, the model's weights, the tracer's copies) is never
    held beside the sessions'; the fusion has a child process of its own (`fuse`). The export's
    peak is the PyTorch child's (all-mpnet-base-v2: 4.75 -> 2.2 GB, bench/LOG.md "Base-size models")."""
    import subprocess
    import sys
    code = "import sys; from bertfeat.exporter.trace import traced_main; sys.exit(traced_main(*sys.argv[1:]))"
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
    chosen, err, optimizations = best_graph(tmp, traced.pop("batch"), traced.pop("reference"), config, name,
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
            "transformers_version": traced["transformers_version"], "onnxruntime_version": version_of("onnxruntime")}


def traced_main(src, depth, tmp):
    """The export's PyTorch process: raw.onnx and tokenizer.json into `tmp`, and what the rest of
    the export needs: traced.json (graph inputs, config) and traced.npz (the validation batch and
    PyTorch's output on it). A BertfeatError's line goes to traced.error; returns the exit status."""
    import torch
    tmp = Path(tmp)
    try:
        with quiet():
            model, tokenizer, layers, _ = load(src, int(depth))
            graph_inputs, batch, reference = trace(model, tokenizer, int(depth), tmp / "raw.onnx")
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
                   "max_positions": max_positions(c), "pad_id": int(tokenizer.pad_token_id or 0),
                   "torch_version": torch.__version__, "transformers_version": version_of("transformers")}, f)
    return 0


def trace(model, tokenizer, depth, raw):
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
    batch = validation_batch(tokenizer, input_names, depth)
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


def validation_batch(tokenizer, input_names, depth):
    pairs = [(VALIDATION_TEXT[i], VALIDATION_TEXT[i + 1]) for i in range(0, len(VALIDATION_TEXT) - 1)]
    enc = tokenizer([a for a, _ in pairs], [b for _, b in pairs], padding=True, return_tensors="np")
    ids = enc["input_ids"].astype(np.int64)
    batch = {k: (enc[k].astype(np.int64) if k in enc else np.zeros_like(ids)) for k in input_names}
    return {**batch, "layers": np.arange(depth, dtype=np.int64)}
