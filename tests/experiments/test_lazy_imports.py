"""Every `from X import name` in the entrypoints and the library resolves, including the imports inside
functions that the CLIs defer until they run (a renamed helper otherwise breaks a CLI that no fast test runs)."""

import ast
import importlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FILES = sorted([*ROOT.glob("experiments/**/*.py"), *ROOT.glob("sediff_jax/**/*.py")])
OPTIONAL = {"neurokit2", "matplotlib", "tensorboardX", "grain", "tqdm", "openai"}  # extras, may be absent


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in {"experiments", "sediff_jax"}:
                yield node.module, [a.name for a in node.names], node.lineno


def _missing(path: Path) -> list[str]:
    missing = []
    for module_name, names, line in _imports(path):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name and e.name.split(".")[0] in OPTIONAL:
                continue
            missing.append(f"line {line}: module {module_name} ({e})")
            continue
        for name in names:
            if name != "*" and not hasattr(module, name):
                try:
                    importlib.import_module(f"{module_name}.{name}")
                except ModuleNotFoundError:
                    missing.append(f"line {line}: {module_name}.{name}")
    return [f"{path.relative_to(ROOT)} {m}" for m in missing]


def test_imported_names_exist():
    assert len(FILES) > 100
    missing = [m for path in FILES for m in _missing(path)]
    assert not missing, "\n".join(missing)
