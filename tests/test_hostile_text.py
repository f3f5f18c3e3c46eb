"""Text nobody picked, through both real engines, byte for byte (issue 9).

Generated messages mix the strings that break SQL clients (quotes and backslashes in every
combination, the word "delimiter", comment markers, placeholders) with control characters,
emoji, CJK, RTL and zero-width characters, and ride beside real blog posts so that one INSERT
carries hundreds of rows. They must come back from --import_csv, `_stoks` and the message-level
feature table exactly as a direct computation gives them.
"""
import csv
import json
import os
import random
import uuid
import warnings

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bertfeat
from bertfeat.tables import connect
from bertfeat.text.sentences import split_sentences
from helpers import MYSQL, mysql_reachable, real_posts, TOKENS

hostile = st.lists(st.one_of(st.sampled_from(TOKENS), st.text(max_size=4)), max_size=25).map("".join)


def write_csv(path, messages):
    rows = [(i + 1, 100 + i % 7, m) for i, m in enumerate(messages)]
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, quoting=csv.QUOTE_NONNUMERIC)
        w.writerow(["message_id", "user_id", "message"])
        w.writerows(rows)
    return {mid: m for mid, _, m in rows}


def engines(tmp_path):
    """(name, db, connection keywords) for a DuckDB file and, when it answers, a MariaDB database;
    one that does not answer fails the test under BERTFEAT_REQUIRE_MYSQL (as CI sets) and is a
    warning in the summary otherwise, never a silent pass on DuckDB alone."""
    out = [("duckdb", "h", {"db_engine": "duckdb", "db_dir": str(tmp_path)})]
    problem = mysql_reachable()
    if problem is None:
        out.append(("mysql", f"bertfeat_test_{uuid.uuid4().hex[:10]}", dict(MYSQL)))
    elif os.environ.get("BERTFEAT_REQUIRE_MYSQL"):
        pytest.fail(f"MySQL required (BERTFEAT_REQUIRE_MYSQL) but unreachable: {problem}")
    else:
        warnings.warn(f"no MariaDB server ({problem}): hostile text checked on DuckDB only", stacklevel=2)
    return out


def drop(name, db, conn):
    if name == "mysql":
        import pymysql
        con = pymysql.connect(host=conn["mysql_host"], port=conn["mysql_port"], user=conn["mysql_user"])
        con.cursor().execute(f"DROP DATABASE IF EXISTS `{db}`")
        con.close()


def read(db, conn, sql):
    with connect(db, **conn) as engine:
        return engine.query(sql)


@pytest.mark.parametrize("engine_name", ["duckdb", "mysql"])
def test_the_issue_9_reproducers(engine_name, tmp_path, request):
    db, conn = ("d", {"db_engine": "duckdb", "db_dir": str(tmp_path)}) if engine_name == "duckdb" \
        else request.getfixturevalue("mysql_db")
    texts = ["the delimiter between", "it's", "-- a dash comment", "# hash", "DELIMITER ;;\nselect 1;;",
             "back\\slash 'quote' \\'both\\'", "%s and ? and %(x)s"]
    expected = write_csv(tmp_path / "m.csv", texts)
    assert bertfeat.import_csv(db, "msgs", str(tmp_path / "m.csv"), progress=False, **conn)["rows"] == 7
    assert dict(read(db, conn, "SELECT message_id, message FROM msgs")) == expected
    bertfeat.add_sent_tokenized(db, "msgs", progress=False, **conn)
    got = dict(read(db, conn, "SELECT message_id, message FROM msgs_stoks"))
    assert got == {k: json.dumps(split_sentences(v), ensure_ascii=False) for k, v in expected.items()}


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(texts=st.lists(hostile, min_size=1, max_size=60), seed=st.integers(0, 10**6))
def test_import_and_sentences_round_trip_byte_for_byte(tmp_path_factory, texts, seed):
    tmp = tmp_path_factory.mktemp("rt")
    messages = texts + real_posts(240, seed)
    random.Random(seed).shuffle(messages)
    expected = write_csv(tmp / "m.csv", messages)
    stoks = {k: json.dumps(split_sentences(v), ensure_ascii=False) for k, v in expected.items()}
    for name, db, conn in engines(tmp):
        try:
            s = bertfeat.import_csv(db, "msgs", str(tmp / "m.csv"), progress=False, **conn)
            assert s["rows"] == len(messages), name
            assert dict(read(db, conn, "SELECT message_id, message FROM msgs")) == expected, name
            bertfeat.add_sent_tokenized(db, "msgs", progress=False, **conn)
            assert dict(read(db, conn, "SELECT message_id, message FROM msgs_stoks")) == stoks, name
        finally:
            drop(name, db, conn)


@pytest.fixture(scope="module")
def tiny_bert(tiny_bert_model, tmp_path_factory):
    return tiny_bert_model, str(tmp_path_factory.mktemp("tinyb") / "cache")


@settings(max_examples=2, deadline=None, suppress_health_check=list(HealthCheck))
@given(texts=st.lists(hostile, min_size=1, max_size=40), seed=st.integers(0, 10**6))
def test_message_level_table_is_the_same_on_both_engines(tiny_bert, tmp_path_factory, texts, seed):
    model, cache = tiny_bert
    tmp = tmp_path_factory.mktemp("ml")
    messages = texts + real_posts(200, seed)
    expected = write_csv(tmp / "m.csv", messages)
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(f"{model}/tokenizer.json")
    tok.no_padding()  # as bertfeat reads it (this tokenizer.json pads to 128)
    tok.no_truncation()
    # a message is embedded when one of its sentences has a word piece ("\x00" alone has none)
    with_text = {k for k, v in expected.items()
                 if any(tok.encode(x, add_special_tokens=False).ids for x in split_sentences(v))}
    tables = {}
    for name, db, conn in engines(tmp):
        try:
            bertfeat.import_csv(db, "msgs", str(tmp / "m.csv"), progress=False, **conn)
            bertfeat.add_sent_tokenized(db, "msgs", progress=False, **conn)
            s = bertfeat.add_bert(db, "msgs", "user_id", bert_model=model, model_dir=cache, bert_keep_msg=True,
                                  stage_dir=str(tmp / name), progress=False, **conn)
            q = "`" if name == "mysql" else '"'
            rows = read(db, conn, f"SELECT group_id, feat, value FROM {q}{s['message_table']}{q}")
            tables[name] = {(int(g), f): v for g, f, v in rows}
            assert {g for g, _ in tables[name]} == with_text, name
        finally:
            drop(name, db, conn)
    if len(tables) == 2:
        a, b = tables["duckdb"], tables["mysql"]
        assert a.keys() == b.keys() and max(abs(a[k] - b[k]) for k in a) == 0.0
