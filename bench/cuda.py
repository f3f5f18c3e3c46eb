"""The CUDA path end to end, for a machine with a GPU: what a user's `--device cuda` run gives.

    python bench/cuda.py [--csv tests/data/msgs100u.csv] [--work DIR]

1. Which ONNX Runtime is installed, the CUDA it was built for, its providers, and whether the
   CUDA provider starts in a process that never imported torch (as a user's run does not).
2. --add_bert on msgs100u (all-MiniLM-L6-v2, default layer) three times, each into its own
   database and stage: CPU fp32 (the reference), CUDA fp32, CUDA fp16; message vectors kept.
   Prints wall time per run, and agreement with the CPU: max |diff| of the group features and
   the minimum message-vector cosine over all messages.
Then run bench/runtime.py --device cuda for the runtime-only table.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def environment():
    import onnxruntime as ort
    info = getattr(ort.capi, "build_and_package_info", None)
    out = {"onnxruntime": ort.__version__, "package": getattr(info, "package_name", "?"),
           "built_for_cuda": getattr(info, "cuda_version", None), "providers": ort.get_available_providers(),
           "torch_imported": "torch" in sys.modules}
    try:
        out["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                     "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    except OSError:
        out["gpu"] = "nvidia-smi not found"
    return out


def vectors(db, table, work):
    from bertfeat.tables import connect
    with connect(db, db_dir=work) as engine:
        rows = engine.query(f'SELECT group_id, feat, value FROM "{table}"')
    out = {}
    for g, f, v in rows:
        out.setdefault(g, {})[f] = v
    keys = sorted(out)
    feats = sorted({f for d in out.values() for f in d}, key=lambda f: int(f) if str(f).isdigit() else f)
    return keys, np.array([[out[k].get(f, 0.0) for f in feats] for k in keys])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--csv", default=str(ROOT / "tests" / "data" / "msgs100u.csv"))
    p.add_argument("--work", default=None)
    args = p.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="bertfeat-cuda-")
    import bertfeat
    print("environment:", json.dumps(environment()))
    models = str(ROOT / "models")
    for precision in ("fp32", "fp16"):  # exported in a process of its own: this one never imports torch
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "bertfeat", "--export_model", MODEL, "--bert_layers", "4",
                            "--precision", precision, "--model_dir", models], capture_output=True, text=True)
        print(f"export {precision}: rc {r.returncode}, {time.perf_counter() - t:.1f} s;"
              f" {(r.stdout + r.stderr).strip().splitlines()[-1:]}", flush=True)
    runs = {"cpu_fp32": ("cpu", "fp32"), "cuda_fp32": ("cuda", "fp32"), "cuda_fp16": ("cuda", "fp16")}
    results = {}
    for name, (device, precision) in runs.items():
        bertfeat.import_csv(name, "msgs", args.csv, overwrite=True, db_dir=work, progress=False)
        bertfeat.add_sent_tokenized(name, "msgs", overwrite=True, db_dir=work, progress=False)
        os.makedirs(os.path.join(work, name), exist_ok=True)
        try:
            t = time.perf_counter()
            s = bertfeat.add_bert(name, "msgs", "user_id", bert_model=MODEL, device=device, precision=precision,
                                  bert_keep_msg=True, db_dir=work, stage_dir=os.path.join(work, name),
                                  model_dir=models, progress=False)
            results[name] = (s, time.perf_counter() - t)
            print(f"{name}: add_bert {results[name][1]:.2f} s; {s['embedded']} texts embedded; table {s['table']};"
                  f" torch imported: {'torch' in sys.modules}", flush=True)
        except Exception as e:  # report and go on: the other runs still say something
            print(f"{name}: FAILED: {type(e).__name__}: {e}", flush=True)
    if "cpu_fp32" not in results:
        return
    ref_s = results["cpu_fp32"][0]
    ref_groups, ref_x = vectors("cpu_fp32", ref_s["table"], work)
    ref_mk, ref_m = vectors("cpu_fp32", ref_s["message_table"], work)
    print("\n| run | add_bert s | vs CPU fp32 time | group features max abs diff | message cosine min |")
    print("|---|---|---|---|---|")
    for name, (s, seconds) in results.items():
        groups, x = vectors(name, s["table"], work)
        mk, m = vectors(name, s["message_table"], work)
        assert groups == ref_groups and mk == ref_mk, name
        cos = (m * ref_m).sum(1) / np.linalg.norm(m, axis=1) / np.linalg.norm(ref_m, axis=1)
        print(f"| {name} | {seconds:.2f} | {results['cpu_fp32'][1] / seconds:.2f}x | {np.abs(x - ref_x).max():.2e}"
              f" | {cos.min():.6f} |")


if __name__ == "__main__":
    main()
