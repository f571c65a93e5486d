"""The package layering: training/ builds on model/, never the other way round, and the service runs on model/
alone (the inference image ships no training/). Checked on the source's syntax trees, so an import inside a
function, which a runtime probe would miss until it runs, counts too."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# package -> the project's packages it must never import
FORBIDDEN = {
    "model": {"training", "service", "bench"},
    "service": {"training", "bench"},
    "training": {"service", "bench"},
}


def imported_packages(source: str) -> set[str]:
    """Top-level names of every absolute import in ``source`` (``import a.b`` and ``from a.b import c`` give a)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_walker_sees_every_import_form():
    source = ("import training\nimport training.train as t\nfrom training import losses\n"
              "def f():\n    from training.pack import build_pack\n")
    assert imported_packages(source) == {"training"}
    assert imported_packages("from . import x\nimport torch\n") == {"torch"}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_only_downward(package):
    modules = sorted((ROOT / package).rglob("*.py"))
    assert modules, f"no modules under {package}/"
    offenders = {}
    for path in modules:
        bad = imported_packages(path.read_text(encoding="utf-8")) & FORBIDDEN[package]
        if bad:
            offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert not offenders, f"{package}/ must not import {sorted(FORBIDDEN[package])}: {offenders}"


def test_the_service_names_training_only_for_its_delegated_commands():
    """``stya2k train|eval`` hand over to training/ by module name, imported only when those commands run (an
    inference image without training/ answers 'unavailable'); no other service module names a training module."""
    from service import cli

    assert set(cli.DELEGATED.values()) == {"training.train", "training.evaluate"}
    mentions = [str(path.relative_to(ROOT)) for path in sorted((ROOT / "service").rglob("*.py"))
                if any(isinstance(node, ast.Constant) and isinstance(node.value, str)
                       and node.value.startswith("training.")
                       for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))))]
    assert mentions == ["service/cli.py"]
