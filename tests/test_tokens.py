"""--bert_keep_tokens and --bert_word_types (issue 25): token vectors against float64 PyTorch,
word types against their occurrences computed here, Parquet round trips; on both engines."""
import csv

import duckdb
import numpy as np
import pytest

import bertfeat
from bertfeat.tables import connect
from reference import Reference
from tiny_models import make_model
from helpers import MSGS_CSV

pytest.importorskip("torch", reason="the exporter needs torch (pip install 'bertfeat[export]')")

LAYERS, LAYER_AGGS, WORD_AGGS = [0, -1], ["concatenate", "mean"], ["mean", "max"]
OWN = [(1, 10, "Mr. Smith arrived at 5 p.m. on Jan. 3rd! Did he? The the weather was lovely."),
       (2, 10, "Café naïve résumé: ÉCOLE école."),
       (3, 11, "lol\nthat was the best show ever :)\nWe walked to the lake. " + "and back again " * 30)]


def _messages():
    """Our own three and every 41st msgs100u post (real text, not picked), as (id, group, text)."""
    with open(MSGS_CSV, encoding="utf-8", newline="") as f:
        real = [r for r in csv.DictReader(f)][::41][:10]
    return OWN + [(100 + k, 20 + k % 3, r["message"]) for k, r in enumerate(real)]


def _vector(v):
    return np.frombuffer(v, "<f4") if isinstance(v, (bytes, bytearray)) else np.asarray(v, np.float32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_tok")
    return {f: str(make_model(f, root / f)) for f in ("bert", "roberta")}


@pytest.mark.parametrize("engine_name", ["duckdb", "mysql"])
@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_tokens_and_word_types_match_independent_computations(family, engine_name, tiny, tmp_path, request):
    if engine_name == "duckdb":
        db, conn = "d", {"db_engine": "duckdb", "db_dir": str(tmp_path)}
    else:
        db, conn = request.getfixturevalue("mysql_db")
        conn = {"db_engine": "mysql", **conn}
    messages = _messages()
    with connect(db, create=True, **conn) as engine:
        engine.execute("CREATE TABLE msgs (message_id BIGINT, user_id BIGINT, message TEXT)")
        engine.insert_rows("msgs", ["message_id", "user_id", "message"], messages)
        engine.commit()
    bertfeat.add_sent_tokenized(db, "msgs", progress=False, **conn)
    s = bertfeat.add_bert(db, "msgs", "user_id", bert_model=tiny[family], bert_layers=LAYERS,
                          bert_layer_aggregation=LAYER_AGGS, bert_word_aggregation=WORD_AGGS, bert_keep_tokens=True,
                          bert_word_types=True, model_dir=str(tmp_path / "m"), stage_dir=str(tmp_path),
                          progress=False, chunk_messages=4, **conn)
    with connect(db, **conn) as engine:
        sentences = {m: __import__("json").loads(t) for m, t in
                     engine.query("SELECT message_id, message FROM msgs_stoks")}
        tokens = engine.query(f"SELECT message_id, sentence, token, piece, word_index, word, vec FROM"
                              f" {engine.q(s['token_table'])} ORDER BY message_id, sentence, token")
        types = engine.query(f"SELECT group_id, word, n, vec_mean, vec_max FROM {engine.q(s['word_table'])}"
                             " ORDER BY group_id, word")
    assert s["tokens_kept"] == len(tokens) and s["word_types"] == len(types)

    # 1. every token's vector equals float64 PyTorch's (SPEC §4's 1e-4), pieces as HF's tokenizer cuts them
    ref = Reference(tiny[family])
    ref.prefetch(list(sentences.values()))
    rows_of = {}
    for row in tokens:
        rows_of.setdefault(row[0], []).append(row)
    assert set(rows_of) == {m for m, _, _ in messages}
    worst = 0.0
    for mid, sents in sentences.items():
        expected = ref.token_vectors(sents, [0, 2], LAYER_AGGS)
        pieces = [ref.tok.convert_ids_to_tokens(p) for p in ref.pieces(sents)]
        got = rows_of[mid]
        assert [(r[1], r[2]) for r in got] == [(s_, t) for s_, p in enumerate(pieces) for t in range(len(p))]
        assert [r[3] for r in got] == [t for p in pieces for t in p]
        want = np.concatenate(expected)
        have = np.stack([_vector(r[6]) for r in got]).astype(np.float64)
        worst = max(worst, float(np.abs(have - want).max() / max(1.0, np.abs(want).max())))
    assert worst <= 1e-4, worst

    # 2. word types: the occurrences (a word's pieces averaged) grouped by normalized word, here in numpy
    normalizer = ref.tok.backend_tokenizer.normalizer
    group_of = {m: g for m, g, _ in messages}
    occurrences = {}
    for mid, sent, _, _, w, word, vec in tokens:
        occurrences.setdefault((mid, sent, w), (word, []))[1].append(_vector(vec).astype(np.float64))
    by_type = {}
    for (mid, _, _), (word, vecs) in occurrences.items():
        key = (normalizer.normalize_str(word) if normalizer else word).strip()
        if not key:  # a word with no text (a piece of white space or control characters) is no type
            continue
        by_type.setdefault((group_of[mid], key), []).append(np.mean(vecs, 0))
    assert sorted(by_type) == [(g, w) for g, w, *_ in types]
    for g, w, n, mean, biggest in types:
        occ = np.array(by_type[(g, w)])
        assert n == len(occ)
        np.testing.assert_allclose(_vector(mean), occ.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(_vector(biggest), occ.max(0), rtol=1e-5, atol=1e-6)
    if family == "bert":  # an uncased model's word types are lowercased, accents stripped
        assert {"cafe", "ecole", "the"} <= {w for _, w, *_ in types}
        count = {(g, w): n for g, w, n, *_ in types}
        assert count[(10, "the")] == 2 and count[(10, "ecole")] == 2  # "The the", "ÉCOLE école"

    # 3. Parquet: the same rows and numbers as the tables
    paths = bertfeat.write_parquet(db, [s["token_table"], s["word_table"]], str(tmp_path / "pq"), **conn)
    pq_tokens = duckdb.execute(f"SELECT * FROM read_parquet('{paths[0]}')").fetchall()
    assert [r[:6] for r in pq_tokens] == [r[:6] for r in tokens]
    assert all(np.array_equal(np.asarray(a[6], np.float32), _vector(b[6])) for a, b in zip(pq_tokens, tokens))
    pq_types = duckdb.execute(f"SELECT * FROM read_parquet('{paths[1]}')").fetchall()
    assert [r[:3] for r in pq_types] == [r[:3] for r in types]
    assert all(np.array_equal(np.asarray(a[3], np.float32), _vector(b[3])) for a, b in zip(pq_types, types))


@pytest.mark.unit
def test_each_piece_gets_its_words_text():
    from bertfeat.jobs.tokens import _words
    text = "Dragonswood site, isn't it?"
    # pieces: dragons ##wood site , isn ' t it ?  (word ids as a BERT pre-tokenizer gives them)
    word_ids = [0, 0, 1, 2, 3, 4, 5, 6, 7]
    offsets = [(0, 7), (7, 11), (12, 16), (16, 17), (18, 21), (21, 22), (22, 23), (24, 26), (26, 27)]
    assert _words(text, word_ids, offsets) == ["Dragonswood", "Dragonswood", "site", ",", "isn", "'", "t", "it", "?"]
