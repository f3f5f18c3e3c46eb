"""What every bench script shares: the paths and the default model, the host header (CPU, ISA,
GEMM rate: every table says which machine made it), bertfeat's windows of the corpus, and the
protocol that runs each part of a bench in a process of its own (its own peak RSS).

The scripts import it as `from common import ...` (they run as `python bench/NAME.py`)."""
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CSV = ROOT / "tests" / "data" / "msgs100u.csv"  # copied from shared/data


def cpu_isa():
    """The CPU's name and the instruction sets ONNX Runtime's int8 kernels choose between
    (MLAS dispatches on them at run time: AVX2 u8s8, AVX-512 BW, AVX-512/AVX VNNI, AMX)."""
    name, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and name == "unknown CPU":
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = [label for flag, label in (("avx2", "AVX2"), ("avx512bw", "AVX-512"), ("avx512_vnni", "AVX-512 VNNI"),
                                     ("avx_vnni", "AVX-VNNI"), ("amx_int8", "AMX-INT8")) if flag in flags]
    best = isa[-1] if isa else "no AVX2"
    return f"{name}; ISA {', '.join(isa) or 'none'}; int8 kernels use the best of these: {best}"


def gemm_rate():
    import numpy as np
    a = np.random.default_rng(0).random((2048, 2048), dtype=np.float32)
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        a @ a
        best = max(best, 2 * 2048 ** 3 / (time.perf_counter() - t))
    return best


def ort_gemm_rate():
    """The same 2048^3 fp32 GEMM through ONNX Runtime (MLAS): the rate our runtime can reach."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "g",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2048, 2048]) for n in "ab"],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [2048, 2048])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    a = np.random.default_rng(0).random((2048, 2048), dtype=np.float32)
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        sess.run(None, {"a": a, "b": a})
        best = max(best, 2 * 2048 ** 3 / (time.perf_counter() - t))
    return best


def header(*extra):
    """The first line of every bench table: CPU, ISA, CPUs, numpy's fp32 GEMM rate, then `extra`."""
    return "; ".join([f"# {cpu_isa()}", f"{os.cpu_count()} CPUs",
                      f"numpy fp32 GEMM 2048^3 {gemm_rate() / 1e9:.0f} GFLOP/s", *extra])


def flops_per_token(hidden, inter, layers, mean_len):
    """Multiply-adds x2 per token: QKV+output projections, FFN, attention scores and mixing."""
    return layers * 2 * (4 * hidden * hidden + 2 * hidden * inter + 2 * mean_len * hidden)


def batches_of(windows, lengths, batches):
    """(ids, token types, attention mask) of each batch of window indices, right-padded."""
    import numpy as np
    for batch in batches:
        width = int(lengths[batch].max())
        ids = np.zeros((len(batch), width), np.int64)
        types, mask = np.zeros_like(ids), np.zeros_like(ids)
        for r, i in enumerate(batch):
            n = lengths[i]
            ids[r, :n], types[r, :n], mask[r, :n] = windows[i][0], windows[i][1], 1
        yield ids, types, mask


def default_layer(model):
    """(depth a default run exports, its layer: the second-to-last) and the model's config."""
    from transformers import AutoConfig
    from bertfeat.exporter import resolve_source
    config = AutoConfig.from_pretrained(resolve_source(model))
    return config.num_hidden_layers - 1, config.num_hidden_layers - 2, config


def torch_inputs(model, ids, types, mask):
    """The keyword inputs `model` takes (MPNet and DistilBERT take no token types)."""
    import inspect
    import torch
    out = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
    if "token_type_ids" in inspect.signature(model.forward).parameters:
        out["token_type_ids"] = torch.from_numpy(types)
    return out


def windows_by_group(work, csv_path, limit, model_dir, model=MODEL):
    """bertfeat's windows for the corpus, grouped per user in table order, and the encoder
    (exported to the default layer's depth)."""
    import bertfeat
    from bertfeat.exporter import locate
    from bertfeat.runtime import Encoder
    from bertfeat.tables import connect
    from bertfeat.text import windows
    conn = {"db_engine": "duckdb", "db_dir": work}
    if not os.path.exists(os.path.join(work, "w.duckdb")):
        bertfeat.import_csv("w", "msgs", csv_path, progress=False, **conn)
        bertfeat.add_sent_tokenized("w", "msgs", progress=False, **conn)
    with connect("w", **conn) as engine:
        rows = engine.query("SELECT message_id, user_id, message FROM msgs_stoks ORDER BY message_id")
    rows = rows[:limit] if limit else rows
    encoder = Encoder(locate(model, default_layer(model)[0], "fp32", model_dir))
    tokenizer = windows.load_tokenizer(encoder.entry / "tokenizer.json")
    template, limit_p = windows.learn_template(tokenizer), windows.piece_limit(encoder.max_positions)
    groups = {}
    for _, user, message in rows:
        sents = windows.split_long(windows.word_pieces(tokenizer, json.loads(message)), limit_p)
        groups.setdefault(user, []).extend(windows.plan(template, [sents]).windows)
    return groups, encoder, len(rows)


def report(result):
    """A part's result as `run_parts` reads it (one RESULT line), with this process's peak RSS."""
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def run_parts(script, parts, args, work, extra=()):
    """Run each part of a benchmark script in a process of its own; {part: its RESULT dict}."""
    results = {}
    for part in parts:
        cmd = [sys.executable, script, "--part", part, "--work", work, "--csv", args.csv,
               "--limit", str(args.limit), "--model_dir", args.model_dir, "--model", args.model, *extra]
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if not line:
            sys.exit(f"part {part} failed:\n{out.stderr[-3000:]}")
        results[part] = json.loads(line[0][7:])
    return results
