"""bertfeat: DLATK-compatible contextual-embedding features, exported once to ONNX and run fast."""
from .version import __version__
from .api import (add_bert, add_sent_tokenized, export_model, feature_matrix, import_csv,
                  list_models, show_feature_tables, write_parquet)
from .errors import BertfeatError
from .predict import nfold_test  # (scikit-learn is imported when it runs)

__all__ = ["__version__", "BertfeatError", "import_csv", "add_sent_tokenized", "show_feature_tables",
           "add_bert", "feature_matrix", "write_parquet", "nfold_test", "export_model", "list_models"]
