"""Engines and CSV import: hostile names are refused, values go through parameters."""
import pytest

import bertfeat
from bertfeat.tables import check_name, connect

HOSTILE = ["msgs'; DROP TABLE msgs; --", "a`b", 'a"b', "x;y", "name with space", "", "t\u00e9"]


@pytest.mark.unit
@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_are_refused(name):
    with pytest.raises(bertfeat.BertfeatError, match="invalid"):
        check_name(name)


@pytest.mark.unit
def test_dollar_names_are_fine():
    assert check_name("feat$bert_ba_un_meL10co$msgs$user_id$16to16")


@pytest.mark.parametrize("engine_name", ["duckdb", "mysql"])
def test_hostile_names_never_reach_sql(engine_name, msgs_csv, duck, request):
    db, conn = ("h", duck) if engine_name == "duckdb" else request.getfixturevalue("mysql_db")
    bertfeat.import_csv(db, "msgs", msgs_csv, progress=False, **conn)
    for name in HOSTILE:
        with pytest.raises(bertfeat.BertfeatError):
            bertfeat.add_sent_tokenized(db, name, progress=False, **conn)
        with pytest.raises(bertfeat.BertfeatError):
            bertfeat.add_sent_tokenized(db, "msgs", message_field=name, progress=False, **conn)
    with connect(db, **conn) as engine:
        assert engine.tables() == ["msgs"]
        assert engine.query("SELECT count(*) FROM msgs")[0][0] == 741
        # values (not names) are parameters: a hostile string is just data
        engine.execute("INSERT INTO msgs (message_id, user_id, message) VALUES (?, ?, ?)",
                       [1, 2, HOSTILE[0]])
        assert engine.query("SELECT message FROM msgs WHERE message_id = ?", [1]) == [(HOSTILE[0],)]


def test_import_refuses_reimport_without_overwrite(msgs_csv, duck):
    bertfeat.import_csv("d", "msgs", msgs_csv, progress=False, **duck)
    with pytest.raises(bertfeat.BertfeatError, match="pass overwrite=True"):  # the keyword, from Python
        bertfeat.import_csv("d", "msgs", msgs_csv, progress=False, **duck)
    assert bertfeat.import_csv("d", "msgs", msgs_csv, overwrite=True, progress=False, **duck)["rows"] == 741
    from pathlib import Path  # the API takes a path object as well as a string
    assert bertfeat.import_csv("d", "msgs", Path(msgs_csv), overwrite=True, progress=False, **duck)["rows"] == 741


@pytest.mark.parametrize("engine_name", ["duckdb", "mysql"])
def test_import_types_primary_key_and_multiline(engine_name, tmp_path, duck, request):
    path = tmp_path / "m.csv"
    path.write_bytes(b'message_id,user_id,message\n1,7,"two\nlines, and a comma"\n2,7,"bad \xff byte"\n')
    for db, conn in [("d", duck) if engine_name == "duckdb" else request.getfixturevalue("mysql_db")]:
        s = bertfeat.import_csv(db, "m", str(path), progress=False, **conn)
        assert s["rows"] == 2 and s["replaced_utf8"] == 1
        with connect(db, **conn) as engine:
            assert engine.query("SELECT message FROM m ORDER BY message_id") == [
                ("two\nlines, and a comma",), ("bad \ufffd byte",)]
            import duckdb
            import pymysql
            # message_id is the primary key: the driver's own integrity error
            with pytest.raises((duckdb.ConstraintException, pymysql.err.IntegrityError)):
                engine.execute("INSERT INTO m (message_id, user_id, message) VALUES (1, 1, 'x')")


@pytest.mark.parametrize("engine_name", ["duckdb", "mysql"])
def test_a_csv_with_a_utf8_byte_order_mark_imports(engine_name, tmp_path, duck, request):
    """Excel's "CSV UTF-8" starts the file with a BOM: it is not part of the first column's name."""
    db, conn = ("b", duck) if engine_name == "duckdb" else request.getfixturevalue("mysql_db")
    path = tmp_path / "bom.csv"
    path.write_bytes(b'\xef\xbb\xbfmessage_id,user_id,message\n1,7,"hi."\n2,7,"\xc3\xa9t\xc3\xa9."\n')
    s = bertfeat.import_csv(db, "msgs", str(path), progress=False, **conn)
    assert s["columns"] == ["message_id", "user_id", "message"] and s["rows"] == 2
    with connect(db, **conn) as engine:
        assert sorted(engine.query("SELECT message_id, message FROM msgs")) == [(1, "hi."), (2, "\u00e9t\u00e9.")]
