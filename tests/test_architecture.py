"""The import picture is the architecture: services above, ``rawcap/`` plumbing, ``schemas/``
at the bottom, no import cycles; and no file grows past ~600 lines without saying why.

Imports are read from the source (``ast``), function-level ones included; only imports under
``if TYPE_CHECKING:`` are left out (they never run). ``python -m tests.test_architecture``
prints the package-level picture.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = "schemas"
PLUMBING = "rawcap"
SERVICES = ("capture", "enrich", "archiver", "dissector", "forensics", "history")
PACKAGES = (SCHEMAS, PLUMBING, *SERVICES)
#: What each top-level package may import of the project, besides itself.
ALLOWED = {SCHEMAS: set(), PLUMBING: {SCHEMAS}, **{s: {PLUMBING, SCHEMAS} for s in SERVICES}}
#: "~600 lines": a file longer than this says why in its first lines ("longer than 600 lines").
MAX_LINES = 620
REASON = "longer than 600 lines"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            out[_module_name(path)] = path
    return out


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = getattr(test, "id", None) or getattr(test, "attr", "")
            if name == "TYPE_CHECKING":
                for child in node.body:
                    for sub in ast.walk(child):
                        if hasattr(sub, "lineno"):
                            lines.add(sub.lineno)
    return lines


def imports() -> dict[str, set[str]]:
    """module -> the project's modules it imports (a name imported from a package resolves to
    the submodule when there is one, else to the package)."""
    modules = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for mod, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        skip = _type_checking_lines(tree)
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(tree):
            if getattr(node, "lineno", None) in skip:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                targets = [f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target
                           for a in node.names]
            for t in targets:
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t.split(".")[0] in PACKAGES and t != mod:
                    graph[mod].add(t)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_each_layer_imports_only_what_is_below_it() -> None:
    wrong = []
    for mod, targets in sorted(imports().items()):
        top = mod.split(".")[0]
        for t in sorted(targets):
            other = t.split(".")[0]
            if other != top and other not in ALLOWED[top]:
                wrong.append(f"{mod} imports {t}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles() -> None:
    assert _cycles(imports()) == []


def test_the_rules_would_catch_a_breach() -> None:
    """The checks above see what they must: a service importing another, a cycle."""
    graph = imports()
    assert "rawcap.window._reader" in graph and "rawcap.window._kafka" in graph["rawcap.window._reader"]
    assert _cycles({**graph, "rawcap.kafka._codec": {"rawcap.window._reader"}, "rawcap.window._reader":
                    graph["rawcap.window._reader"], "rawcap.window._kafka": {"rawcap.kafka._codec"}})


@pytest.mark.parametrize("root", [*PACKAGES, "tests", "bench"])
def test_no_file_over_600_lines_without_a_reason_at_its_top(root: str) -> None:
    long = []
    for path in sorted((ROOT / root).rglob("*")):
        if path.suffix not in (".py", ".c", "") or not path.is_file() or "__pycache__" in path.parts:
            continue
        if path.suffix == "" and not path.read_bytes().startswith(b"#!"):
            continue  # not a script (bench/ holds scripts without an extension)
        lines = path.read_text(errors="replace").splitlines()
        if len(lines) > MAX_LINES and not any(REASON in line for line in lines[:15]):
            long.append(f"{path.relative_to(ROOT)}: {len(lines)} lines")
    assert not long, "\n".join(long)


def picture() -> str:
    """Package-level imports: who imports whom (rawcap's and the services' subpackages)."""
    def unit(mod: str) -> str:
        parts = mod.split(".")
        if parts[0] == PLUMBING and len(parts) > 1 and not parts[1].startswith("_"):
            return ".".join(parts[:2])
        return parts[0]

    edges: dict[str, set[str]] = defaultdict(set)
    for mod, targets in imports().items():
        for t in targets:
            if unit(t) != unit(mod):
                edges[unit(mod)].add(unit(t))
    return "\n".join(f"{u:18} -> {', '.join(sorted(v))}" for u, v in sorted(edges.items()))


if __name__ == "__main__":
    print(picture())
