"""bertfeat's Python API: one function per CLI action, keyword names matching the flags.

    import bertfeat
    bertfeat.import_csv("dla", "msgs", "msgs.csv")
    bertfeat.add_sent_tokenized("dla", "msgs")

Connection keywords shared by every function: db_engine ("duckdb" | "mysql"), db_dir,
mysql_config_file, mysql_host, mysql_port, mysql_user, lock_timeout (seconds to wait for a DuckDB
file another process holds).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .bert import add_bert, check_ray  # the job itself: its signature is the API's
from .errors import BertfeatError, param
from .progress import Progress, notice
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


def add_sent_tokenized(db: str, table: str, message_field: str = "message", messageid_field: str = "message_id",
                       overwrite: bool = False, progress: bool | None = None, batch_size: int = 1000,
                       ray: str | None = None, workers: int | None = None, **conn) -> dict:
    """Create `<table>_stoks`: every column of `table`, `message_field` as a JSON array of sentences.

    Written into `<table>_stoks__partial` and renamed when complete, so an interrupted run is
    never mistaken for a finished one; a rerun resumes after the last message_id written.
    `ray` ('local', 'auto' or host:port): batches are split by Ray tasks (`workers` at once),
    written in id order as here.
    """
    started = time.perf_counter()
    check_name(table, "table name")
    check_ray(ray, workers)
    out = check_name(f"{table}_stoks", "sentence table name")
    partial = check_name(f"{out}__partial", "sentence table name")
    with connect(db, **conn) as engine, engine.hold():  # let go of a DuckDB file while splitting
        columns = engine.require_table(table, [messageid_field, message_field],
                                       ["--messageid_field", "--message_field"])
        # read/written count the whole table, a resumed run's earlier part (resumed_messages) included
        summary = {"table": out, "read": 0, "written": 0, "skipped": {}, "resumed_after": None,
                   "resumed_messages": 0}
        if engine.table_exists(out):
            if not overwrite:
                notice(f"{out} already exists: nothing to do (pass {param('--overwrite', True)} to rebuild it)")
                summary["written"] = engine.query(f"SELECT count(*) FROM {engine.q(out)}")[0][0]
                return summary
        last = _start_partial(engine, table, partial, out, messageid_field, message_field, overwrite)
        summary["resumed_after"] = last
        if last is not None:  # the rows before `last` were split by the interrupted run
            mid = engine.q(messageid_field, "column name")
            summary["resumed_messages"] = summary["read"] = engine.query(
                f"SELECT count(*) FROM {engine.q(table)} WHERE {mid} < ?", [last])[0][0]
            summary["written"] = engine.query(f"SELECT count(*) FROM {engine.q(partial)}")[0][0]
        total, null_ids, batches = engine.by_id(table, messageid_field, columns, batch_size, from_id=last)
        if null_ids:
            summary["skipped"]["NULL message_id"] = null_ids
        msg_index = columns.index(message_field)
        if ray is not None:
            from .scaleout.ray_pool import split_on_ray
            split = split_on_ray(batches, msg_index, ray, workers, engine.released)
        else:
            split = _split_here(batches, msg_index, engine.released)
        with Progress("sentences", total, enabled=progress) as bar:
            for rows, out_rows, skipped in split:
                for why, n in skipped.items():
                    summary["skipped"][why] = summary["skipped"].get(why, 0) + n
                engine.insert_rows(partial, columns, out_rows)
                engine.commit()
                summary["read"] += len(rows)
                summary["written"] += len(out_rows)
                bar.update(len(rows))
        engine.set_table_comment(partial, "")
        engine.swap_in(partial, out)
        engine.commit()
    summary["seconds"] = round(time.perf_counter() - started, 2)
    return summary


def _start_partial(engine, table, partial, out, messageid_field, message_field, overwrite):
    """Create or resume `partial`; returns the message_id to resume after (None: from the start).

    A partial table is resumed only when the message table is what it was when the partial was
    started (same ids and texts, kept as its comment): otherwise its rows are stale and it
    starts over. The last id's rows are redone (they may be half written)."""
    mid = engine.q(messageid_field, "column name")
    last = None
    checksum = engine.content_checksum(table, [messageid_field, message_field])
    if engine.table_exists(partial):
        if overwrite:
            engine.drop_table(partial)
        elif engine.table_comment(partial) != f"bertfeat source {checksum}":
            notice(f"{table} changed since {partial} was started: starting {out} over")
            engine.drop_table(partial)
        else:
            last = engine.query(f"SELECT max({mid}) FROM {engine.q(partial)}")[0][0]
            if last is not None:
                engine.execute(f"DELETE FROM {engine.q(partial)} WHERE {mid} = ?", [last])
                engine.commit()
                notice(f"resuming {out} from {messageid_field} {last}")
    if not engine.table_exists(partial):
        engine.copy_schema(table, partial, message_field)
        engine.set_table_comment(partial, f"bertfeat source {checksum}")
        engine.commit()
    return last


def _split_here(batches, msg_index, released):
    """(rows, rows with sentences, skipped) of each batch, split in this process while the
    engine lets go of a DuckDB file (splitting needs no database: other processes get in)."""
    for rows in batches:
        with released():
            out_rows, skipped = _split_rows(rows, msg_index)
        yield rows, out_rows, skipped


def _split_rows(rows, msg_index):
    """(the rows with their message as a JSON array of sentences, {"NULL message": n} skipped)."""
    from .text.sentences import split_sentences
    out, skipped = [], {}
    for row in rows:
        if row[msg_index] is None:
            skipped["NULL message"] = skipped.get("NULL message", 0) + 1
            continue
        row = list(row)
        row[msg_index] = json.dumps(split_sentences(row[msg_index]), ensure_ascii=False)
        out.append(row)
    return out, skipped


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
    from .exporter import list_models as run
    return run(model_dir, verify=verify)
