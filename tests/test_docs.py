"""The README and docs/ as a user meets them: the README stays short, every link lands, every command names a tool,
flags and config keys that exist, and the Python blocks marked `<!-- example -->` run as written, from a checkout,
in a fresh interpreter."""

import importlib
import os
import re
import shlex
import subprocess
import sys

import pytest

from tests.conftest import _REPO

PAGES = [_REPO / "README.md", _REPO / "checkpoints" / "README.md", *sorted((_REPO / "docs").glob("*.md"))]
_BLOCK = re.compile(r"<!-- example -->\n```python\n(.*?)```", re.S)
_MARKED = [(page.relative_to(_REPO).as_posix(), block) for page in PAGES for block in _BLOCK.findall(page.read_text())]
EXAMPLES = list({block: (page, block) for page, block in reversed(_MARKED)}.values())[::-1]  # a block shown twice runs once
README_MAX_LINES = 250


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _headings(text: str) -> set[str]:
    out, in_code = set(), False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and re.match(r"#{1,6} ", line):
            out.add(_anchor(line.lstrip("#")))
    return out


def test_the_readme_is_short_and_links_every_doc():
    readme = (_REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    for doc in (_REPO / "docs").glob("*.md"):
        assert f"(docs/{doc.name})" in readme, f"the README does not link docs/{doc.name}"
    assert "../shared" not in readme


def test_every_relative_link_lands_on_a_file_and_heading():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.relative_to(_REPO)}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in _headings(file.read_text()):
                broken.append(f"{page.relative_to(_REPO)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def _command(line: str) -> list[tuple[str, str]]:
    """(module, flags as one string) of each `python -m experiments.<tool> ...` on one line."""
    out = []
    for match in re.finditer(r"python -m (experiments\.[\w.]+)", line):
        rest = line[match.end():]
        try:
            words = shlex.split(rest, comments=True)
        except ValueError:  # an unbalanced quote in prose
            words = rest.split()
        words = words[:next((i for i, w in enumerate(words) if w in ("|", "&&", ";", ">", "python")), len(words))]
        out.append((match.group(1), " ".join(w for w in words if w.startswith("--"))))
    return out


def _commands(text: str) -> list[tuple[str, str]]:
    """The experiments commands of a page's bash blocks and inline code (continuation lines joined)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            out += _command(line)
    for span in re.findall(r"`(python -m experiments\.[^`]*)`", text):
        out += _command(" ".join(span.split()))
    return out


def _defined_flags(module: str) -> set[str]:
    source = (_REPO / (module.replace(".", "/") + ".py")).read_text()
    names = set(re.findall(r"DEFINE_\w+\(\s*\"(\w+)\"", source))
    if "cli.define_" in source:
        names |= set(re.findall(r"DEFINE_\w+\(\s*\"(\w+)\"", (_REPO / "experiments" / "cli.py").read_text()))
    return names | {"help", "helpfull", "helpshort"}


def _has_config_key(config, dotted: str) -> bool:
    node = config
    for part in dotted.split("."):
        if not hasattr(node, "keys") or part not in node.keys():
            return False
        node = node[part]
    return True


def test_every_documented_command_uses_a_tool_flags_and_config_keys_that_exist():
    """Each `python -m experiments.X --flag ...` in the README and docs names a module that exists and only flags
    it defines; each `--config.a.b=...` names a key of the config the command loads (the train command refuses an
    unknown one, so a renamed key would leave the docs wrong)."""
    wrong, seen = [], 0
    for page in PAGES:
        for module, args in _commands(page.read_text()):
            seen += 1
            where = f"{page.relative_to(_REPO)}: python -m {module}"
            if not (_REPO / (module.replace(".", "/") + ".py")).is_file():
                wrong.append(f"{where}: no such tool")
                continue
            flags = re.findall(r"--([\w.]+)(?:=(\S*))?", args)
            defined = _defined_flags(module)
            config_file = dict(flags).get("config", "").split(":")[0]
            config = None
            if config_file.startswith("experiments/configs/") and config_file.endswith(".py"):
                config = importlib.import_module(config_file[:-3].replace("/", ".")).get_config()
            for name, _ in flags:
                if name.startswith("config."):
                    if config is not None and not _has_config_key(config, name[len("config."):]):
                        wrong.append(f"{where}: --{name} is not a key of {config_file}")
                elif name.split(".")[0] not in defined:
                    wrong.append(f"{where}: --{name} is not a flag of the tool")
    assert seen >= 40 and not wrong, "\n".join(wrong)


def test_every_documented_make_target_exists():
    makefile = (_REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([\w-]+):", makefile, re.M))
    used = {t for page in PAGES for t in re.findall(r"`make ([\w-]+)", page.read_text())}
    assert used and used <= targets, used - targets


def test_the_docs_mark_their_python_examples():
    pages = {page for page, _ in EXAMPLES}
    assert len(EXAMPLES) >= 3 and "README.md" in pages
    assert len(_MARKED) == sum(page.read_text().count("<!-- example -->") for page in PAGES)


# Examples that sample with the shipped checkpoint (~45 s) are marked slow: colab/quickstart.ipynb's test and
# tests/generation/test_shipped_checkpoint.py cover that path in `make test`.
@pytest.mark.parametrize("page,block", [pytest.param(*e, marks=pytest.mark.slow) if "SHIPPED_CHECKPOINT" in e[1] else e
                                        for e in EXAMPLES], ids=[f"{p}-{i}" for i, (p, _) in enumerate(EXAMPLES)])
def test_documented_example_runs_as_written(page, block, tmp_path, repo_root):
    script = tmp_path / "example.py"
    script.write_text(block)
    (tmp_path / "examples").symlink_to(repo_root / "examples")  # relative paths as in a checkout; writes stay here
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=str(repo_root))
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, f"example in {page}:\n{block}\n{result.stderr[-3000:]}"
