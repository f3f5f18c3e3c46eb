"""--bert_keep_tokens and --bert_word_types (issue 25): what a message vector is made of, kept.

The token table (`tok$<featname>$<table>`, one row per word piece of each message, in order):
message_id; sentence, its index among the message's sentences as the model saw them (a
sentence longer than the model's limit cut in parts, one with no word pieces dropped); token,
the piece's index in it; piece, the word piece; word_index, the tokenizer's index of the word
the piece belongs to in its sentence (a word's pieces share it); word, that word's text (from
the tokenizer's offsets); vec, the token's vector after layer aggregation (the
rows a sentence's word aggregation reduces, as float32).

The word-type table (`wt$<featname>$<table>$<correl>`, one row per group and distinct word):
group_id; word, normalized as the tokenizer normalizes (lowercased, accents stripped by an
uncased BERT); n, its occurrences in the group; and per --bert_word_aggregation a vector
column `vec_<aggregation>` over the occurrences, an occurrence's vector being the mean of its
pieces' token vectors. Occurrences are collected in the stage (a table of this run's own) and
reduced there, so memory stays bounded by a chunk.

Token vectors are not staged (a token table is ~40x its message table): a run that keeps them
runs the model on every message again, and says so. Vector columns are FLOAT[d] on DuckDB and
float32 little-endian LONGBLOBs on MySQL (np.frombuffer(v, "<f4")).
"""
import time

import numpy as np

from ..stage import DUCK_AGG
from ..aggregate.kernels import token_vectors
from ..progress import Progress, notice


TOKEN_COLUMNS = ["message_id", "sentence", "token", "piece", "word_index", "word"]  # and vec


class TokenEmbedder:
    """Messages (lists of sentences) -> per message, its sentences as the model saw them:
    [(pieces [str], words [str], word ids [int], vectors [n, D] float64)], from the same word
    pieces, windows and encoder runs as the MessageEmbedder it wraps."""

    def __init__(self, embedder):
        self.embedder = embedder
        self.tokenizer = embedder.tokenizer
        normalizer = self.tokenizer.normalizer
        self.normalize = normalizer.normalize_str if normalizer is not None else str

    def __call__(self, messages):
        flat = [s for sents in messages for s in sents]
        encodings = self.tokenizer.encode_batch(flat, add_special_tokens=False) if flat else []
        limit, k = self.embedder.limit, 0
        per_message, seen = [], []
        for sents in messages:
            ids, meta = [], []
            for text in sents:
                e = encodings[k]
                k += 1
                words = _words(text, e.word_ids, e.offsets)
                for a in range(0, len(e.ids), limit):  # windows.split_long's cut
                    ids.append(np.array(e.ids[a:a + limit], np.int64))
                    meta.append((e.tokens[a:a + limit], words[a:a + limit], e.word_ids[a:a + limit]))
            per_message.append(ids)
            seen.append(meta)
        states = self.embedder.token_states(per_message) if any(per_message) else []
        out, k = [], 0
        for meta in seen:
            sentences = []
            for pieces, words, word_ids in meta:
                sentences.append((pieces, words, word_ids,
                                  token_vectors(states[k], self.embedder.layer_aggregation)))
                k += 1
            out.append(sentences)
        return out

    def occurrences(self, sentences):
        """[(word type, vector)] of a message's sentences (from __call__): each word's pieces in
        a sentence averaged, the word normalized as the tokenizer does."""
        out = []
        for _, words, word_ids, vectors in sentences:
            start = 0
            for t in range(1, len(words) + 1):
                if t == len(words) or word_ids[t] != word_ids[start] or word_ids[t] is None:
                    word = self.normalize(words[start]).strip()
                    if word:
                        out.append((word, vectors[start:t].mean(0)))
                    start = t
        return out


def _words(text, word_ids, offsets):
    """Each piece's word: the text from its word's first piece's start to its last piece's end."""
    spans = {}
    for w, (a, b) in zip(word_ids, offsets):
        if w is not None:
            lo, hi = spans.get(w, (a, b))
            spans[w] = (min(lo, a), max(hi, b))
    return [text[slice(*spans[w])].strip() if w is not None else text[a:b].strip()
            for w, (a, b) in zip(word_ids, offsets)]


def keep(engine, stage, batches, embedder, token_table, word_table, word_aggregation, id_type, group_type,
         total, progress):
    """Write the token table and/or the word-type table (either name None: not wanted) of the
    messages in `batches` ((messages [(message_id, group_id, sentences, hash)], rows, skipped)),
    each under a temporary name swapped in when complete; returns the summary's counts."""
    tokens_of = TokenEmbedder(embedder)
    notice("keeping tokens: token vectors are not staged, so every message runs through the model again")
    tmp_tokens = engine.temp_name(token_table) if token_table else None
    words = stage.run_table(f"group_id {stage.group_type}, word VARCHAR, vec FLOAT[]") if word_table else None
    counts = {"tokens_kept": 0}
    created, started = False, time.perf_counter()
    try:
        with Progress("tokens' messages", total, enabled=progress) as bar:
            for batch, n_rows, _ in batches:
                with engine.released():
                    per_message = tokens_of([sents for _, _, sents, _ in batch])
                rows = [(mid, s, t, piece, w, word)
                        for (mid, _, _, _), sents in zip(batch, per_message)
                        for s, (pieces, words_, word_ids, _) in enumerate(sents)
                        for t, (piece, word, w) in enumerate(zip(pieces, words_, word_ids))]
                vectors = [v for sents in per_message for *_, v in sents]
                if tmp_tokens and rows:
                    if not created:
                        created = True
                        _announce(len(rows), n_rows, total, vectors[0].shape[1])
                        text = engine.long_text_type
                        engine.create_table(tmp_tokens, [("message_id", id_type, False), ("sentence", "INTEGER", False),
                                                         ("token", "INTEGER", False), ("piece", text, False),
                                                         ("word_index", "INTEGER", False), ("word", text, False),
                                                         ("vec", engine.vector_type(vectors[0].shape[1]), False)])
                    engine.insert_vector_rows(tmp_tokens, TOKEN_COLUMNS, [list(c) for c in zip(*rows)],
                                              [("vec", np.concatenate(vectors))])
                    engine.commit()
                    counts["tokens_kept"] += len(rows)
                if words:
                    occ = [(gid, w, v) for (_, gid, _, _), sents in zip(batch, per_message)
                           for w, v in tokens_of.occurrences(sents)]
                    if occ:
                        stage.put_rows(words, ["group_id", "word"], [[g for g, _, _ in occ], [w for _, w, _ in occ]],
                                       np.stack([v for _, _, v in occ]).astype(np.float32))
                bar.update(n_rows)
        if tmp_tokens and created:
            engine.swap_in(tmp_tokens, token_table)
            engine.commit()
            counts["token_table"] = token_table
        if words:
            counts.update(word_table=word_table, word_types=_write_word_types(
                engine, stage, words, word_table, word_aggregation, group_type))
    except BaseException:
        if tmp_tokens:
            engine.drop_table(tmp_tokens)
            engine.commit()
        raise
    counts["tokens_seconds"] = round(time.perf_counter() - started, 2)
    return counts


def _announce(tokens, rows, total, dims):
    """The token table's size up front, from the first chunk's tokens per message."""
    expected = tokens / max(rows, 1) * (total or rows)
    notice(f"token table: about {expected:,.0f} tokens x {dims} floats, ~{expected * (dims * 4 + 40) / 2**30:.2f} GB")


def _write_word_types(engine, stage, words, word_table, aggregations, group_type):
    """Reduce the occurrences in the stage to one row per (group, word) into `word_table`."""
    aggs = ", ".join(f"{DUCK_AGG[a]}(v) AS a{k}" for k, a in enumerate(aggregations))
    lists = ", ".join(f"list(a{k} ORDER BY i) AS a{k}" for k in range(len(aggregations)))
    sql = (f"WITH u AS (SELECT group_id, word, unnest(range(len(vec))) AS i, unnest(vec) AS v FROM {words}),"
           f" a AS (SELECT group_id, word, i, {aggs} FROM u GROUP BY group_id, word, i),"
           f" n AS (SELECT group_id, word, count(*) AS n FROM {words} GROUP BY group_id, word)"
           f" SELECT a.group_id, a.word, n.n, {lists} FROM a JOIN n USING (group_id, word)"
           " GROUP BY a.group_id, a.word, n.n ORDER BY a.group_id, a.word")
    tmp = engine.temp_name(word_table)
    written, created = 0, False
    try:
        for rows in stage.rows(sql, [], batch_size=2000):
            if not created:
                created = True
                dims = len(rows[0][3])
                engine.create_table(tmp, [("group_id", group_type, False), ("word", engine.long_text_type, False),
                                          ("n", "BIGINT", False)]
                                    + [(f"vec_{a}", engine.vector_type(dims), False) for a in aggregations])
            engine.insert_vector_rows(tmp, ["group_id", "word", "n"], [list(c) for c in zip(*[r[:3] for r in rows])],
                                      [(f"vec_{a}", np.array([r[3 + k] for r in rows]))
                                       for k, a in enumerate(aggregations)])
            engine.commit()
            written += len(rows)
        if created:
            engine.swap_in(tmp, word_table)
            engine.commit()
    except BaseException:
        engine.drop_table(tmp)
        engine.commit()
        raise
    return written
