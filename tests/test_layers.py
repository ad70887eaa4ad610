"""Imports point one way: the core uses neither callbacks nor datamodules, and those two never use each other.

The layers, lowest first: the core (``lightning_sam/``), then ``callbacks/`` and ``datamodules/`` (installed as
``lightning_sam.callbacks`` and ``lightning_sam.datamodules``, see ``[tool.setuptools.package-dir]`` in
``pyproject.toml``), then the applications ``experiments/`` and ``train.py``, which may use everything. Every
``.py`` file of the three packages is parsed (never imported) and each of its imports is resolved to a layer:
``import x``, ``from x import y`` (``y`` may be a submodule), relative imports, imports inside functions,
``importlib.import_module("...")`` with a literal name, and the imports of its doctests (``>>>`` examples run as
tests, so a core doctest that imports a datamodule is a back-edge too).
"""

from __future__ import annotations

import ast
import doctest
from pathlib import Path
from typing import Literal, NamedTuple

import pytest

REPO = Path(__file__).resolve().parents[1]
Layer = Literal["core", "callbacks", "datamodules", "application", "external"]

# source folder -> the package it installs as
PACKAGE_ROOTS: dict[str, str] = {
    "lightning_sam": "lightning_sam",
    "callbacks": "lightning_sam.callbacks",
    "datamodules": "lightning_sam.datamodules",
}
# the layers each layer may import; everything else is a broken rule, with the reason given below
ALLOWED: dict[Layer, set[Layer]] = {
    "core": {"core", "external"},
    "callbacks": {"core", "callbacks", "external"},
    "datamodules": {"core", "datamodules", "external"},
}
RULES: dict[tuple[Layer, Layer], str] = {
    ("core", "callbacks"): "the core never uses callbacks",
    ("core", "datamodules"): "the core never uses datamodules",
    ("core", "application"): "the core never uses the applications built on it (experiments, train.py)",
    ("callbacks", "datamodules"): "callbacks and datamodules never use each other",
    ("datamodules", "callbacks"): "callbacks and datamodules never use each other",
    ("callbacks", "application"): "only experiments/ and train.py use everything; the packages never import them",
    ("datamodules", "application"): "only experiments/ and train.py use everything; the packages never import them",
}


class Import(NamedTuple):
    """One imported module, where it is imported, and how it reads in the source."""

    line: int
    module: str
    statement: str


class Violation(NamedTuple):
    """An import that breaks a layer rule."""

    path: str
    line: int
    statement: str
    target: Layer
    rule: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: `{self.statement}` reaches the {self.target} layer: {self.rule}"


def layer_of(module: str) -> Layer:
    """The layer a dotted module name belongs to.

    The bare ``callbacks`` and ``datamodules`` are the same folders imported the wrong way (STYLE: only absolute
    ``lightning_sam...`` paths), and count as their layer.

    Example:
        >>> [layer_of(m) for m in ("lightning_sam.sam", "lightning_sam.callbacks.x", "experiments.toy", "torch")]
        ['core', 'callbacks', 'application', 'external']
    """

    def within(package: str) -> bool:
        return module == package or module.startswith(package + ".")

    if within("lightning_sam.callbacks") or within("callbacks"):
        return "callbacks"
    if within("lightning_sam.datamodules") or within("datamodules"):
        return "datamodules"
    if within("lightning_sam.experiments") or within("experiments") or within("train"):
        return "application"
    if within("lightning_sam"):
        return "core"
    return "external"


def module_name(path: Path, repo: Path = REPO) -> str:
    """The installed dotted name of a source file, following ``PACKAGE_ROOTS``.

    Example:
        >>> module_name(REPO / "callbacks" / "feature_probe.py"), module_name(REPO / "lightning_sam" / "__init__.py")
        ('lightning_sam.callbacks.feature_probe', 'lightning_sam')
    """
    folder, *rest = path.relative_to(repo).with_suffix("").parts
    parts = [PACKAGE_ROOTS[folder], *rest]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def file_layer(path: Path, repo: Path = REPO) -> Layer:
    """The layer a source file lives in, from its package folder: everything under ``lightning_sam/`` is the core.

    ``lightning_sam/experiments/`` included: an application kept inside the core package breaks the rules.

    Example:
        >>> file_layer(REPO / "datamodules" / "toy.py"), file_layer(REPO / "lightning_sam" / "functional" / "x.py")
        ('datamodules', 'core')
    """
    folder = path.relative_to(repo).parts[0]
    return "core" if folder == "lightning_sam" else layer_of(PACKAGE_ROOTS[folder])


def _resolve(node: ast.ImportFrom, package: str) -> str:
    """The absolute module of a ``from ... import`` (``package`` is the importing module's package)."""
    if node.level == 0:
        return node.module or ""
    base = package.split(".")
    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
    return ".".join([*base, node.module] if node.module else base)


def imports_in(source: str, module: str, is_package: bool = False, first_line: int = 1) -> list[Import]:
    r"""Every module ``source`` imports, anywhere in it, with line numbers counted from ``first_line``.

    Args:
        source: Python source.
        module: the dotted name of the module the source belongs to (resolves relative imports).
        is_package: the source is the package's ``__init__.py``.
        first_line: the file line of the source's first line (for doctests).

    Example:
        >>> source = "import torch\ndef f():\n    from ..datamodules import toy\n"
        >>> [i.module for i in imports_in(source, "lightning_sam.callbacks.x")]
        ['torch', 'lightning_sam.datamodules', 'lightning_sam.datamodules.toy']
    """
    package = module if is_package else module.rpartition(".")[0]
    found: list[Import] = []
    for node in ast.walk(ast.parse(source)):
        line = first_line + getattr(node, "lineno", 1) - 1
        if isinstance(node, ast.Import):
            found += [Import(line, alias.name, f"import {alias.name}") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node, package)
            statement = f"from {'.' * node.level}{node.module or ''} import {', '.join(a.name for a in node.names)}"
            # ``from p import name``: ``name`` may be a submodule of ``p``, so both count
            found += [Import(line, base, statement)]
            found += [Import(line, f"{base}.{a.name}", statement) for a in node.names if a.name != "*"]
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func) and node.args:
            name = node.args[0]
            if isinstance(name, ast.Constant) and isinstance(name.value, str):
                found.append(Import(line, name.value, f"import_module({name.value!r})"))
    return found


def _is_dynamic_import(func: ast.expr) -> bool:
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    return name in ("import_module", "__import__")


def docstrings(tree: ast.AST) -> list[ast.Constant]:
    """The docstring constants of a module and of every class and function in it."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            is_string = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
            if is_string and isinstance(first.value.value, str):
                found.append(first.value)
    return found


def doctest_imports(source: str, module: str, is_package: bool = False) -> list[Import]:
    """The imports of every ``>>>`` example in the docstrings of ``source``, at their file lines."""
    parser = doctest.DocTestParser()
    found: list[Import] = []
    for docstring in docstrings(ast.parse(source)):
        for example in parser.get_examples(docstring.value):
            try:
                found += imports_in(example.source, module, is_package, docstring.lineno + example.lineno)
            except SyntaxError:
                continue  # not Python (a shell line, say): it imports nothing
    return found


def violations(path: Path, source: str, repo: Path = REPO) -> list[Violation]:
    """The imports of ``source`` (the file ``path``, its doctests included) that break a layer rule."""
    module = module_name(path, repo)
    own = file_layer(path, repo)
    is_package = path.name == "__init__.py"
    found = imports_in(source, module, is_package) + doctest_imports(source, module, is_package)
    relative = path.relative_to(repo).as_posix()
    seen: set[tuple[int, str, Layer]] = set()
    broken = []
    for item in found:
        target = layer_of(item.module)
        if target in ALLOWED[own] or (item.line, item.statement, target) in seen:
            continue
        seen.add((item.line, item.statement, target))
        broken.append(Violation(relative, item.line, item.statement, target, RULES[own, target]))
    return broken


def package_files(repo: Path = REPO) -> list[Path]:
    """Every ``.py`` file of the three packages."""
    return sorted(p for folder in PACKAGE_ROOTS for p in (repo / folder).rglob("*.py") if "__pycache__" not in p.parts)


FILES = package_files()


def test_every_package_has_files_to_check() -> None:
    assert {file_layer(p) for p in FILES} == {"core", "callbacks", "datamodules"}


@pytest.mark.parametrize("path", FILES, ids=[p.relative_to(REPO).as_posix() for p in FILES])
def test_imports_point_one_way(path: Path) -> None:
    broken = violations(path, path.read_text(encoding="utf-8"))
    assert not broken, "imports against the layer order (STYLE: dependencies point one way):\n" + "\n".join(
        map(str, broken)
    )


@pytest.mark.parametrize(
    ("folder", "source", "line", "rule"),
    [
        pytest.param(
            "lightning_sam",
            "def f():\n    from lightning_sam.datamodules.toy import ToyDataModule\n",
            2,
            "datamodules",
            id="core-import-inside-a-function",
        ),
        pytest.param(
            "lightning_sam",
            "from lightning_sam import callbacks\n",
            1,
            "never uses callbacks",
            id="core-from-package-import-submodule",
        ),
        pytest.param(
            "lightning_sam",
            "import importlib\nimportlib.import_module('experiments.toy')\n",
            2,
            "applications",
            id="core-import_module-literal",
        ),
        pytest.param(
            "lightning_sam",
            '"""Doc.\n\n>>> from lightning_sam.datamodules import toy\n"""\n',
            3,
            "datamodules",
            id="core-doctest",
        ),
        pytest.param(
            "callbacks", "from ..datamodules import toy\n", 1, "never use each other", id="callbacks-relative-import"
        ),
        pytest.param(
            "datamodules",
            "from lightning_sam.callbacks.protocols import FeatureData\n",
            1,
            "never use each other",
            id="datamodules-to-callbacks",
        ),
        pytest.param("datamodules", "import train\n", 1, "never import them", id="datamodules-to-train"),
    ],
)
def test_scanner_catches_a_back_edge(tmp_path: Path, folder: str, source: str, line: int, rule: str) -> None:
    path = tmp_path / folder / "module.py"
    path.parent.mkdir()
    path.write_text(source)
    broken = violations(path, source, repo=tmp_path)
    assert [(v.path, v.line) for v in broken] == [(f"{folder}/module.py", line)], broken
    assert rule in broken[0].rule
    assert rule in str(broken[0])


def test_scanner_accepts_the_allowed_directions(tmp_path: Path) -> None:
    sources = {
        "lightning_sam": "import torch\nfrom lightning_sam.sam import SAM\nfrom . import functional\n",
        "callbacks": "from lightning_sam.functional import gini_coefficient\nfrom .protocols import FeatureData\n",
        "datamodules": "from lightning_sam.batch import FeatureBatch\nfrom .toy import ToyDataModule\n",
    }
    for folder, source in sources.items():
        path = tmp_path / folder / "module.py"
        path.parent.mkdir()
        path.write_text(source)
        assert violations(path, source, repo=tmp_path) == []
