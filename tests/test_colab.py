"""colab/quickstart.ipynb runs top to bottom (its code cells, in order, in a fresh interpreter)."""

import json
import os
import subprocess
import sys


def test_quickstart_notebook_runs(repo_root, tmp_path):
    notebook = json.loads((repo_root / "colab" / "quickstart.ipynb").read_text())
    cells = ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]
    # A bare expression at the end of a cell is the notebook's display; here it is simply evaluated.
    script = tmp_path / "quickstart.py"
    script.write_text("\n\n".join(cells) + "\n")
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=str(repo_root))
    result = subprocess.run([sys.executable, str(script)], cwd=repo_root / "colab", env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    final_loss = float(result.stdout.split("final loss:")[1].split()[0])
    assert final_loss < 1e-5, result.stdout
