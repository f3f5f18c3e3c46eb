"""What an export is checked with: fp32 against PyTorch (`validate`, TOLERANCE), reduced precision
against fp32 per layer on word-piece means (`agreement`, the gate's windows and metric)."""
import math

import numpy as np


TOLERANCE = 1e-4  # max |onnx - torch| / max(1, max |torch|) on the validation windows


VALIDATION_TEXT = [
    "Mr. Smith arrived at 5 p.m. on Jan. 3rd!", "Did he?",
    "I have been a member of the site for quite a while now and am pleased to say so.",
    "The weather was lovely, so we walked to the lake and back before lunch.",
    "lol that was the best show ever :)", "Honestly, I don't know what to think about it anymore.",
    "Short.", "We finally painted the kitchen, and it looks great in the morning light.",
]


# Reduced precision is checked on more, and more varied, windows: informal posts are where int8
# activation outliers show (each consecutive pair is one window, as SPEC §3 builds them).
AGREEMENT_TEXT = VALIDATION_TEXT + [
    "OMG!!! u guys will NOT believe what happened at work today... my boss actually said thank you :O",
    "Anyway, back to the point: the meeting ran three hours over, nobody took notes, and we decided"
    " exactly nothing, which is pretty much how every Tuesday goes around here.",
    "I've been listening to the same album on repeat since 2004 & I'm not even sorry.",
    "http://www.example.com/blog/2004/07/30/entry.html <- read this first, then come back.",
    "Grocery list: eggs, milk, 2 lbs of apples, coffee (the good kind), and more coffee.",
    "My grandmother turned 93 yesterday; she still beats everyone at cards and refuses to retire"
    " from her volunteer job at the library, where she has worked every Thursday since 1961.",
    "Why does it always rain on the one day I forget my umbrella?? seriously.",
    "Quote of the day: \"Be yourself; everyone else is already taken.\" -- Oscar Wilde",
    "The new policy (effective Monday, 8 a.m.) requires all staff to sign in at the front desk.",
    "Blah blah blah. Whatever. I'm going to bed.",
    "We drove 450 miles in one day, stopped twice for gas, once for pie, and saw exactly one moose.",
    "In chapter 3 the author argues that memory is reconstructive rather than reproductive, which"
    " explains why eyewitness accounts so often disagree on the small details.",
    "haha yes!! see you at 7 :-) bring the dog",
    "Ugh, the code compiled on the first try and now I am deeply suspicious of everything.",
    "Posted by Anna at 11:42 PM | 3 comments | Labels: life, work, cats",
    "Dear diary, today I learned that you should never microwave a fork. Never. Ever.",
]


# Short posts are where int8 agrees least: in a window of a few pieces the special tokens' large
# activations set the one activation scale, and they weigh most in the token mean (the worst
# msgs100u windows are 7-13 pieces). These run as pairs and alone, as one-sentence messages do.
# Punctuation-only sentences (". . ." splits into "." sentences) make windows of one or two word
# pieces among four special tokens, where int8 can fail outright: all-mpnet-base-v2's
# "<s> . </s></s> . </s>" measured cosine 0.32 to fp32 at layer 8 with a graph whose other
# windows all agreed to >= 0.995.
SHORT_TEXT = [".", ".", "!", "?", "...", "-", ":)", "what?!", "Wow.", "ok", "Nope!!", "hmm...", "seriously?",
              "yay :)", "Thanks!", "no way.", "LOL", "Good night, all.", "ugh."]


AGREEMENT_METRIC = "word-piece-mean"  # what `agreement` compares (it was every token's mean before 0.4)


def release_memory():
    """Hand freed memory back to the OS: a base-size model's PyTorch weights and the fusion's
    ONNX protobufs are ~0.5 GB each, and glibc keeps freed blocks in the process otherwise
    (bench/LOG.md "Base-size models": what a base-size export peaks at)."""
    import ctypes
    import gc
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def validate(path, batch, reference):
    import onnxruntime as ort
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(["hidden_states"], {i.name: batch[i.name] for i in sess.get_inputs()})[0]
    real = batch["attention_mask"].astype(bool)
    diff = np.abs(out - reference)[:, real].max()
    del sess
    release_memory()
    return float(diff / max(1.0, np.abs(reference[:, real]).max()))


def agreement_feeds(tokenizer_path, input_names, depth, max_positions=512, word_pieces=False):
    """Input dicts of the agreement windows (one window each, cut to the model's positions),
    for calibration and checks; with `word_pieces`, (input dict, bool mask of the window's word
    pieces: not the template's <s>/</s>/[CLS]/[SEP]) pairs."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(tokenizer_path))
    tok.no_padding()
    tok.enable_truncation(max_length=max_positions)
    out = []
    pairs = list(zip(AGREEMENT_TEXT, AGREEMENT_TEXT[1:])) + list(zip(SHORT_TEXT, SHORT_TEXT[1:]))
    for a, b in pairs + [(t, None) for t in SHORT_TEXT]:
        enc = tok.encode(a, b) if b is not None else tok.encode(a)
        feeds = {"input_ids": np.array([enc.ids]), "attention_mask": np.ones((1, len(enc.ids)), np.int64),
                 "token_type_ids": np.array([enc.type_ids]), "layers": np.arange(depth)}
        feeds = {k: feeds[k] for k in input_names}
        out.append((feeds, np.array(enc.special_tokens_mask) == 0) if word_pieces else feeds)
    return out


def agreement(fp32_entry, path, manifest, precision):
    """Per layer, the smallest cosine over the agreement windows of `path` vs fp32 word-piece-mean
    vectors, and the provider it was measured on (CUDA for fp16 when there). Word pieces only, as
    a message's vector is made: the template's special tokens carry very large activations in
    some models' later layers (all-mpnet-base-v2's), which made a mean over every token agree
    to 0.995 where the words' vectors agreed to 0.92 on real posts."""
    import onnxruntime as ort
    provider = ("CUDAExecutionProvider" if precision == "fp16" and
                "CUDAExecutionProvider" in ort.get_available_providers() else "CPUExecutionProvider")
    feeds = agreement_feeds(fp32_entry / "tokenizer.json", manifest["inputs"], manifest["depth"],
                            manifest["max_positions"], word_pieces=True)
    model = fp32_entry / "model.onnx"
    refs = token_means(str(model), model.stat().st_mtime_ns, provider, feeds)
    got = token_means(str(path), None, provider, feeds)
    refs, got = refs.astype(np.float64), got.astype(np.float64)  # float32 cosines resolve only ~1e-7
    cos = (refs * got).sum(-1) / np.linalg.norm(refs, axis=-1) / np.linalg.norm(got, axis=-1)  # [windows, layers]
    return [float(c) for c in cos.min(0)], provider


_FP32_MEANS = {}  # the fp32 export's token means, computed once per export (a search measures many graphs)


def token_means(path, stamp, provider, feeds):
    """[windows, layers, hidden]: each window's word-piece-mean vector per layer (`feeds`: (input
    dict, word-piece mask) pairs); cached by `stamp` (the fp32 graph's mtime) when given."""
    key = (path, stamp, provider)
    if stamp is not None and key in _FP32_MEANS:
        return _FP32_MEANS[key]
    import onnxruntime as ort
    session = ort.InferenceSession(path, providers=[provider])
    out = np.stack([session.run(["hidden_states"], f)[0][:, 0, mask].mean(1) for f, mask in feeds])
    if stamp is not None:
        _FP32_MEANS.clear()
        _FP32_MEANS[key] = out
    return out


def recorded(cosines):
    """Cosines as the manifest keeps them: 6 digits, rounded down (a recorded value never
    passes the gate where the measured one did not)."""
    if isinstance(cosines, list):
        return [recorded(c) for c in cosines]
    return math.floor(cosines * 1e6) / 1e6
