"""bertfeat: DLATK-compatible contextual-embedding features, exported once to ONNX and run fast."""
__version__ = "0.1.0"

from .api import add_sent_tokenized, import_csv, show_feature_tables  # noqa: E402
from .errors import BertfeatError  # noqa: E402

__all__ = ["__version__", "BertfeatError", "import_csv", "add_sent_tokenized", "show_feature_tables"]
