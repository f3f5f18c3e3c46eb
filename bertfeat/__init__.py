"""bertfeat: DLATK-compatible contextual-embedding features, exported once to ONNX and run fast."""
__version__ = "0.3.0"  # the package version (pyproject reads it) and part of every export fingerprint

from .api import (add_bert, add_sent_tokenized, export_model, feature_matrix, import_csv,  # noqa: E402
                  list_models, show_feature_tables, write_parquet)
from .errors import BertfeatError  # noqa: E402
from .predict import nfold_test  # noqa: E402  (scikit-learn is imported when it runs)

__all__ = ["__version__", "BertfeatError", "import_csv", "add_sent_tokenized", "show_feature_tables",
           "add_bert", "feature_matrix", "write_parquet", "nfold_test", "export_model", "list_models"]
