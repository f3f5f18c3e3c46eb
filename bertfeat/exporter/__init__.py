"""Export a Hugging Face encoder to ONNX once (the only package that imports torch).

The exported graph takes input_ids, attention_mask (and token_type_ids when the model has
them) plus `layers` (0-based block indices) and returns `hidden_states` [len(layers), batch,
tokens, hidden]: the chosen outputs of transformer blocks 1..depth, picked inside the graph so
that only they leave it (on CUDA, only they cross to the host). A run asks for the depth it
needs (its deepest layer), so no block past it runs.
Each export is validated against the PyTorch model on real sentences before it enters the cache.

One module per step: `source` (find and load the model), `trace` (PyTorch -> ONNX, the fp32
export), `validate` (against PyTorch; reduced precision against fp32), `graph` (fused or plain,
timed), `derive` (int8 and fp16 from fp32; `int8` holds the quantization recipes). The cache
entry itself (locked, atomic, fingerprinted) is models.cache_entry.
"""
from ..models import check_precision
from ..models import locate as _locate
from .derive import agreement_feeds, export_fp16, export_int8, int8_recipes
from .source import resolve_source
from .trace import export_fp32


def available():
    """True where exports can be made (torch installed: pip install 'bertfeat[export]')."""
    import importlib.util
    return importlib.util.find_spec("torch") is not None


def locate(name, depth, precision="fp32", root=None, verify=False):
    """models.locate, exporting when no cached entry fits and torch is here."""
    return _locate(name, depth, precision, root, verify, export=export if available() else None)


def export(name, precision="fp32", depth=None, root=None, force=False):
    """Export `name` (up to block `depth`) into the cache and return the entry's folder."""
    if check_precision(precision) == "int8":
        return export_int8(name, depth, root, force)
    if precision == "fp16":
        return export_fp16(name, depth, root, force)
    return export_fp32(name, depth, root, force)


__all__ = ["available", "locate", "export", "export_fp32", "export_int8", "export_fp16", "resolve_source",
           "int8_recipes", "agreement_feeds"]
