"""What shapes a feature table (SPEC §3), and how a run computes it: each declared once, in one
frozen object validated at the door (`BertSettings`, `RunConfig`).

    settings = BertSettings(model="sentence-transformers/all-MiniLM-L6-v2", layers=(-2,))
    settings = settings.for_model(n_layers=6)   # layers resolved: (4,)
    settings.feature_name()                     # 'all_Mi_L6_v2_meL4co'

Every rule that does not need the model is checked when the object is made; the layer range
once the model's depth is known (`for_model`). The feature name, the table name and the stage
key derive from it, so two runs with equal settings always meet in the same table and stage.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

from .aggregate import (ABBR, AGGREGATIONS, DEFAULT_LAYER_AGGREGATION, DEFAULT_MSG_AGGREGATION,
                        DEFAULT_WORD_AGGREGATION, LAYER_AGGREGATIONS)
from .errors import DEVICES, BertfeatError, param, unknown_device
from .models import canonical_name, check_precision, layer_out_of_range, short_name
from .tables import MAX_NAME

DEFAULT_MODEL = "base-uncased"  # DLATK's default (bert-base-uncased)


@dataclass(frozen=True)
class BertSettings:
    model: str = DEFAULT_MODEL
    layers: tuple[int, ...] | None = None  # 0-based blocks, negatives from the end; None = the second-to-last
    layer_aggregation: tuple[str, ...] = DEFAULT_LAYER_AGGREGATION
    word_aggregation: tuple[str, ...] = DEFAULT_WORD_AGGREGATION
    msg_aggregation: tuple[str, ...] = DEFAULT_MSG_AGGREGATION
    no_context: bool = False
    precision: str = "fp32"
    dlatk_compat: bool = False  # DLATK 1.3.15's token positions (text/windows.dlatk_plan), not SPEC §3's
    tokenizer: str | None = None  # another model's tokenizer (DLATK's --tokenizer_model); None = the model's own

    def __post_init__(self):
        if not self.model or not isinstance(self.model, str):
            raise BertfeatError(f"{param('--bert_model')} needs a Hugging Face id or a local directory")
        set_ = object.__setattr__.__get__(self)
        set_("model", canonical_name(self.model))
        for field, flag, allowed, default in (
                ("layer_aggregation", "--bert_layer_aggregation", LAYER_AGGREGATIONS, DEFAULT_LAYER_AGGREGATION),
                ("word_aggregation", "--bert_word_aggregation", AGGREGATIONS, DEFAULT_WORD_AGGREGATION),
                ("msg_aggregation", "--bert_msg_aggregation", AGGREGATIONS, DEFAULT_MSG_AGGREGATION)):
            set_(field, _aggregations(getattr(self, field), flag, allowed, default))
        if self.layers is not None and len(self.layers) == 0:
            set_("layers", None)
        if self.layers is not None:
            set_("layers", tuple(_integer(k) for k in self.layers))
        check_precision(self.precision)
        set_("no_context", bool(self.no_context))
        set_("dlatk_compat", bool(self.dlatk_compat))
        if self.tokenizer is not None:
            if not isinstance(self.tokenizer, str) or not self.tokenizer.strip():
                raise BertfeatError(f"{param('--bert_tokenizer_model')} needs a local folder or a Hugging Face id")
            set_("tokenizer", canonical_name(self.tokenizer))
            if self.tokenizer == self.model:
                set_("tokenizer", None)
        if self.dlatk_compat and self.no_context:
            raise BertfeatError(f"{param('--dlatk_compat')} reproduces DLATK's context mode only: leave out"
                                f" {param('--bert_no_context')} or {param('--dlatk_compat')}")

    @classmethod
    def from_flags(cls, bert_model: str = DEFAULT_MODEL, bert_layers=None, bert_layer_aggregation=None,
                   bert_word_aggregation=None, bert_msg_aggregation=None, bert_no_context: bool = False,
                   precision: str = "fp32", dlatk_compat: bool = False,
                   bert_tokenizer_model: str | None = None) -> BertSettings:
        """From the flag-named keywords of the CLI and the API (None = the default)."""
        return cls(bert_model, bert_layers, bert_layer_aggregation, bert_word_aggregation, bert_msg_aggregation,
                   bert_no_context, precision, dlatk_compat, bert_tokenizer_model)

    def for_model(self, n_layers: int) -> BertSettings:
        """The same settings with the layers resolved for a model of `n_layers` blocks: SPEC §3,
        0 = the first block's output, negatives from the end; deduplicated and sorted."""
        layers = self.layers or (n_layers - 2 if n_layers > 1 else 0,)
        for k in layers:
            if not -n_layers <= k < n_layers:
                raise layer_out_of_range(k, n_layers)
        return replace(self, layers=tuple(sorted({k % n_layers for k in layers})))

    @property
    def depth(self) -> int:
        """Blocks a run needs: up to the deepest layer asked for (after `for_model`)."""
        return max(self.layers) + 1

    def feature_name(self, per_message: bool = False) -> str:
        """SPEC §3 featname; `per_message` gives the message-level table's (no message
        aggregation). Reduced precision appends `_int8` / `_fp16`, so it never overwrites the
        fp32 table of the same settings."""
        name = short_name(self.model) + "_" + ("noc_" if self.no_context else "")
        name += "".join(ABBR[a] for a in ([] if per_message else self.msg_aggregation))
        name += "".join(f"L{k}" for k in self.layers) + "".join(ABBR[a] for a in self.layer_aggregation)
        if self.word_aggregation != DEFAULT_WORD_AGGREGATION:
            name += "w" + "".join(ABBR[a] for a in self.word_aggregation)
        if self.precision != "fp32":
            name += f"_{self.precision}"
        if self.dlatk_compat:
            name += "_dlatk"
        if self.tokenizer:
            name += "_tok_" + short_name(self.tokenizer)
        return name

    def table_name(self, table: str, correl: str, per_message: bool = False) -> str:
        return table_name(self.feature_name(per_message), table, correl)

    def stage_key(self, manifest: dict, id_type: str, tokenizer_sha256: str | None = None) -> dict:
        """What a staged message vector depends on: the model export (its fingerprint and the
        graph's content hash, so vectors from any other file, a corrupted one included, are
        never reused), the message-id type, and every setting up to the message vector (the
        message aggregation is applied later, from the stage)."""
        return {"model": self.model, "fingerprint": manifest.fingerprint,
                "model_sha256": manifest.files["model.onnx"], "id_type": id_type,
                "precision": self.precision, "layers": self.layers,
                "layer_aggregation": self.layer_aggregation, "word_aggregation": self.word_aggregation,
                "no_context": self.no_context, **({"dlatk_compat": True} if self.dlatk_compat else {}),
                **({"tokenizer": self.tokenizer, "tokenizer_sha256": tokenizer_sha256} if self.tokenizer else {})}


@dataclass(frozen=True)
class RunConfig:
    """How a run computes, never what it writes (that is `BertSettings`): any of these gives the
    same table. Validated when made; the job resolves `device` ('auto') once it knows the precision.

    device: 'cpu', 'cuda' or 'auto'; threads: ONNX Runtime threads per session (default: the
    physical cores); batch_tokens: padded tokens per inference batch (default
    runtime.DEFAULT_BATCH_TOKENS); chunk_messages: messages read, embedded and staged together;
    ray: 'local', 'auto' or host:port of a Ray cluster (None: this process); workers: Ray actors.
    """
    device: str = "cpu"
    threads: int | None = None
    batch_tokens: int | None = None
    chunk_messages: int = 256
    ray: str | None = None
    workers: int | None = None

    def __post_init__(self):
        for flag, value in (("--threads", self.threads), ("--batch_tokens", self.batch_tokens),
                            ("--chunk_messages", self.chunk_messages), ("--workers", self.workers)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise BertfeatError(f"{param(flag)} must be a positive whole number (got {value!r}); leave it"
                                    " out for the default")
        if self.device not in DEVICES:
            raise unknown_device(self.device)
        if self.workers is not None and self.ray is None:
            raise BertfeatError(f"{param('--workers')} is the number of Ray workers: it needs"
                                f" {param('--ray', 'local')}")


def run_table_name(kind, featname, table, correl=None, max_len=MAX_NAME):
    """`<kind>$<featname>$<table>[$<correl>]` (the token and word-type tables), shortened
    deterministically past `max_len` as feature table names are."""
    tail = f"${table}" + (f"${correl}" if correl else "")
    full = f"{kind}${featname}{tail}"
    if len(full) <= max_len:
        return full
    digest = hashlib.sha1(full.encode()).hexdigest()[:8]
    keep = max_len - len(tail) - len(kind) - 1 - 9
    if keep < 4:
        return f"{kind}${featname[:max(4, max_len - len(kind) - 10)]}_{digest}"[:max_len]
    return f"{kind}${featname[:keep]}_{digest}{tail}"


def table_name(featname, table, correl, max_len=MAX_NAME):
    """`feat$<featname>$<table>$<correl>$16to16`, shortened deterministically past `max_len`."""
    full = f"feat${featname}${table}${correl}$16to16"
    if len(full) <= max_len:
        return full
    digest = hashlib.sha1(full.encode()).hexdigest()[:8]
    tail = f"${table}${correl}$16to16"
    keep = max_len - len(tail) - len("feat$") - 9
    if keep < 4:
        tail = f"${digest}$16to16"
        keep = max_len - len(tail) - len("feat$")
        return f"feat${featname[:keep]}{tail}"
    return f"feat${featname[:keep]}_{digest}{tail}"


def _aggregations(values, flag, allowed, default):
    values = tuple([values] if isinstance(values, str) else values or default)
    for v in values:
        if v not in allowed:
            hint = " (concatenate is for layers only)" if v == "concatenate" else ""
            raise BertfeatError(f"unknown {param(flag)} {v!r}{hint}: choose from {', '.join(allowed)}")
    if len(set(values)) != len(values):
        raise BertfeatError(f"{param(flag)} lists an aggregation twice: {' '.join(values)}")
    return values


def _integer(layer):
    try:
        if not isinstance(layer, bool):
            return int(layer)
    except (TypeError, ValueError):
        pass
    raise BertfeatError(f"{param('--bert_layers')} takes integers, not {layer!r}")
