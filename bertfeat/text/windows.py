"""Sentences -> encoder windows -> token vectors per sentence (SPEC §3). Pure functions, no session.

A message of one sentence is one window, `[CLS] s [SEP]`; in a longer message every pair of
neighbouring sentences is a window, `[CLS] a [SEP] b [SEP]`, so each sentence is seen with its
context and a middle sentence is seen twice (its token vectors are the mean of both). A sentence
longer than half the model's positions is cut into pieces first, each piece a sentence. The
special tokens and type ids come from the model's own tokenizer (`learn_template`), so BERT's
`[CLS] a [SEP] b [SEP]`, RoBERTa's `<s> a </s></s> b </s>` and the rest all work alike.
"""
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Template:
    """The tokenizer's special tokens around one sentence and around a pair: for each, the special
    id segments (before, between, after the parts), their type ids, and each part's type id."""
    single: tuple
    pair: tuple


@dataclass(frozen=True)
class Plan:
    """Windows for a chunk of messages: `windows` [(ids, type_ids)], and per message, per
    sentence, the [(window index, start)] spans where the sentence's tokens sit."""
    windows: list
    spans: list


def load_tokenizer(path):
    """The model's fast tokenizer (tokenizer.json), without padding or truncation."""
    from tokenizers import Tokenizer
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def learn_template(tokenizer):
    """Learn the single and pair templates by post-processing two one-piece sentences."""
    a = tokenizer.encode("a", add_special_tokens=False)
    b = tokenizer.encode("b", add_special_tokens=False)
    single = tokenizer.post_process(a, None, add_special_tokens=True)
    pair = tokenizer.post_process(a, b, add_special_tokens=True)
    return Template(_segments(single, [a.ids]), _segments(pair, [a.ids, b.ids]))


def _segments(encoding, parts):
    ids, types, special = encoding.ids, encoding.type_ids, encoding.special_tokens_mask
    segments, current, part_types = [], [], []
    i = 0
    while i < len(ids):
        if special[i]:
            current.append(i)
            i += 1
        else:
            segments.append(current)
            current = []
            part_types.append(types[i])
            i += len(parts[len(part_types) - 1])
    segments.append(current)
    return (tuple(np.array([ids[j] for j in s], np.int64) for s in segments),
            tuple(np.array([types[j] for j in s], np.int64) for s in segments), tuple(part_types))


def word_pieces(tokenizer, sentences):
    """Word-piece ids of each sentence, without special tokens."""
    return [np.array(e.ids, np.int64) for e in tokenizer.encode_batch(sentences, add_special_tokens=False)]


def piece_limit(max_positions):
    """The longest sentence (in word pieces) a pair window holds beside another as long."""
    return (max_positions - 3) // 2


def split_long(pieces, limit):
    """Sentences as word pieces, each longer than `limit` cut into pieces of `limit`; a sentence
    with no word pieces is dropped."""
    out = []
    for p in pieces:
        out.extend(p[i:i + limit] for i in range(0, len(p), limit))
    return out


def make_window(template, a, b=None):
    """(ids, type_ids, starts): `a` alone, or `a` and `b` as a pair; `starts` holds where each
    part's tokens begin."""
    specials, special_types, part_types = template.single if b is None else template.pair
    parts = [a] if b is None else [a, b]
    ids, types, starts, pos = [], [], [], 0
    for k, segment in enumerate(specials):
        ids.append(segment)
        types.append(special_types[k])
        pos += len(segment)
        if k < len(parts):
            starts.append(pos)
            ids.append(parts[k])
            types.append(np.full(len(parts[k]), part_types[k], np.int64))
            pos += len(parts[k])
    return np.concatenate(ids), np.concatenate(types), tuple(starts)


def plan(template, messages):
    """The windows of a chunk of messages, each a list of sentences as word pieces (SPEC §3)."""
    windows, spans = [], []
    for sents in messages:
        where = [[] for _ in sents]
        if len(sents) == 1:
            ids, types, (a,) = make_window(template, sents[0])
            where[0].append((len(windows), a))
            windows.append((ids, types))
        for i in range(len(sents) - 1):
            ids, types, (a, b) = make_window(template, sents[i], sents[i + 1])
            where[i].append((len(windows), a))
            where[i + 1].append((len(windows), b))
            windows.append((ids, types))
        spans.append(where)
    return Plan(windows, spans)


def dlatk_plan(template, messages):
    """The windows and spans DLATK 1.3.15 uses (--dlatk_compat), reproduced for its numbers.

    DLATK runs a message of n sentences as the n-1 pairs (s_i, s_i+1) plus s_n-1 alone (one
    window of its own for a one-sentence message), and reads a sentence's tokens at positions
    counted from the window's start without the special tokens: the first part at [0, len)
    (so [CLS] in, its last piece out), the second at [len(first), ...) (the first part's last
    piece and [SEP] in). Each sentence's vectors are averaged over the windows holding it, as
    in `plan`. Measured against DLATK 1.3.15's own table (tests/data/dlatk_1.3.15): <= 3e-7."""
    windows, spans = [], []
    for sents in messages:
        where = [[] for _ in sents]
        for i in range(len(sents)):
            pair = sents[i:i + 2]
            ids, types, _ = make_window(template, *pair)
            where[i].append((len(windows), 0))
            if len(pair) == 2:
                where[i + 1].append((len(windows), len(pair[0])))
            windows.append((ids, types))
        spans.append(where)
    return Plan(windows, spans)


def sentence_tokens(outputs, spans, length):
    """A sentence's token vectors [layers, length, H] from the window outputs that saw it:
    one window's, or the mean of two (in float64, kept as float32, the runtime's precision)."""
    parts = [outputs[w][:, start:start + length] for w, start in spans]
    if len(parts) == 1:
        return parts[0]
    return ((parts[0].astype(np.float64) + parts[1]) / 2).astype(np.float32)


def piece_window(template, piece):
    """The window of one word piece alone, and where it sits (for --bert_no_context)."""
    ids, types, (start,) = make_window(template, np.array([piece], np.int64))
    return (ids, types), start
