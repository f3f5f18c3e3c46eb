"""Experiment (issue 10): ONNX Runtime's OpenVINO execution provider for fp32 on the CPU.

    .venv/bin/python bench/openvino.py --prepare [--limit 150]     # torch venv: graph + windows
    /tmp/ovenv/bin/python bench/openvino.py [--limit 150]           # a venv with onnxruntime-openvino

onnxruntime-openvino replaces the `onnxruntime` module (like onnxruntime-gpu), so it lives in its
own venv: `python3 -m venv /tmp/ovenv && /tmp/ovenv/bin/pip install onnxruntime-openvino &&
/tmp/ovenv/bin/pip install -e .` (bertfeat's base dependencies; no extra). OpenVINO does not
run ONNX Runtime's fused contrib ops (Attention, SkipLayerNormalization), so it gets the
unfused traced graph; ONNX Runtime's CPU provider runs the shipped fused graph. Same
length-sorted 2048-token batches, all 6 layers of all-MiniLM-L6-v2, 2 threads each; printed:
real tok/s vs the CPU provider and the largest difference to its output (relative to the
largest value; the export contract is 1e-4).
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

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
WORK = Path(tempfile.gettempdir()) / "bertfeat-openvino"


def prepare(args):
    import csv
    import pickle

    from int8_nbits import raw_graph
    from int8_static import corpus_windows

    from bertfeat.exporter import locate
    WORK.mkdir(exist_ok=True)
    entry = locate(MODEL, 6, "fp32", args.model_dir)
    raw_graph(WORK, 6)
    with open(DEFAULT_CSV, encoding="utf-8", newline="") as f:
        posts = [r["message"] for r in csv.DictReader(f)]
    with open(WORK / "windows.pkl", "wb") as f:
        pickle.dump(corpus_windows(entry, posts[:args.limit]), f)
    (WORK / "fused.onnx").write_bytes((entry / "model.onnx").read_bytes())
    for name in ("tokenizer.json", "manifest.json"):
        (WORK / name).write_bytes((entry / name).read_bytes())
    print(f"wrote {WORK}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--prepare", action="store_true")
    p.add_argument("--limit", type=int, default=150)
    p.add_argument("--model_dir", default=str(ROOT / "models"))
    args = p.parse_args()
    if args.prepare:
        return prepare(args)
    import pickle

    import onnxruntime as ort

    from runtime import batches_of, cpu_isa
    with open(WORK / "windows.pkl", "rb") as f:
        windows = pickle.load(f)
    lengths = np.array([len(w[0]) for w in windows])
    from bertfeat.runtime import Encoder
    plan = list(Encoder.batches(type("B", (), {"batch_tokens": 2048})(), lengths))
    feeds = list(batches_of(windows, lengths, plan))
    layers = np.arange(6, dtype=np.int64)

    def session(graph, provider, options=None):
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = 2, 1
        return ort.InferenceSession(str(WORK / graph), so, providers=[(provider, options or {})])

    runs = {"CPU provider, fused graph (shipped)": session("fused.onnx", "CPUExecutionProvider"),
            "CPU provider, unfused graph": session("raw.onnx", "CPUExecutionProvider")}
    for precision in ("FP32", "ACCURACY", "FP16"):
        runs[f"OpenVINO CPU, precision {precision}"] = session(
            "raw.onnx", "OpenVINOExecutionProvider",
            {"device_type": "CPU", "precision": precision, "num_of_threads": "2"})
    outs, secs = {}, {}
    for name, s in runs.items():
        names = {i.name for i in s.get_inputs()}

        def call(ids, types, mask, s=s, names=names):
            f = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "layers": layers}
            return s.run(["hidden_states"], {k: v for k, v in f.items() if k in names})[0]
        for b in feeds[:3]:
            call(*b)  # first shapes compiled outside the clock
        best = None
        for _ in range(2):
            t = time.perf_counter()
            got = [call(*b) for b in feeds]
            best = min(best or 1e9, time.perf_counter() - t)
        outs[name], secs[name] = got, best
    real = int(lengths.sum())
    base = "CPU provider, fused graph (shipped)"
    print(f"# {cpu_isa()}; {os.cpu_count()} CPUs; onnxruntime-openvino {ort.__version__}; {len(windows)}"
          f" windows ({real} real tokens), {len(plan)} batches; all 6 layers; best of 2 runs\n")
    print("| run | real tok/s | vs shipped | max difference to shipped (relative) |")
    print("|---|---:|---:|---:|")
    for name in runs:
        diff = max(float(np.abs(a - b)[:, m.astype(bool)].max() / np.abs(b[:, m.astype(bool)]).max())
                   for a, b, (_, _, m) in zip(outs[name], outs[base], feeds))
        print(f"| {name} | {real / secs[name]:,.0f} | {secs[base] / secs[name]:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
