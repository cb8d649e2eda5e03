"""The house rules of the package, checked on its source: who may import whom, imports at the top, file size."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sediff_jax"
MAX_LINES = 400
# (importer package, imported package): inference and evaluation never reach into training; the simulator and the
# signal layer never into the data layer; the signal layer (the bottom of the house) into nothing above it; the
# clinical rhythm model (rhythm/) sits above data and simulator and below generation.
FORBIDDEN = [("generation", "training"), ("evaluation", "training"), ("checkpoints", "training"),
             ("simulator", "data"), ("signal", "data"), ("signal", "simulator"), ("signal", "models"),
             ("models", "training"), ("diffusion", "training"), ("rhythm", "generation"), ("rhythm", "training"),
             ("simulator", "rhythm"), ("data", "rhythm"), ("signal", "rhythm")]


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, ast.parse(path.read_text(), str(path))


def _imported(node) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return [node.module]
    return []


def test_no_forbidden_imports_between_layers():
    bad = []
    for path, tree in _modules():
        parts = path.relative_to(PACKAGE).parts
        for node in ast.walk(tree):
            for name in _imported(node):
                for importer, imported in FORBIDDEN:
                    if parts[0] == importer and name.startswith(f"sediff_jax.{imported}"):
                        bad.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} imports {name}")
    assert not bad, "\n".join(bad)


def test_package_imports_sit_at_the_top_of_each_module():
    inside = []
    for path, tree in _modules():
        top = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if id(node) not in top and any(n.startswith("sediff_jax") for n in _imported(node)):
                inside.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not inside, "in-function imports of sediff_jax modules:\n" + "\n".join(inside)


def test_no_module_over_400_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long
