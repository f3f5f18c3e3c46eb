"""Run an exported encoder with ONNX Runtime: windows in, chosen layers' token vectors out.

No torch and no exporting here: the caller finds the cache entry (models.locate). Windows are
packed into length-sorted batches under a padded-token budget, so little compute goes to
padding; results come back in the caller's order, real tokens only.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import BertfeatError, first_line, unknown_device
from ..models import read_manifest
from ..progress import notice

DEFAULT_BATCH_TOKENS = 2048  # padded tokens per batch; see bench/README.md


def physical_cores() -> int:
    """Physical cores available to this process (hyper-threads do not help GEMM)."""
    try:
        cores = set()
        with open("/proc/cpuinfo") as f:
            phys = core = None
            for line in f:
                if line.startswith("physical id"):
                    phys = line.split(":")[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":")[1].strip()
                    cores.add((phys, core))
        avail = len(os.sched_getaffinity(0))
        return max(1, min(len(cores) or avail, avail))
    except (OSError, AttributeError):
        return os.cpu_count() or 1


def cpu_flags() -> set:
    """The CPU's feature flags (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def int8_dot_is_exact() -> bool:
    """Whether ONNX Runtime's u8 x s8 GEMM sums products in 32 bits on this CPU (VNNI or AMX).
    Without them (AVX2, AVX-512 without VNNI) it adds products in pairs into 16 bits, which
    8-bit weights can saturate, so int8 exports made for such CPUs use 7-bit weights or 8-bit
    unsigned ones (u8 x u8 sums are exact everywhere). tests/test_exporter.py checks this claim
    against ONNX Runtime on the CPU that runs the tests."""
    return bool(cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})


class CorruptedEntry(BertfeatError):
    """An export cache entry that ONNX Runtime cannot load."""


class Encoder:
    """An ONNX Runtime session over one cache entry: windows (ids, type ids) in, the chosen
    layers' token vectors out (text/windows.py makes the windows)."""

    def __init__(self, entry: str | os.PathLike, device: str = "cpu", threads: int | None = None,
                 batch_tokens: int | None = None, manifest: dict | None = None):
        """`manifest`: the entry's, when the caller has read it (models.ResolvedModel)."""
        ort = import_ort()
        self.entry = Path(entry)
        self.manifest = manifest or read_manifest(entry)
        if not self.manifest:
            raise BertfeatError(f"{entry} is not an export cache entry (no manifest.json)")
        self.depth = self.manifest.depth
        self.max_positions = self.manifest.max_positions
        self.hidden_size = self.manifest.hidden_size
        self.selects_layers = self.manifest.selects_layers
        self.batch_tokens = int(batch_tokens or DEFAULT_BATCH_TOKENS)
        if self.batch_tokens < self.max_positions:
            self.batch_tokens = self.max_positions  # one longest window must fit
        self.threads = int(threads or physical_cores())
        # a per-window int8 export (the manifest's per_window: one activation scale per tensor)
        # runs one window per call, one call per thread in parallel; every other export (fp32,
        # fp16, per-token int8) runs padded, length-sorted batches.
        self.per_window = self.manifest.per_window
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1 if self.per_window else self.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.device = resolve_device(device)
        providers = (["CUDAExecutionProvider", "CPUExecutionProvider"] if self.device == "cuda"
                     else ["CPUExecutionProvider"])
        try:
            self.session = ort.InferenceSession(str(self.entry / "model.onnx"), options, providers=providers)
        except Exception as e:  # ONNX Runtime raises its own classes for unreadable graphs
            if type(e).__module__.startswith("onnxruntime"):
                raise CorruptedEntry(f"cannot load {self.entry / 'model.onnx'} ({first_line(e, 200)}): the cache"
                                     " entry is corrupted; delete that folder (the next run exports"
                                     " it again), or run bertfeat --verify_models") from e
            raise
        if self.device == "cuda" and self.session.get_providers()[0] != "CUDAExecutionProvider":
            built = getattr(getattr(ort.capi, "build_and_package_info", None), "cuda_version", None)
            raise BertfeatError(f"onnxruntime-gpu {ort.__version__} is installed but could not start CUDA"
                                f"{f' (it is built for CUDA {built})' if built else ''}: driver, CUDA or"
                                " cuDNN libraries missing or of another major version? 'bertfeat[gpu]' is"
                                " for CUDA 12, 'bertfeat[gpu-cu13]' for CUDA 13; or use --device cpu")
        if self.manifest.needs_int8_dot and not int8_dot_is_exact():
            raise BertfeatError(f"{entry} is an int8 export with 8-bit weights, made for a CPU with VNNI"
                                " or AMX; this CPU has neither (its int8 sums can saturate): export int8"
                                " on this machine (bertfeat --export_model NAME --precision int8) or use"
                                " --precision fp32")
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.pad_id = self.manifest.pad_id
        self.windows_run = 0
        self.tokens_run = 0
        self._pool = None

    # --- inference ---------------------------------------------------------------------
    def batches(self, lengths):
        """Length-sorted batches of window indices, each within `batch_tokens` padded tokens."""
        order = np.argsort(lengths, kind="stable")
        batch, longest = [], 0
        for i in order:
            n = int(lengths[i])
            if batch and max(longest, n) * (len(batch) + 1) > self.batch_tokens:
                yield batch
                batch, longest = [], 0
            batch.append(int(i))
            longest = max(longest, n)
        if batch:
            yield batch

    def run(self, windows: list, layers: list[int]) -> list[np.ndarray]:
        """Hidden states of `layers` (0-based blocks) for each window: [len(layers), tokens, H] each."""
        layers = np.asarray(layers, np.int64)
        if layers.max() >= self.depth:
            raise BertfeatError(f"layer {layers.max()} is past this export's depth {self.depth}")
        if self.per_window:
            return self._run_per_window(windows, layers)
        out = [None] * len(windows)
        lengths = np.array([len(w[0]) for w in windows])
        for batch in self.batches(lengths):
            width = int(lengths[batch].max())
            ids = np.full((len(batch), width), self.pad_id, np.int64)
            types = np.zeros((len(batch), width), np.int64)
            mask = np.zeros((len(batch), width), np.int64)
            for r, i in enumerate(batch):
                n = lengths[i]
                ids[r, :n], types[r, :n], mask[r, :n] = windows[i][0], windows[i][1], 1
            chosen = self._hidden(ids, types, mask, layers)
            for r, i in enumerate(batch):
                out[i] = chosen[:, r, :lengths[i]]
            self.windows_run += len(batch)
            self.tokens_run += int(lengths[batch].sum())
        return out

    def _hidden(self, ids, types, mask, layers):
        """One session call: the chosen layers' hidden states [len(layers), batch, tokens, H].

        The graph picks the layers itself and writes them straight into our array (I/O binding):
        on CUDA the result crosses to the host once, and only the layers asked for. Models
        without token types simply do not take them; exports before 0.2 return every layer.
        """
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types, "layers": layers}
        if not self.selects_layers:
            return self.session.run(["hidden_states"], {k: feeds[k] for k in self.input_names})[0][layers]
        out = np.empty((len(layers), *ids.shape, self.hidden_size), np.float32)
        binding = self.session.io_binding()
        for k in self.input_names:
            binding.bind_cpu_input(k, feeds[k])
        binding.bind_output("hidden_states", "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
        self.session.run_with_iobinding(binding)
        return out

    def _run_per_window(self, windows, layers):
        from concurrent.futures import ThreadPoolExecutor

        def one(window):
            ids, types = window
            return self._hidden(ids[None], types[None], np.ones((1, len(ids)), np.int64), layers)[:, 0]
        if self.threads == 1:
            out = [one(w) for w in windows]
        else:
            if self._pool is None:  # one pool for the session's life: new threads cost memory
                self._pool = ThreadPoolExecutor(self.threads)  # ORT releases the GIL in run()
            out = list(self._pool.map(one, windows))
        self.windows_run += len(windows)
        self.tokens_run += sum(len(w[0]) for w in windows)
        return out


ORT_BUILDS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml",
              "onnxruntime-training")
INSTALL_HINT = ("pip install 'bertfeat[cpu]' (CPU), 'bertfeat[gpu]' (CUDA 12) or"
                " 'bertfeat[gpu-cu13]' (CUDA 13)")


def ort_builds():
    """The ONNX Runtime distributions installed (each provides the same `onnxruntime` module)."""
    from importlib import metadata
    found = []
    for name in ORT_BUILDS:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return found


def import_ort():
    """The onnxruntime module, or a one-line error saying which extra installs it."""
    try:
        import onnxruntime
        return onnxruntime
    except ImportError as e:
        raise BertfeatError(f"ONNX Runtime is not installed: {INSTALL_HINT}") from e


def preload_cuda_libraries(ort):
    """Load the CUDA and cuDNN libraries that pip installed with onnxruntime-gpu[cuda,cudnn]
    (the nvidia-* wheels), so the CUDA provider finds them without torch or LD_LIBRARY_PATH.
    Libraries already loaded, or installed system-wide, are left to the usual search; anything
    still missing shows when the session starts (Encoder's one-line error)."""
    preload = getattr(ort, "preload_dlls", None)  # onnxruntime-gpu >= 1.21
    if preload is None:
        return
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its own warnings
        try:
            preload()
        except Exception:  # a failed preload is not yet an error: the session start decides
            pass


def resolve_device(device: str) -> str:
    """'cpu', 'cuda' or 'auto' -> the device to use; cuda without onnxruntime-gpu is an error."""
    ort = import_ort()
    device = device or "cpu"
    builds = ort_builds()
    if device in ("cuda", "auto") and len(builds) > 1:
        raise BertfeatError(
            f"{' and '.join(builds)} are installed: they provide the same module and the one"
            " installed last wins, so CUDA may be missing; keep one: pip uninstall -y"
            f" {' '.join(b.split()[0] for b in builds)} && pip install 'bertfeat[gpu]' (CUDA 12)"
            " or 'bertfeat[gpu-cu13]' (CUDA 13)")
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if has_cuda and device in ("cuda", "auto"):
        preload_cuda_libraries(ort)
    if device == "auto":
        if not has_cuda:
            notice("no CUDA provider in onnxruntime: running on CPU (pip install 'bertfeat[gpu]' for CUDA)")
        return "cuda" if has_cuda else "cpu"
    if device == "cuda" and not has_cuda:
        raise BertfeatError(f"--device cuda needs onnxruntime-gpu with a working CUDA"
                            f" (installed: {', '.join(builds) or 'no ONNX Runtime'}):"
                            " pip uninstall -y onnxruntime && pip install 'bertfeat[gpu]' (CUDA 12)"
                            " or 'bertfeat[gpu-cu13]' (CUDA 13); or use --device cpu")
    if device not in ("cpu", "cuda"):
        raise unknown_device(device)
    return device
