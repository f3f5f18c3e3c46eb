"""Sentence splitting (SPEC §2) on tricky and real text, through the real DuckDB and MariaDB engines."""
import csv
import json

import pytest

import bertfeat
from bertfeat.tables import connect
from bertfeat.text.sentences import clean_text, punkt_tokenizer, split_sentences


def squash(text):
    return "".join(text.split())


@pytest.mark.unit
def test_known_abbreviations_do_not_end_sentences():
    assert split_sentences("Mr. Smith arrived at 5 p.m. on Jan. 3rd! Did he?") == [
        "Mr. Smith arrived at 5 p.m. on Jan. 3rd!", "Did he?"]
    assert split_sentences("Dr. Who met Mrs. Jones in the U.S. yesterday. Then they left.") == [
        "Dr. Who met Mrs. Jones in the U.S. yesterday.", "Then they left."]


@pytest.mark.unit
def test_line_break_always_ends_a_sentence():
    assert split_sentences("no period here\nand a second line\r\n\n third. fourth") == [
        "no period here", "and a second line", "third.", "fourth"]


@pytest.mark.unit
def test_punkt_parameters_are_nltks_english():
    params = punkt_tokenizer()._params
    assert {"mr", "mrs", "dr", "p.m", "jan", "u.s"} <= params.abbrev_types
    assert len(params.ortho_context) > 1000


@pytest.mark.unit
@pytest.mark.parametrize("message, expected", [
    ("", []), ("   \n\t  ", []), ("😀😀😀", ["😀😀😀"]),
    (b"caf\xe9 ok.\n\xff\xfe next", ["caf\ufffd ok.", "\ufffd\ufffd next"]),
])
def test_edge_messages(message, expected):
    assert split_sentences(message) == expected


@pytest.mark.unit
def test_huge_message_keeps_all_text():
    text = ("This is sentence number one of many. " * 5500)[:200_000]
    sents = split_sentences(text)
    assert len(sents) > 5000
    assert squash("".join(sents)) == squash(text)


@pytest.mark.unit
def test_no_text_lost_or_invented_on_real_messages(msgs_csv):
    with open(msgs_csv, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 741
    for row in rows:
        sents = split_sentences(row["message"])
        assert all(s == s.strip() and s for s in sents)
        assert squash("".join(sents)) == squash(clean_text(row["message"])), row["message_id"]


def _stoks(db, conn):
    with connect(db, **conn) as engine:
        return engine.query("SELECT message_id, user_id, created_date, message FROM msgs_stoks"
                            " ORDER BY message_id")


def test_duckdb_and_mariadb_give_identical_stoks(msgs_csv, duck, mysql_db):
    my_name, my = mysql_db
    for db, conn in (("dla", duck), (my_name, my)):
        assert bertfeat.import_csv(db, "msgs", msgs_csv, progress=False, **conn)["rows"] == 741
        s = bertfeat.add_sent_tokenized(db, "msgs", progress=False, **conn)
        assert (s["read"], s["written"], s["skipped"]) == (741, 741, {})
    a, b = _stoks("dla", duck), _stoks(my_name, my)
    assert len(a) == 741
    assert [(r[0], r[1], str(r[2])) for r in a] == [(r[0], r[1], str(r[2])) for r in b]
    assert [json.loads(r[3]) for r in a] == [json.loads(r[3]) for r in b]
    assert sum(len(json.loads(r[3])) for r in a) > 741


def _hostile_rows():
    return [(1, 10, None), (2, 10, b""), (3, 11, b"   "), (4, 11, "😀🙂".encode()),
            (5, 12, b"bad \xff\xfe bytes. End."), (6, 12, ("word " * 40000).encode())]


@pytest.mark.parametrize("engine_name", ["duckdb", "mysql"])
def test_null_empty_emoji_huge_and_invalid_utf8(engine_name, duck, request):
    if engine_name == "duckdb":
        db, conn, blob = "edge", duck, "BLOB"
    else:
        db, conn = request.getfixturevalue("mysql_db")
        blob = "LONGBLOB"
    with connect(db, create=True, **conn) as engine:
        engine.execute(f"CREATE TABLE msgs (message_id BIGINT PRIMARY KEY, user_id BIGINT, message {blob})")
        engine.insert_rows("msgs", ["message_id", "user_id", "message"], _hostile_rows())
        engine.commit()
    s = bertfeat.add_sent_tokenized(db, "msgs", progress=False, **conn)
    assert s["skipped"] == {"NULL message": 1} and s["written"] == 5
    with connect(db, **conn) as engine:
        got = {r[0]: json.loads(r[1]) for r in engine.query("SELECT message_id, message FROM msgs_stoks")}
    assert got[2] == [] and got[3] == [] and got[4] == ["😀🙂"]
    assert got[5] == ["bad \ufffd\ufffd bytes.", "End."]
    assert squash("".join(got[6])) == squash("word " * 40000)


def test_interrupted_run_resumes_to_the_same_table(msgs_csv, duck):
    bertfeat.import_csv("full", "msgs", msgs_csv, progress=False, **duck)
    bertfeat.add_sent_tokenized("full", "msgs", progress=False, **duck)
    expected = _stoks("full", duck)
    bertfeat.import_csv("cut", "msgs", msgs_csv, progress=False, **duck)
    # A run that died after writing part of its output: the partial table holds the first 300 ids
    # and, as a real run leaves it, the fingerprint of the message table it was started from.
    with connect("cut", **duck) as engine:
        engine.copy_schema("msgs", "msgs_stoks__partial", "message")
        engine.set_table_comment("msgs_stoks__partial", "bertfeat source "
                                 + engine.content_checksum("msgs", ["message_id", "message"]))
        engine.insert_rows("msgs_stoks__partial", ["message_id", "user_id", "created_date", "message"],
                           [list(r) for r in expected[:300]])
    s = bertfeat.add_sent_tokenized("cut", "msgs", progress=False, **duck)
    assert s["resumed_after"] == expected[299][0] and s["read"] == 741 and s["resumed_messages"] == 299
    assert _stoks("cut", duck) == expected
    with connect("cut", **duck) as engine:
        assert not engine.table_exists("msgs_stoks__partial")
    # Done is done: a third run writes nothing.
    assert bertfeat.add_sent_tokenized("cut", "msgs", progress=False, **duck)["read"] == 0
