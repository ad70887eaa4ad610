"""Every documentation reference in the repository points at a file that is in the repository.

Docstrings, configs and Markdown cite ``docs/method.md`` sections, data formats and figures by path. This test reads
every ``*.py``, ``*.yaml`` and ``*.md`` file and fails, naming file and line, when

- a ``docs/...`` path (with any folder prefix) or a relative Markdown link names a file that does not exist;
- a text cites the design notes the project was specified from, which live outside the repository;
- a docstring or comment cites a tracker issue ("issue 5", "issue #5"), which a reader of the code cannot open.
"""

from __future__ import annotations

import ast
import io
import os
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUFFIXES = (".py", ".yaml", ".yml", ".md")
# folders that hold no hand-written project text: tool state anywhere; build output, runs and data at the top
SKIPPED_DIRS = {".git", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"}
SKIPPED_TOP_DIRS = {"build", "dist", "lightning_logs", "runs", "data"}
# written by the toy experiment and regenerated from its code, which is itself scanned
GENERATED = {"docs/toy_report.md"}
# this file names the very patterns it forbids
SELF = Path(__file__).resolve().relative_to(REPO).as_posix()

URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")
DOCS_PATH = re.compile(r"(?<![\w./-])((?:[\w.-]+/)*docs/[\w./-]+)")
MARKDOWN_LINK = re.compile(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
OUTSIDE_NOTES = re.compile(r"(?<!\w)(?:METHOD|DATA_FORMATS|STYLE)\.md\b")
ISSUE = re.compile(r"\bissues?\s+#?\d+", re.IGNORECASE)


def project_files(root: Path = REPO) -> list[Path]:
    """The repository's ``*.py``, ``*.yaml`` and ``*.md`` files, minus tool, build, virtualenv and generated ones."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d
            for d in dirnames
            if d not in SKIPPED_DIRS
            and not (Path(dirpath) == root and d in SKIPPED_TOP_DIRS)
            and not d.endswith(".egg-info")
            and not (Path(dirpath, d) / "pyvenv.cfg").exists()  # any virtualenv, whatever its name
        )
        for name in sorted(filenames):
            path = Path(dirpath, name)
            relative = path.relative_to(root).as_posix()
            if path.suffix in SUFFIXES and relative not in GENERATED and relative != SELF:
                found.append(path)
    return found


def doc_references(line: str) -> list[str]:
    """The ``docs/...`` paths a line of text names, URLs excluded, trailing punctuation stripped.

    Example:
        >>> doc_references("see docs/method.md section 5, https://lightning.ai/docs/pytorch/x.html and a/docs/b.png.")
        ['docs/method.md', 'a/docs/b.png']
    """
    return [m.rstrip(".") for m in DOCS_PATH.findall(URL.sub(" ", line)) if m.rstrip(".")[-1:] not in ("", "/")]


def markdown_links(line: str) -> list[str]:
    """The relative link targets of a Markdown line, without ``#anchor``; URLs and in-page anchors excluded.

    Example:
        >>> markdown_links("[a](method.md#5-x) [b](https://x.org) [c](#top) ![d](toy_figures/f.png)")
        ['method.md', 'toy_figures/f.png']
    """
    targets = (t.split("#", 1)[0] for t in MARKDOWN_LINK.findall(line))
    return [t for t in targets if t and not URL.match(t) and not t.startswith(("mailto:", "/"))]


def prose_lines(path: Path, text: str) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of the prose a reader sees: docstrings and comments of Python, comments of YAML.

    Other files (Markdown) are prose throughout.
    """
    lines = text.splitlines()
    if path.suffix in (".yaml", ".yml"):
        yield from ((i, line) for i, line in enumerate(lines, start=1) if "#" in line)
        return
    if path.suffix != ".py":
        yield from enumerate(lines, start=1)
        return
    numbers: set[int] = set()
    for node in ast.walk(ast.parse(text)):
        docstring = _docstring_node(node)
        if docstring is not None:
            numbers.update(range(docstring.lineno, (docstring.end_lineno or docstring.lineno) + 1))
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.COMMENT:
            numbers.add(token.start[0])
    yield from ((i, lines[i - 1]) for i in sorted(numbers))


def _docstring_node(node: ast.AST) -> ast.Expr | None:
    """The statement holding the docstring of a module, class or function, if it has one."""
    if not isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) or not node.body:
        return None
    first = node.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return first
    return None


def _relative(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


FILES = project_files()
TEXTS = {path: path.read_text(encoding="utf-8") for path in FILES}


def test_the_scan_sees_the_packages_and_the_docs() -> None:
    scanned = {_relative(p) for p in FILES}
    assert {"README.md", "docs/method.md", "docs/data_formats.md", "train.py"} <= scanned
    assert any(p.startswith("callbacks/") for p in scanned)
    assert any(p.startswith("datamodules/") for p in scanned)


def test_docs_paths_name_existing_files() -> None:
    missing = [
        f"{_relative(path)}:{number}: {reference} does not exist"
        for path, text in TEXTS.items()
        for number, line in enumerate(text.splitlines(), start=1)
        for reference in doc_references(line)
        if not (REPO / reference).exists()
    ]
    assert not missing, "references to missing documentation files:\n" + "\n".join(missing)


def test_markdown_links_name_existing_files() -> None:
    missing = [
        f"{_relative(path)}:{number}: link target {target} does not exist"
        for path, text in TEXTS.items()
        if path.suffix == ".md"
        for number, line in enumerate(text.splitlines(), start=1)
        for target in markdown_links(line)
        if not (path.parent / target).exists()
    ]
    assert not missing, "broken relative Markdown links:\n" + "\n".join(missing)


def test_no_reference_to_notes_outside_the_repository() -> None:
    found = [
        f"{_relative(path)}:{number}: {match.group()} is not in the repository; cite docs/method.md, "
        "docs/data_formats.md or the code instead"
        for path, text in TEXTS.items()
        for number, line in enumerate(text.splitlines(), start=1)
        for match in OUTSIDE_NOTES.finditer(line)
    ]
    assert not found, "references to files outside the repository:\n" + "\n".join(found)


def test_no_issue_numbers_in_docstrings_or_comments() -> None:
    found = [
        f"{_relative(path)}:{number}: {match.group()!r}: say what the issue asked for instead"
        for path, text in TEXTS.items()
        if path.suffix != ".md"
        for number, line in prose_lines(path, text)
        for match in ISSUE.finditer(line)
    ]
    assert not found, "tracker issue numbers a reader of the code cannot look up:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("line", "bad"),
    [
        pytest.param("Layouts (see ``docs/data_formatz.md``)", "docs/data_formatz.md", id="prefixed"),
        pytest.param("docs/method.md section 9 and docs/nope.md.", "docs/nope.md", id="sentence-end"),
        pytest.param("![figure](docs/toy_figures/missing.png)", "docs/toy_figures/missing.png", id="figure"),
    ],
)
def test_scanner_flags_a_missing_docs_path(line: str, bad: str) -> None:
    assert bad in doc_references(line)
    assert not (REPO / bad).exists()


def test_scanner_flags_outside_notes_and_issue_numbers(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    source = '"""Claims (issue #5) from the METHOD.md notes."""\n\nx = 1  # see Issue 12\n'
    prose = dict(prose_lines(path, source))
    assert [ISSUE.search(line) is not None for line in prose.values()] == [True, True]
    assert OUTSIDE_NOTES.search(source) is not None
    assert OUTSIDE_NOTES.search("docs/data_formats.md and docs/method.md") is None
