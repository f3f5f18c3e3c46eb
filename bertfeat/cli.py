"""`bertfeat`: DLATK-compatible flags, parsed here and handed to the Python API (bertfeat.api)."""
import argparse
import sys

from .errors import BertfeatError, first_line
from .predict import DEFAULT_FOLDS, DEFAULT_SEED
from .settings import DEFAULT_MODEL
from .tables import DEFAULT_MYSQL_CONFIG, ENGINES


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        """One line, as every other error (argparse would print the whole usage first)."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser():
    p = _Parser(
        prog="bertfeat",
        description="Contextual-embedding features from messages, DLATK-compatible and fast.",
        allow_abbrev=False)
    from .version import __version__
    p.add_argument("--version", action="version", version=f"bertfeat {__version__}")
    corpus = p.add_argument_group("Corpus Variables", "where the messages are")
    corpus.add_argument("-d", "--corpdb", metavar="DB", help="database (DuckDB: the file <db_dir>/DB.duckdb)")
    corpus.add_argument("-t", "--corptable", metavar="TABLE", help="message table")
    corpus.add_argument("-c", "--correl_field", metavar="FIELD", nargs="+",
                        help="grouping column (e.g. user_id)")
    corpus.add_argument("--message_field", default="message", help="message text column (default: message)")
    corpus.add_argument("--messageid_field", default="message_id",
                        help="message id column (default: message_id)")

    db = p.add_argument_group("Database", "which engine and how to reach it")
    db.add_argument("--db_engine", choices=ENGINES, default=ENGINES[0],
                    help="embedded DuckDB (default) or a MySQL/MariaDB server")
    db.add_argument("--db_dir", default=None,
                    help="folder of the DuckDB files (default: env BERTFEAT_DB_DIR, else the current folder)")
    db.add_argument("--mysql_config_file", default=None,
                    help=f"MySQL option file, as DLATK (default: {DEFAULT_MYSQL_CONFIG} when there is one;"
                         " a file named here must exist)")
    db.add_argument("--mysql_host", default=None, help="override the option file's host")
    db.add_argument("--mysql_port", default=None, type=int, help="override the option file's port")
    db.add_argument("--mysql_user", default=None, help="override the option file's user")
    db.add_argument("--lock_timeout", type=float, default=None,
                    help="seconds to wait for a DuckDB file another process holds (default 600)")

    actions = p.add_argument_group("Actions")
    actions.add_argument("--import_csv", metavar="FILE",
                         help="load a CSV (header row) into table -t, creating it")
    actions.add_argument("--overwrite", action="store_true",
                         help="replace a table that already exists")
    actions.add_argument("--add_sent_tokenized", action="store_true",
                         help="create <table>_stoks: each message as a JSON array of sentences")
    actions.add_argument("--show_feature_tables", "--ls", action="store_true",
                         help="list the database's tables")

    bert = p.add_argument_group("BERT / embedding features", "DLATK's --emb_* / --embedding_* aliases work too")
    bert.add_argument("--add_bert", "--add_emb", "--add_embedding", action="store_true",
                      help="add contextual-embedding features grouped by -c")
    bert.add_argument(*_aliases("model"), dest="bert_model", default=DEFAULT_MODEL,
                      help="Hugging Face id or local folder (base-*/large-* mean bert-base-*/bert-large-*)")
    bert.add_argument(*_aliases("layers"), dest="bert_layers", nargs="+", type=int, default=None,
                      help="0-indexed transformer layers, negatives from the end (default: second-to-last)")
    bert.add_argument(*_aliases("layer_aggregation"), dest="bert_layer_aggregation", nargs="+",
                      default=None, help="across layers: concatenate (default), mean, median, max, min, sum, std")
    bert.add_argument(*_aliases("word_aggregation"), dest="bert_word_aggregation", nargs="+",
                      default=None, help="across a sentence's tokens: mean (default), median, max, min, sum, std")
    bert.add_argument(*_aliases("msg_aggregation"), dest="bert_msg_aggregation", nargs="+",
                      default=None, help="across a group's messages: mean (default), median, max, min, sum, std")
    bert.add_argument(*_aliases("no_context"), dest="bert_no_context", action="store_true",
                      help="embed every word piece on its own")
    bert.add_argument(*_aliases("keep_msg"), dest="bert_keep_msg", action="store_true",
                      help="also write the message-level table (grouped by message_id)")
    bert.add_argument(*_aliases("keep_tokens"), dest="bert_keep_tokens", action="store_true",
                      help="also write every token's vector: table tok$<featname>$<table> (docs/features.md)")
    bert.add_argument(*_aliases("word_types"), dest="bert_word_types", action="store_true",
                      help="also write one vector per group and distinct word: table wt$<featname>$<table>$<correl>")
    bert.add_argument(*_aliases("table_name"), dest="bert_table_name", default=None,
                      help="name the feature table (default: DLATK's feat$<featname>$<table>$<correl>$16to16)")
    bert.add_argument(*_aliases("tokenizer_model"), "--tokenizer_model", dest="bert_tokenizer_model", default=None,
                      help="split words with this model's tokenizer (folder or id; default: the model's own)")
    bert.add_argument(*_aliases("class"), dest="bert_class", default=None,
                      help="DLATK's model class (auto, bert, roberta, ...): checked against the model's config")
    bert.add_argument("--batch_size", dest="emb_batch_size", type=int, default=None,
                      help="accepted for DLATK; bertfeat batches by tokens (--batch_tokens)")
    bert.add_argument("--dlatk_compat", action="store_true",
                      help="reproduce DLATK 1.3.15's numbers (its token positions), in a table whose feature name"
                           " ends _dlatk: feat$<featname>_dlatk$T$F$16to16")
    bert.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                      help="run inference on Ray actors: no address = a local Ray, 'auto' or host:port = join"
                           " that cluster (pip install 'bertfeat[ray]')")
    bert.add_argument("--workers", type=int, default=None,
                      help="Ray actors (default: the cluster's CPUs / --threads)")
    bert.add_argument("--device", default="cpu", help="cpu (default), cuda, or auto")
    bert.add_argument("--precision", default="fp32", help="fp32 (default), int8 (CPU) or fp16 (CUDA)")
    bert.add_argument("--batch_tokens", type=int, default=None, help="padded tokens per inference batch")
    bert.add_argument("--threads", type=int, default=None, help="inference threads (default: physical cores)")
    bert.add_argument("--stage_dir", default=None,
                      help="folder of the stage file (cached message vectors; default: the DuckDB"
                           " folder, or the current folder with MySQL)")
    bert.add_argument("--model_dir", default=None,
                      help="export cache (default: env BERTFEAT_MODELS, else ./models)")
    bert.add_argument("--export_model", metavar="NAME", help="export NAME into the cache and stop")
    bert.add_argument("--list_models", action="store_true", help="show the export cache")
    bert.add_argument("--verify_models", action="store_true",
                      help="show the export cache, re-hashing every file (exit 2 if any entry is corrupted)")

    pred = p.add_argument_group("Prediction", "cross-validated models over feature tables (docs/features.md §5)")
    pred.add_argument("-f", "--feat_table", nargs="+", default=None, help="feature table(s), joined on group id")
    pred.add_argument("--outcome_table", default=None, help="table with the correl field and outcome columns")
    pred.add_argument("--outcomes", nargs="+", default=None, help="outcome columns")
    pred.add_argument("--nfold_test_regression", action="store_true", help="K-fold cross-validated regression")
    pred.add_argument("--nfold_test_classifiers", action="store_true", help="K-fold cross-validated classifiers")
    pred.add_argument("--model", default=None, help="ridgecv (default), ridge; lr for classifiers")
    pred.add_argument("--folds", type=int, default=DEFAULT_FOLDS, help=f"number of folds (default {DEFAULT_FOLDS})")
    pred.add_argument("--group_freq_thresh", type=int, default=None,
                      help="only groups with at least N words in the message table (-t)")
    pred.add_argument("--output_name", default=None, help="write NAME.json and NAME.csv")
    pred.add_argument("--save_predictions", action="store_true", help="also write NAME.predictions.csv")
    pred.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"fold shuffling seed (default {DEFAULT_SEED})")
    pred.add_argument("--alpha", type=float, default=1.0, help="alpha of --model ridge")

    out = p.add_argument_group("Parquet", "feature tables as Parquet files (pandas, polars, R arrow)")
    out.add_argument("--output_parquet", metavar="DIR", default=None,
                     help="write the -f feature tables, and the tables --add_bert writes, to DIR/<table>.parquet")
    out.add_argument("--parquet_layout", default="wide", choices=["wide", "vector", "long"],
                     help="wide: a row per group, a column per feature (default); vector: a list column;"
                          " long: the table's rows")

    misc = p.add_argument_group("Output")
    misc.add_argument("--no_progress", action="store_true", help="no progress bar even on a terminal")
    misc.add_argument("--debug", action="store_true", help="show a full traceback on errors")
    return p


def _aliases(suffix):
    return [f"--bert_{suffix}", f"--emb_{suffix}", f"--embedding_{suffix}"]


def _conn(args):
    from .tables import CONNECTION_KEYS
    return {k: getattr(args, k) for k in CONNECTION_KEYS}


def _keywords(function, args, **given):
    """The flags that are `function`'s keywords (the API's keywords are the flags' names), plus
    the connection keywords and `given`."""
    import inspect
    names = inspect.signature(function).parameters
    return {**{k: v for k, v in vars(args).items() if k in names}, **_conn(args), **given}


def _need(args, *flags):
    for flag in flags:
        if not getattr(args, flag):
            opt = {"corpdb": "-d/--corpdb", "corptable": "-t/--corptable", "feat_table": "-f/--feat_table",
                   "correl_field": "-c/--correl_field"}.get(flag, "--" + flag)
            raise BertfeatError(f"this action needs {opt}")


def _skipped(skipped):
    return ", ".join(f"{n} {why}" for why, n in skipped.items()) or "none"


def run(args):
    from .errors import from_cli
    with from_cli():
        _run(args)


def _run(args):
    """Each action given, in the order a DLATK pipeline runs them."""
    progress = False if args.no_progress else None
    actions = [(args.import_csv, _import_csv), (args.add_sent_tokenized, _add_sent_tokenized),
               (args.export_model, _export_model), (args.list_models or args.verify_models, _list_models),
               (args.add_bert, _add_bert), (args.nfold_test_regression or args.nfold_test_classifiers, _predict),
               (args.show_feature_tables, _show_feature_tables),
               (args.output_parquet, _output_parquet)]
    if args.output_parquet and not (args.feat_table or args.add_bert):
        raise BertfeatError("--output_parquet DIR writes feature tables: name them with -f TABLE..., or give"
                            " --add_bert to write the tables it makes")
    todo = [action for given, action in actions if given]
    if not todo:
        raise BertfeatError("nothing to do: give an action such as --import_csv, --add_sent_tokenized,"
                            " --show_feature_tables (see bertfeat --help)")
    for action in todo:
        action(args, progress)


def _import_csv(args, progress):
    from . import api
    _need(args, "corpdb", "corptable")
    s = api.import_csv(args.corpdb, args.corptable, args.import_csv,
                       **_keywords(api.import_csv, args, progress=progress))
    print(f"import_csv: {s['rows']} rows, {len(s['columns'])} columns -> table {s['table']}")


def _add_sent_tokenized(args, progress):
    from . import api
    _need(args, "corpdb", "corptable")
    s = api.add_sent_tokenized(args.corpdb, args.corptable,
                               **_keywords(api.add_sent_tokenized, args, progress=progress))
    if "seconds" not in s:  # the table was there: nothing read, nothing written
        print(f"add_sent_tokenized: {s['table']} already exists ({s['written']} rows): nothing done")
        return
    resumed = (f" ({s['resumed_messages']} of them by the interrupted run it resumed)" if s["resumed_messages"]
               else "")
    print(f"add_sent_tokenized: read {s['read']} messages{resumed}, wrote {s['written']} rows,"
          f" skipped {_skipped(s['skipped'])} -> table {s['table']} in {s['seconds']} s")


def _export_model(args, progress):
    from . import api
    entry = api.export_model(args.export_model, precision=args.precision, model_dir=args.model_dir,
                             bert_layers=args.bert_layers)
    print(f"export_model: {args.export_model} -> {entry}")


def _list_models(args, progress):
    from . import api
    bad = 0
    for name, entry, manifest, size, intact in api.list_models(args.model_dir, verify=args.verify_models):
        bad += not intact
        info = _entry_info(manifest) if manifest else "no manifest"
        print(f"{name}  {size / 1e6:.1f} MB  {info}  {'ok' if intact else 'CORRUPTED'}  {entry}")
    if bad and args.verify_models:
        raise BertfeatError(f"{bad} corrupted cache entr{'y' if bad == 1 else 'ies'}: delete"
                            " them (the next run that needs one exports it again)")


def _entry_info(manifest):
    """Depth, precision and agreement with its reference (PyTorch for fp32, fp32 otherwise)."""
    from .models import cosine
    per_layer = manifest.get("fp32_layer_cosine")
    if manifest.precision == "fp32":
        agreement = f"max error {manifest['validation_max_error']:.1e}"
    else:
        cosines = (" ".join(f"L{k} {cosine(c)}" for k, c in enumerate(per_layer)) if per_layer
                   else f"{manifest.get('fp32_min_window_cosine', float('nan')):.4f}")
        usable = " ".join(map(str, manifest.usable_layers())) or "none"
        agreement = f"min cosine to fp32 {cosines} (usable layers: {usable})"
        if manifest.speedup_vs_fp32 is not None:
            agreement += f"; {manifest.speedup_vs_fp32}x fp32's speed at export"
        if manifest.fp32_matmuls:
            agreement += f"; {len(manifest.fp32_matmuls)} MatMuls kept fp32"
    return f"depth {manifest.depth}/{manifest.layers} {manifest.precision} {agreement}"


def _add_bert(args, progress):
    from . import api
    _need(args, "corpdb", "corptable", "correl_field")
    if args.emb_batch_size is not None:
        from .progress import notice
        notice(f"--batch_size {args.emb_batch_size} is accepted for DLATK and not used: bertfeat packs windows"
               " into batches of --batch_tokens padded tokens (default 2048), sorted by length")
    s = api.add_bert(args.corpdb, args.corptable, **_keywords(api.add_bert, args, progress=progress))
    args.written_tables = [t for t in (s["table"], s["message_table"], s.get("token_table"), s.get("word_table")) if t]
    print(f"add_bert: {s['groups']} groups from {s['messages']} messages ({s['embedded']} distinct texts embedded,"
          f" {s['already_staged']} already staged, {s['reused'] - s['already_staged']} reusing the vector of"
          " an identical text),"
          f" skipped {_skipped(s['skipped'])};"
          f" {s['windows']} windows, {s['tokens']} tokens in {s['seconds']} s -> table {s['table']}"
          + (f" and {s['message_table']}" if s["message_table"] else "")
          + (f" (written by MySQL's {s['write_path'].upper() if s['write_path'] == 'load data' else s['write_path']})"
             if s.get("write_path") else ""))
    if s.get("token_table"):
        print(f"add_bert: {s['tokens_kept']} token vectors -> table {s['token_table']}")
    if s.get("word_table"):
        print(f"add_bert: {s['word_types']} (group, word) vectors -> table {s['word_table']}")


def _output_parquet(args, progress):
    from . import api
    _need(args, "corpdb")
    tables = list(args.feat_table or []) + [t for t in getattr(args, "written_tables", []) if t not in
                                            (args.feat_table or [])]
    for table, path in zip(tables, api.write_parquet(args.corpdb, tables, args.output_parquet,
                                                     layout=args.parquet_layout, **_conn(args))):
        vectors = table.startswith(("tok$", "wt$"))  # token and word-type tables: written as they are
        print(f"output_parquet: {path} ({'its own columns' if vectors else args.parquet_layout})")


def _predict(args, progress):
    import pprint

    from .predict import nfold_test
    _need(args, "corpdb", "feat_table", "outcome_table", "outcomes")
    classify = bool(args.nfold_test_classifiers)
    results = nfold_test(args.corpdb, args.feat_table, args.outcome_table, args.outcomes,
                         correl_field=(args.correl_field or ["user_id"])[0],
                         model=args.model or ("lr" if classify else "ridgecv"), folds=args.folds,
                         group_freq_thresh=args.group_freq_thresh, table=args.corptable,
                         message_field=args.message_field, output_name=args.output_name,
                         save_predictions=args.save_predictions, seed=args.seed, alpha=args.alpha,
                         classify=classify, **_conn(args))
    pprint.pprint(results)


def _show_feature_tables(args, progress):
    from . import api
    _need(args, "corpdb")
    runs = api.feature_table_runs(args.corpdb, **_conn(args))
    for name, kind in api.show_feature_tables(args.corpdb, **_conn(args)):
        print(f"{kind:10s} {name}" + (f"  {runs[name]}" if name in runs else ""))


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except BertfeatError as e:
        if args.debug:
            raise
        print(f"bertfeat: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bertfeat: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as e:  # database and driver errors: one line, the traceback only with --debug
        if args.debug or not _is_db_error(e):
            raise
        args_ = getattr(e, "args", ())
        if type(e).__module__.startswith("pymysql") and (not args_ or args_[0] in (0, 2006, 2013)):
            print("bertfeat: error: lost the connection to the MySQL server (it stopped or restarted"
                  " mid-run); nothing half-written is kept: run the same command again to resume",
                  file=sys.stderr)
            return 2
        if type(e).__module__.startswith("pymysql") and len(args_) == 2:  # (errno, message)
            first = f"{args_[0]} {first_line(args_[1])}"
        elif "No space left" in str(e) or "Could not write file" in str(e):
            print("bertfeat: error: the disk is full (" + first_line(e, 160) + "): free some"
                  " space, or point --stage_dir / --db_dir at another disk, then run the same command again"
                  " (finished chunks are kept)", file=sys.stderr)
            return 2
        else:
            first = first_line(e)
        print(f"bertfeat: error: database: {first}", file=sys.stderr)
        return 2
    return 0


def _is_db_error(e):
    mod = type(e).__module__ or ""
    return mod.startswith(("duckdb", "_duckdb", "pymysql"))


if __name__ == "__main__":
    sys.exit(main())
