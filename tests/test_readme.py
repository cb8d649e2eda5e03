"""The README's Python blocks marked `<!-- example -->` run as written, from a checkout, in a fresh interpreter."""

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import _REPO

_BLOCK = re.compile(r"<!-- example -->\n```python\n(.*?)```", re.S)
EXAMPLES = _BLOCK.findall((_REPO / "README.md").read_text())


def test_the_readme_marks_its_python_examples():
    assert len(EXAMPLES) >= 3
    assert len(EXAMPLES) == (_REPO / "README.md").read_text().count("<!-- example -->")


# Examples that sample with the shipped checkpoint (~45 s) are marked slow: colab/quickstart.ipynb's test and
# tests/generation/test_shipped_checkpoint.py cover that path in `make test`.
@pytest.mark.parametrize("index", [pytest.param(i, marks=pytest.mark.slow) if "SHIPPED_CHECKPOINT" in block else i
                                   for i, block in enumerate(EXAMPLES)])
def test_readme_example_runs_as_written(index, tmp_path, repo_root):
    script = tmp_path / "example.py"
    script.write_text(EXAMPLES[index])
    (tmp_path / "examples").symlink_to(repo_root / "examples")  # relative paths as in a checkout; writes stay here
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=str(repo_root))
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"README example {index + 1}:\n{EXAMPLES[index]}\n{result.stderr[-3000:]}"
