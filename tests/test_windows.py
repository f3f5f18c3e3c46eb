"""text/windows.py against the reference's windows (tests/reference.py writes each family's
template out by hand): BERT's WordPiece pair template and RoBERTa's byte-level BPE one."""
import numpy as np
import pytest

from bertfeat.text import windows

from tiny_models import TEXT, _bpe_tokenizer, bert_tokenizer_dir

pytestmark = pytest.mark.unit

pytest.importorskip("transformers", reason="the reference tokenizer is Hugging Face's (pip install 'bertfeat[export]')")


def reference_for(folder, roberta):
    from reference import Reference
    from transformers import AutoTokenizer
    ref = Reference.__new__(Reference)  # the window and piece code only: no model needed
    ref.tok, ref.roberta, ref.limit = AutoTokenizer.from_pretrained(str(folder)), roberta, 6
    return ref


@pytest.fixture(params=["bert", "roberta"])
def family(request, tmp_path):
    if request.param == "bert":
        return bert_tokenizer_dir(), False
    _bpe_tokenizer(tmp_path)
    return tmp_path, True


MESSAGES = [TEXT[:1], TEXT[:2], TEXT[:5], ["A rather long sentence that is cut into pieces of six word pieces each."],
            [TEXT[3], "", TEXT[4]]]


def test_planner_matches_the_reference_windows_and_spans(family):
    folder, roberta = family
    ref = reference_for(folder, roberta)
    tokenizer = windows.load_tokenizer(folder / "tokenizer.json")
    pieces = [windows.split_long(windows.word_pieces(tokenizer, m), ref.limit) for m in MESSAGES]
    assert [[p.tolist() for p in ps] for ps in pieces] == [ref.pieces(m) for m in MESSAGES]
    assert len(pieces[3]) > 2  # the long sentence was cut
    plan = windows.plan(windows.learn_template(tokenizer), pieces)
    expected, spans = [], []
    for sents in (ref.pieces(m) for m in MESSAGES):
        where = [[] for _ in sents]
        if len(sents) == 1:
            ids, types, a, _ = ref.window(sents[0])
            where[0].append((len(expected), a))
            expected.append((ids, types))
        for i in range(len(sents) - 1):
            ids, types, a, b = ref.window(sents[i], sents[i + 1])
            where[i].append((len(expected), a))
            where[i + 1].append((len(expected), b))
            expected.append((ids, types))
        spans.append(where)
    assert [(i.tolist(), t.tolist()) for i, t in plan.windows] == expected
    assert plan.spans == spans


def test_sentence_tokens_take_the_right_slices_and_average_two_views():
    outputs = [np.arange(2 * 10 * 3, dtype=np.float32).reshape(2, 10, 3) + 1000 * w for w in range(2)]
    one = windows.sentence_tokens(outputs, [(1, 4)], 3)
    assert np.array_equal(one, outputs[1][:, 4:7])
    two = windows.sentence_tokens(outputs, [(0, 2), (1, 5)], 3)
    assert two.dtype == np.float32 and np.allclose(two, (outputs[0][:, 2:5] + outputs[1][:, 5:8]) / 2)


def test_no_context_window_holds_the_piece_alone(family):
    folder, roberta = family
    ref = reference_for(folder, roberta)
    tokenizer = windows.load_tokenizer(folder / "tokenizer.json")
    piece = windows.word_pieces(tokenizer, ["lake"])[0][0]
    (ids, types), start = windows.piece_window(windows.learn_template(tokenizer), piece)
    want_ids, want_types, want_start, _ = ref.window([int(piece)])
    assert (ids.tolist(), types.tolist(), start) == (want_ids, want_types, want_start)
