"""The int8 recipes bertfeat tries on this CPU (bertfeat/exporter/int8.py) side by side (issue 10).

    .venv/bin/python bench/int8_recipes.py [--windows N] [--model_dir DIR] [--rounds 3]

Each recipe of `exporter.int8_recipes()` (three where u8 x s8 sums are exact, VNNI / AMX, three
others elsewhere) is built by the exporter's own code from the depth-6 fp32 export of
all-MiniLM-L6-v2 and run by the runtime as bertfeat runs it (per window: one window per call, 2
calls in parallel; per token: length-sorted batches like fp32), in alternating timed rounds.
Printed: real tok/s with all 6 layers returned, the ratio to fp32 (best round against best round,
and per round), and per layer the smallest cosine of a window's token-mean vector to fp32's over
the msgs100u windows (the bar is 0.995), plus the agreement the export gate measures on its
built-in windows. `--ffn_outputs_int8` adds per-token rows that quantize the FFN output
projections symmetrically, without the GELU shift (their input smoothed with alpha 0.75 or 0.5):
the experiment behind the shift.
"""
import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_CSV, MODEL, ROOT, header, windows_by_group  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--windows", type=int, default=0, help="0 = every msgs100u window")
    ap.add_argument("--model_dir", default=str(ROOT / "models"))
    ap.add_argument("--ffn_outputs_int8", action="store_true")
    ap.add_argument("--rounds", type=int, default=3, help="alternating timed rounds")
    args = ap.parse_args()
    import onnxruntime as ort

    from bertfeat.exporter import agreement_feeds, export, int8, int8_recipes
    from bertfeat.exporter.graph import fused_source
    from bertfeat.exporter.validate import agreement
    from bertfeat.models import read_manifest
    from bertfeat.runtime import Encoder, int8_dot_is_exact
    fp32 = export(MODEL, "fp32", 6, args.model_dir)
    manifest = read_manifest(fp32)
    layers = list(range(6))
    work = Path(tempfile.mkdtemp(prefix="bertfeat-int8-"))
    groups, _, _ = windows_by_group(str(work), DEFAULT_CSV, 0, args.model_dir)
    windows = [w for ws in groups.values() for w in ws]
    if args.windows:
        windows = windows[::max(1, len(windows) // args.windows)][:args.windows]
    tokens = sum(len(w[0]) for w in windows)
    feeds = agreement_feeds(fp32 / "tokenizer.json", manifest["inputs"], 6, manifest["max_positions"])
    rows = [("fp32 (batched)", fp32, None)]
    kept = fp32 / "model.onnx"
    fused = fused_source(fp32, manifest, work / "fused.onnx")[0]
    recipes = [(r.label.split("-smooth")[0], r.convert, r.per_window, fused if r.graph == "fused" else kept)
               for r in int8_recipes()]
    if args.ffn_outputs_int8:
        ffn2 = int8.ffn_output_matmuls(fp32 / "model.onnx")

        def ffn2_int8(alpha):
            def convert(src, target, feeds):
                smoothed = int8.smooth_activations(src, target.parent / "s.onnx", feeds, int8.SMOOTH_ALPHA,
                                                   alphas={n: alpha for n in ffn2})
                int8.per_token_int8(smoothed, target, weight_bits=8 if int8_dot_is_exact() else 7)
            return convert
        recipes += [(f"per token, FFN outputs int8 too (their smoothing alpha {a})", ffn2_int8(a), False, kept)
                     for a in (0.75, 0.5)]
    for label, convert, per_window, source in recipes:
        folder = work / str(len(rows))
        folder.mkdir()
        shutil.copy(fp32 / "tokenizer.json", folder)
        (folder / "manifest.json").write_text(json.dumps({**manifest, "precision": "int8", "per_window": per_window}))
        convert(source, folder / "model.onnx", feeds)
        gate, _ = agreement(fp32, folder / "model.onnx", manifest, "int8")
        rows.append((label, folder, gate))
    print(header(f"exact int8 sums (8-bit weights allowed): {int8_dot_is_exact()}") + f";"
          f" onnxruntime {ort.__version__}; {len(windows)} msgs100u windows, {tokens} real tokens; all 6 layers"
          " returned\n")
    print(f"| recipe | real tok/s (best of {args.rounds}) | vs fp32, best | vs fp32 per round (median, range) |"
          " min window cosine to fp32, L0 .. L5 (msgs100u) | export gate L0 .. L5 |")
    print("|---|---:|---:|---|---|---|")
    encoders = [Encoder(entry, threads=2) for _, entry, _ in rows]
    seconds = [[] for _ in rows]
    got = [None] * len(rows)
    for enc in encoders:
        enc.run(windows[:50], layers)
    for _ in range(args.rounds):  # alternating: this host's speed drifts between runs (bench/README.md)
        for k, enc in enumerate(encoders):
            t = time.perf_counter()
            out = enc.run(windows, layers)
            seconds[k].append(time.perf_counter() - t)
            got[k] = np.stack([w.mean(1) for w in out])  # [windows, layers, H]: token means only (memory)
            del out
    for (label, _, gate), out, secs in zip(rows, got, seconds):
        per_round = [f / s for f, s in zip(seconds[0], secs)]
        a, b = got[0], out
        worst = ((a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)).min(0)
        print(f"| {label} | {tokens / min(secs):,.0f} | {min(seconds[0]) / min(secs):.2f}x |"
              f" {np.median(per_round):.2f}x ({min(per_round):.2f} .. {max(per_round):.2f}) |"
              f" {' '.join(f'{c:.4f}' for c in worst)} | {' '.join(f'{c:.4f}' for c in gate) if gate else '-'} |",
              flush=True)

if __name__ == "__main__":
    sys.exit(main())
