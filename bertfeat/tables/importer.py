"""--import_csv: DuckDB's CSV reader (header row, quoted multi-line fields, type sniffing) feeds either engine."""
import codecs
import csv
import os
import tempfile

import duckdb

from ..errors import BertfeatError, param
from ..progress import Progress, notice
from . import check_name

def _utf8_path(path, block=1 << 20):
    """Return (path, n_replaced): a temporary UTF-8-clean copy when the file holds invalid UTF-8.

    Streams the file in blocks (memory stays flat whatever its size); a second pass writes the
    copy only when the first found an invalid sequence.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    with open(path, "rb") as f:
        try:
            while chunk := f.read(block):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
            return path, 0
        except UnicodeDecodeError:
            pass
    replaced = 0

    def count(err):
        nonlocal replaced
        replaced += 1
        return "\ufffd", err.end

    decoder = codecs.getincrementaldecoder("utf-8")(errors="bertfeat_count")
    codecs.register_error("bertfeat_count", count)
    fd, tmp = tempfile.mkstemp(suffix=".csv")
    with open(path, "rb") as f, os.fdopen(fd, "w", encoding="utf-8", newline="") as out:
        while chunk := f.read(block):
            out.write(decoder.decode(chunk))
        out.write(decoder.decode(b"", final=True))
    return tmp, replaced


def _header(path):
    """The CSV's first record (its column names), read as DuckDB will read it (a UTF-8 byte order
    mark, which Excel's "CSV UTF-8" writes, is not part of the first name: DuckDB skips it too)."""
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        try:
            return next(csv.reader(f), None)
        except csv.Error:
            return None


def _csv_error(e, user_path, read_path):
    """DuckDB's multi-line CSV error as one line naming the user's file and the offending line."""
    lines = [ln.strip() for ln in str(e).replace(read_path, user_path).splitlines() if ln.strip()]
    keep = [lines[0]] + [ln for ln in lines[1:] if ln.startswith(("Original Line", "Expected Number"))]
    return f"cannot parse CSV {user_path}: " + "; ".join(keep)


_OPTS = ("header = true, delim = ',', quote = '\"', escape = '\"', strict_mode = true,"
         " allow_quoted_nulls = false")


def _read_sql(columns):
    """DuckDB's reader of the file (a ? parameter) with these (name, type) columns."""
    cols = ", ".join(f"'{n}': '{t}'" for n, t in columns)  # names checked against [A-Za-z0-9_$]
    return f"read_csv(?, {_OPTS}, auto_detect = false, columns = {{{cols}}})"


def import_csv(engine, table, csv_path, overwrite=False, messageid_field="message_id",
               message_field="message", progress=None):
    """Load `csv_path` into `table`; returns a summary dict (rows, table, replaced bytes).

    The file is checked whole before anything is written (every row must have the header's
    fields), loaded under a temporary name and swapped in, so a bad file never replaces a table.
    """
    check_name(table, "table name")
    csv_path = os.fspath(csv_path)  # a str or a pathlib.Path
    if not os.path.isfile(csv_path):
        raise BertfeatError(f"CSV file not found: {csv_path}")
    if engine.table_exists(table) and not overwrite:
        raise BertfeatError(f"table {table!r} already exists; pass {param('--overwrite', True)} to replace it")
    clean_path, n_replaced = _utf8_path(csv_path)
    reader = duckdb.connect()
    tmp = engine.temp_name(table)
    try:
        header = _checked_header(clean_path, csv_path)
        if n_replaced:
            notice(f"{csv_path}: {n_replaced} invalid UTF-8 sequence(s) replaced with U+FFFD")
        columns, n_rows = _columns(reader, header, clean_path, csv_path, message_field)
        src = _read_sql(columns)
        if n_rows == 0:
            notice(f"{csv_path} has a header but no rows: table {table!r} will be empty")
        key = messageid_field if _unique_ids(engine, reader, src, clean_path, header, messageid_field) else None
        col_defs = [(name, engine.csv_column_type(typ, _longest(engine, reader, src, clean_path, name, typ)),
                     name == key) for name, typ in columns]
        engine.drop_table(tmp)
        engine.create_table(tmp, col_defs)
        names = [name for name, _ in columns]
        try:
            with Progress(f"importing {table}", n_rows, enabled=progress) as bar:
                engine.insert_select(tmp, names, reader, f"SELECT * FROM {src}", [clean_path], bar.update)
        except duckdb.Error as e:
            raise BertfeatError(_csv_error(e, csv_path, clean_path)) from e
        engine.commit()
        engine.swap_in(tmp, table)
    except BaseException:
        try:
            engine.drop_table(tmp)
            engine.commit()
        except Exception:
            pass  # the original error matters more; a leftover temporary table is harmless
        raise
    finally:
        reader.close()
        if clean_path != csv_path:
            os.unlink(clean_path)
    return {"table": table, "rows": n_rows, "columns": names, "replaced_utf8": n_replaced}


def _checked_header(path, user_path):
    """The header's column names: present, valid names, none twice."""
    header = _header(path)
    if not header:
        raise BertfeatError(f"cannot parse CSV {user_path}: the file is empty (a header row is needed)")
    for name in header:
        check_name(name, f"column name in {user_path}")
    if len(set(header)) != len(header):
        raise BertfeatError(f"CSV {user_path}: its header names a column twice: {','.join(header)}")
    return header


def _columns(reader, header, path, user_path, message_field):
    """([(name, DuckDB type)], row count). 1. every row against the header, as text: a row with
    too many or too few fields is an error naming its line (DuckDB's sniffer would otherwise take
    such a row for the header); 2. column types from DuckDB's sniffer; the message column stays text."""
    try:
        n_rows = reader.execute(f"SELECT count(*) FROM {_read_sql([(n, 'VARCHAR') for n in header])}",
                                [path]).fetchone()[0]
        sniffed = reader.execute(f"DESCRIBE SELECT * FROM read_csv(?, {_OPTS}, auto_detect = true,"
                                 " sample_size = -1)", [path]).fetchall()
    except duckdb.Error as e:
        raise BertfeatError(_csv_error(e, user_path, path)) from e
    types = dict((name, typ) for name, typ, *_ in sniffed)
    if [name for name, *_ in sniffed] != header or n_rows == 0:
        types = {}
    return [(n, "VARCHAR" if n == message_field else types.get(n, "VARCHAR")) for n in header], n_rows


def _unique_ids(engine, reader, src, path, header, messageid_field):
    """Whether the id column is there, unique and never empty (then it becomes the primary key)."""
    if messageid_field not in header:
        return False
    q = engine.quote(messageid_field)
    dup, nulls = reader.execute(f"SELECT count({q}) - count(DISTINCT {q}), count(*) - count({q}) FROM {src}",
                                [path]).fetchone()
    if dup or nulls:
        why = ", ".join(x for x in (f"{dup} repeated value(s)" if dup else "",
                                     f"{nulls} empty value(s)" if nulls else "") if x)
        notice(f"{messageid_field} has {why}: not made the primary key")
        return False
    return True


def _longest(engine, reader, src, path, name, typ):
    """The longest text of a VARCHAR column (engines choose VARCHAR(255) or LONGTEXT by it)."""
    if typ != "VARCHAR":
        return None
    return reader.execute(f"SELECT max(length({engine.quote(name)})) FROM {src}", [path]).fetchone()[0] or 0
