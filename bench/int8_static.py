"""Experiment (issue 10): static int8 (QDQ, activation scales calibrated once) so int8 can batch.

    .venv/bin/python bench/int8_static.py [--calibrate 60] [--limit 150]

Dynamic int8 (what bertfeat ships) computes each MatMul's activation scale per call, so a window
must run alone (its vector may not depend on batch-mates). Static quantization fixes the scales
from calibration text, so windows can be batched like fp32. Here: the shipped fp32 export
(depth 5) quantized statically by onnxruntime.quantization (QDQ, per-channel 7-bit weights, u8
activations, MinMax calibration on the windows of `--calibrate` msgs100u posts taken from the
END of the corpus), then run batched on the windows of the first `--limit` posts (not
calibrated on). Printed: speed vs fp32 batched and vs shipped dynamic int8, and window
token-mean cosine to fp32 at layer 4 (the bar: 0.995 on every window).
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from add_bert import DEFAULT_CSV, ROOT  # noqa: E402
from runtime import cpu_isa  # noqa: E402

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def corpus_windows(entry, posts):
    from bertfeat.models import read_manifest
    from bertfeat.text import windows as w
    from bertfeat.text.sentences import split_sentences
    tokenizer = w.load_tokenizer(entry / "tokenizer.json")
    limit = w.piece_limit(read_manifest(entry)["max_positions"])
    pieces = [w.split_long(w.word_pieces(tokenizer, split_sentences(p)), limit) for p in posts]
    return w.plan(w.learn_template(tokenizer), pieces).windows


def main():
    import csv
    p = argparse.ArgumentParser()
    p.add_argument("--calibrate", type=int, default=60)
    p.add_argument("--limit", type=int, default=150)
    p.add_argument("--model_dir", default=str(ROOT / "models"))
    args = p.parse_args()
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from bertfeat.exporter import locate
    from bertfeat.runtime import Encoder
    fp32 = Encoder(locate(MODEL, 5, "fp32", args.model_dir), threads=2)
    dyn = Encoder(locate(MODEL, 5, "int8", args.model_dir), threads=2)
    with open(DEFAULT_CSV, encoding="utf-8", newline="") as f:
        posts = [r["message"] for r in csv.DictReader(f)]
    test = corpus_windows(fp32.entry, posts[:args.limit])
    calib = corpus_windows(fp32.entry, posts[-args.calibrate:])
    layer = np.asarray([4], np.int64)

    class Reader(CalibrationDataReader):  # a fresh one per quantization
        def __init__(self):
            self.items = iter(calib)

        def get_next(self):
            w = next(self.items, None)
            if w is None:
                return None
            ids = np.asarray(w[0], np.int64)[None]
            feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids":
                     np.asarray(w[1], np.int64)[None], "layers": layer}
            return {k: v for k, v in feeds.items() if k in fp32.input_names}

    variants, calib_s = {}, {}
    for label, fmt, ops in (("static int8 QDQ (MatMul) batched", QuantFormat.QDQ, ["MatMul"]),
                            ("static int8 QDQ (MatMul, Attention) batched", QuantFormat.QDQ,
                             ["MatMul", "Attention"])):
        work = Path(tempfile.mkdtemp(prefix="bertfeat-static-"))
        t = time.perf_counter()
        quantize_static(str(fp32.entry / "model.onnx"), str(work / "model.onnx"), Reader(),
                        quant_format=fmt, per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, op_types_to_quantize=ops)
        calib_s[label] = time.perf_counter() - t
        for name in ("tokenizer.json", "manifest.json"):
            (work / name).write_bytes((fp32.entry / name).read_bytes())
        variants[label] = Encoder(work, threads=2)  # its manifest says fp32 (batched): static scales allow it
    timings, outs = {}, {}
    for name, enc in (("fp32 batched", fp32), ("dynamic int8 per window (shipped)", dyn), *variants.items()):
        enc.run(test[:20], [4])
        t = time.perf_counter()
        outs[name] = enc.run(test, [4])
        timings[name] = time.perf_counter() - t
    real = sum(len(w[0]) for w in test)
    print(f"# {cpu_isa()}; {os.cpu_count()} CPUs; {len(test)} test windows ({real} real tokens) of the first"
          f" {args.limit} posts; calibrated on {len(calib)} windows of the last {args.calibrate} posts"
          f" ({', '.join(f'{s:.0f}' for s in calib_s.values())} s)\n")
    print("| run | seconds | real tok/s | vs fp32 | min window cosine to fp32 (L4) |")
    print("|---|---:|---:|---:|---:|")
    ref = np.stack([o[0].mean(0) for o in outs["fp32 batched"]])
    for name, secs in timings.items():
        got = np.stack([o[0].mean(0) for o in outs[name]])
        cos = (ref * got).sum(1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
        print(f"| {name} | {secs:.2f} | {real / secs:.0f} | {timings['fp32 batched'] / secs:.2f}x | {cos.min():.4f} |")


if __name__ == "__main__":
    main()
