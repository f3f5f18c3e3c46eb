"""`bertfeat`: DLATK-compatible flags, parsed here and handed to the Python API (bertfeat.api)."""
import argparse
import os
import sys

from .errors import BertfeatError


def build_parser():
    p = argparse.ArgumentParser(
        prog="bertfeat",
        description="Contextual-embedding features from messages, DLATK-compatible and fast.")
    corpus = p.add_argument_group("Corpus Variables", "where the messages are")
    corpus.add_argument("-d", "--corpdb", metavar="DB", help="database (DuckDB: the file <db_dir>/DB.duckdb)")
    corpus.add_argument("-t", "--corptable", metavar="TABLE", help="message table")
    corpus.add_argument("-c", "--correl_field", metavar="FIELD", nargs="+",
                        help="grouping column (e.g. user_id)")
    corpus.add_argument("--message_field", default="message", help="message text column (default: message)")
    corpus.add_argument("--messageid_field", default="message_id",
                        help="message id column (default: message_id)")

    db = p.add_argument_group("Database", "which engine and how to reach it")
    db.add_argument("--db_engine", choices=("duckdb", "mysql"), default="duckdb",
                    help="embedded DuckDB (default) or a MySQL/MariaDB server")
    db.add_argument("--db_dir", default=None,
                    help="folder of the DuckDB files (default: env BERTFEAT_DB_DIR, else the current folder)")
    db.add_argument("--mysql_config_file", default="~/.my.cnf",
                    help="MySQL option file, as DLATK (default: ~/.my.cnf)")
    db.add_argument("--mysql_host", default=None, help="override the option file's host")
    db.add_argument("--mysql_port", default=None, type=int, help="override the option file's port")
    db.add_argument("--mysql_user", default=None, help="override the option file's user")

    actions = p.add_argument_group("Actions")
    actions.add_argument("--import_csv", metavar="FILE",
                         help="load a CSV (header row) into table -t, creating it")
    actions.add_argument("--overwrite", action="store_true",
                         help="replace a table that already exists")
    actions.add_argument("--add_sent_tokenized", action="store_true",
                         help="create <table>_stoks: each message as a JSON array of sentences")
    actions.add_argument("--show_feature_tables", "--ls", action="store_true",
                         help="list the database's tables")

    misc = p.add_argument_group("Output")
    misc.add_argument("--no_progress", action="store_true", help="no progress bar even on a terminal")
    misc.add_argument("--debug", action="store_true", help="show a full traceback on errors")
    return p


def _conn(args):
    return {"db_engine": args.db_engine, "db_dir": args.db_dir,
            "mysql_config_file": args.mysql_config_file, "mysql_host": args.mysql_host,
            "mysql_port": args.mysql_port, "mysql_user": args.mysql_user}


def _need(args, *flags):
    for flag in flags:
        if not getattr(args, flag):
            opt = {"corpdb": "-d/--corpdb", "corptable": "-t/--corptable",
                   "correl_field": "-c/--correl_field"}.get(flag, "--" + flag)
            raise BertfeatError(f"this action needs {opt}")


def _skipped(skipped):
    return ", ".join(f"{n} {why}" for why, n in skipped.items()) or "none"


def run(args):
    from . import api
    progress = False if args.no_progress else None
    did = False
    if args.import_csv:
        _need(args, "corpdb", "corptable")
        s = api.import_csv(args.corpdb, args.corptable, args.import_csv, overwrite=args.overwrite,
                           messageid_field=args.messageid_field, progress=progress, **_conn(args))
        print(f"import_csv: {s['rows']} rows, {len(s['columns'])} columns -> table {s['table']}")
        did = True
    if args.add_sent_tokenized:
        _need(args, "corpdb", "corptable")
        s = api.add_sent_tokenized(args.corpdb, args.corptable, message_field=args.message_field,
                                   messageid_field=args.messageid_field, overwrite=args.overwrite,
                                   progress=progress, **_conn(args))
        print(f"add_sent_tokenized: read {s['read']} messages, wrote {s['written']} rows,"
              f" skipped {_skipped(s['skipped'])} -> table {s['table']}"
              + (f" in {s['seconds']} s" if "seconds" in s else " (already there)"))
        did = True
    if args.show_feature_tables:
        _need(args, "corpdb")
        for name, kind in api.show_feature_tables(args.corpdb, **_conn(args)):
            print(f"{kind:10s} {name}")
        did = True
    if not did:
        raise BertfeatError("nothing to do: give an action such as --import_csv, --add_sent_tokenized,"
                            " --show_feature_tables (see bertfeat --help)")


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
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"bertfeat: error: database: {first}", file=sys.stderr)
        return 2
    return 0


def _is_db_error(e):
    mod = type(e).__module__ or ""
    return mod.startswith("duckdb") or mod.startswith("_duckdb") or mod.startswith("mysql")


if __name__ == "__main__":
    sys.exit(main())
