"""bertfeat's Python API: one function per CLI action, keyword names matching the flags.

    import bertfeat
    bertfeat.import_csv("dla", "msgs", "msgs.csv")
    bertfeat.add_sent_tokenized("dla", "msgs")

Connection keywords shared by every function: db_engine ("duckdb" | "mysql"), db_dir,
mysql_config_file, mysql_host, mysql_port, mysql_user, lock_timeout (seconds to wait for a DuckDB
file another process holds).
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import BertfeatError
from .jobs.add_bert import add_bert  # the jobs themselves: their signatures are the API's
from .jobs.sentences import add_sent_tokenized
from .tables import CONNECTION_KEYS, check_name, connect
from .tables import importer


def import_csv(db: str, table: str, csv_path: str | os.PathLike, overwrite: bool = False,
               messageid_field: str = "message_id", message_field: str = "message", progress: bool | None = None,
               **conn) -> dict:
    """Load a CSV (header row, quoted multi-line fields) into `table`, creating `db` if needed."""
    with connect(db, create=True, **conn) as engine:
        return importer.import_csv(engine, table, csv_path, overwrite=overwrite,
                                   messageid_field=messageid_field, message_field=message_field,
                                   progress=progress)


def show_feature_tables(db: str, **conn) -> list:
    """The database's tables: [(name, kind)] where kind is 'feature', 'tokens' (--bert_keep_tokens),
    'word types' (--bert_word_types), 'sentences', 'bertfeat' (its own bookkeeping) or 'table'."""
    with connect(db, **conn) as engine:
        out = []
        for name in engine.tables():
            if name.startswith("feat$"):
                kind = "feature"
            elif name.startswith("tok$"):
                kind = "tokens"
            elif name.startswith("wt$"):
                kind = "word types"
            elif name.endswith("_stoks"):
                kind = "sentences"
            elif name.startswith("bertfeat_"):
                kind = "bertfeat"
            else:
                kind = "table"
            out.append((name, kind))
        return out


__all__ = ["BertfeatError", "import_csv", "add_sent_tokenized", "show_feature_tables", "add_bert",
           "feature_matrix", "write_parquet", "export_model", "list_models", "CONNECTION_KEYS"]


def feature_table_runs(db: str, **conn) -> dict:
    """{feature table: one-line description of the run that wrote it} from the runs table."""
    with connect(db, **conn) as engine:
        return {table: f"model={st['model']} layers={st['layers']} precision={st['precision']}"
                       f" groups={su['groups']} messages={su['messages']} seconds={su['seconds']}"
                for table, st, su in engine.runs()}


def feature_matrix(db: str, feat_table: str, **conn) -> tuple:
    """A feature table as numpy: (group ids, feature names, matrix [groups x features]).

    Several tables (a list) are joined on group id, their features side by side. A (group,
    feature) without a row is 0, as in DLATK. For pandas: pd.DataFrame(x, index=groups,
    columns=names).
    """
    from .predict import load_features
    tables = [feat_table] if isinstance(feat_table, str) else list(feat_table)
    for t in tables:
        check_name(t, "feature table name")
    with connect(db, **conn) as engine:
        groups, x, names = load_features(engine, tables)
    return groups, names, x


def write_parquet(db: str, feat_table: str | list[str], output_dir: str | os.PathLike, layout: str = "wide",
                  **conn) -> list[str]:
    """Write feature table(s) (a name or a list) to `output_dir`/<table>.parquet; returns the
    paths. `layout`: 'wide' (a row per group, a column per feature: pandas' groups x features
    matrix), 'vector' (a row per group, the features as one list column, their names in the
    file's metadata) or 'long' (the table's own rows). bertfeat/tables/parquet.py says more."""
    from .tables import parquet
    parquet.check_layout(layout)
    tables = [feat_table] if isinstance(feat_table, str) else list(feat_table)
    paths = []
    with connect(db, **conn) as engine:
        for t in tables:
            check_name(t, "feature table name")
            path = os.path.join(output_dir, f"{t}.parquet")
            parquet.write(engine, t, path, layout)
            paths.append(path)
    return paths


def export_model(bert_model: str, precision: str = "fp32", model_dir: str | None = None, depth: int | None = None,
                 bert_layers: list[int] | None = None) -> Path:
    """Pre-export a model into the cache (for offline deployment); returns the entry folder.

    All layers by default; with `bert_layers` (or `depth`), only up to the deepest one, which is
    what --add_bert with those layers runs.
    """
    from .exporter import export, resolve_source
    if bert_layers and depth is None:
        from .models import config_layers
        from .settings import BertSettings
        depth = BertSettings(bert_model, tuple(bert_layers)).for_model(config_layers(resolve_source(bert_model))).depth
    return export(bert_model, precision=precision, depth=depth, root=model_dir)


def list_models(model_dir: str | None = None, verify: bool = False) -> list:
    """[(name, entry dir, manifest, size, intact)]; `verify=True` re-hashes every file."""
    from .models import list_models as run
    return run(model_dir, verify=verify)
