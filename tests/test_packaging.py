"""Issue 10: each install leaves exactly one ONNX Runtime, and a wrong one is one clear line.

onnxruntime and onnxruntime-gpu install the same `onnxruntime` module, so bertfeat depends on
neither directly: the extras cpu, gpu (CUDA 12 builds, < 1.27) and gpu-cu13 (>= 1.27) each pick
one. pip's own resolver (a dry run, no GPU needed) checks what each install brings.
"""
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from helpers import one_line_error

ROOT = Path(__file__).resolve().parents[1]
ORT = {"onnxruntime", "onnxruntime-gpu"}


def test_extras_name_one_runtime_each():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = lambda reqs: {r.split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip() for r in reqs}  # noqa: E731
    assert not names(project["dependencies"]) & ORT
    extras = project["optional-dependencies"]
    assert names(extras["cpu"]) == {"onnxruntime"}
    assert extras["gpu"] == ["onnxruntime-gpu[cuda,cudnn]>=1.21,<1.27"]
    assert extras["gpu-cu13"] == ["onnxruntime-gpu[cuda,cudnn]>=1.27"]


CASES = [("cpu", ("onnxruntime", None)), ("gpu", ("onnxruntime-gpu", "1.26")),
         ("gpu-cu13", ("onnxruntime-gpu", "1.27")), (None, None)]


@pytest.fixture(scope="module")
def resolved(tmp_path_factory):
    """pip's dry run of each install (bertfeat's requirements and the extra's, as pyproject.toml
    lists them: no build of bertfeat itself), the four at once (they wait on the index)."""
    from concurrent.futures import ThreadPoolExecutor
    work = tmp_path_factory.mktemp("pip")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def dry_run(extra):
        report = work / f"{extra}.json"
        wanted = project["dependencies"] + (project["optional-dependencies"][extra] if extra else [])
        r = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                            "--report", str(report), *wanted], capture_output=True, text=True, timeout=300)
        return r, report
    with ThreadPoolExecutor(len(CASES)) as pool:
        return dict(zip([e for e, _ in CASES], pool.map(dry_run, [e for e, _ in CASES])))


@pytest.mark.slow
@pytest.mark.parametrize("extra, want", CASES)
def test_pip_resolves_exactly_one_runtime(extra, want, resolved):
    r, report = resolved[extra]
    if r.returncode != 0:
        if any(w in r.stderr for w in ("Could not find a version", "No matching distribution", "NewConnection",
                                       "Temporary failure", "Max retries")):
            pytest.skip(f"no package index reachable for pip's resolver: {r.stderr.strip().splitlines()[-1]}")
        raise AssertionError(r.stderr)
    got = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}
    runtimes = {n: v for n, v in got.items() if n in ORT}
    if want is None:
        assert runtimes == {}
        return
    name, bound = want
    assert list(runtimes) == [name]
    major_minor = tuple(int(x) for x in runtimes[name].split(".")[:2])
    cuda = {n: v for n, v in got.items() if n.startswith("nvidia-")}
    if bound is None:
        assert cuda == {}  # the CPU install brings no CUDA wheels
    elif bound == "1.26":  # CUDA 12: the cu12 runtime and cuDNN wheels come with it
        assert major_minor < (1, 27)
        assert {"nvidia-cuda-runtime-cu12", "nvidia-cudnn-cu12", "nvidia-cublas-cu12"} <= set(cuda), cuda
    else:  # CUDA 13: runtime 13.x and the cu13 cuDNN, nothing built for CUDA 12
        assert major_minor >= (1, 27)
        assert cuda["nvidia-cuda-runtime"].startswith("13.") and "nvidia-cudnn-cu13" in cuda, cuda
        assert not any(n.endswith("-cu12") for n in cuda), cuda


def run_cli(prelude, *args, cwd):
    code = (f"import sys\n{prelude}\nfrom bertfeat.cli import main\nsys.exit(main({list(args)!r}))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_two_runtimes_installed_is_one_line_for_cuda(tmp_path, msgs_csv):
    fake = tmp_path / "site"
    info = fake / "onnxruntime_gpu-1.26.0.dist-info"  # as if pip had installed the GPU build too
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: onnxruntime-gpu\nVersion: 1.26.0\n")
    prelude = f"sys.path.insert(0, {str(fake)!r})"
    common = ["-d", "d", "--db_dir", str(tmp_path), "-t", "msgs", "-c", "user_id", "--add_bert",
              "--bert_model", "sentence-transformers/all-MiniLM-L6-v2"]
    for device in ("cuda", "auto"):
        one_line_error(run_cli(prelude, *common, "--device", device, cwd=tmp_path),
                       "onnxruntime-gpu 1.26.0", "are installed", "pip uninstall -y onnxruntime onnxruntime-gpu")


def test_no_runtime_installed_is_one_line(tmp_path):
    prelude = "sys.modules['onnxruntime'] = None  # as if neither build were installed"
    one_line_error(run_cli(prelude, "-d", "d", "--db_dir", str(tmp_path), "-t", "msgs", "-c", "user_id",
                           "--add_bert", cwd=tmp_path), "ONNX Runtime is not installed", "bertfeat[cpu]")
