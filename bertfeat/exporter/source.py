"""The model an export starts from: its Hugging Face folder found (local, HF cache, offline
package, hub) and loaded with PyTorch, cut to the blocks a run needs."""
import contextlib
import os
from pathlib import Path

from ..errors import BertfeatError
from ..models import OFFLINE_PACKAGES, canonical_name


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model",
                   "tokenizer.model")


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


def version_of(module):
    try:
        return __import__(module).__version__
    except ImportError:
        return None


@contextlib.contextmanager
def quiet():
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


def load(src, depth):
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


def max_positions(config):
    """Usable positions: RoBERTa-style models reserve pad_token_id + 1 of theirs."""
    max_pos = config.max_position_embeddings
    if config.model_type in ("roberta", "xlm-roberta", "camembert", "mpnet"):
        max_pos -= (config.pad_token_id or 0) + 1
    return int(max_pos)
