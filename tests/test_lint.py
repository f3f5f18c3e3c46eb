"""The code passes ruff with the project's settings (pyproject.toml [tool.ruff])."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def test_ruff_finds_nothing():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed (pip install 'bertfeat[test]')")
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([ruff, "check", "--no-cache", str(root)], capture_output=True, text=True, cwd=root)
    assert r.returncode == 0, r.stdout + r.stderr
