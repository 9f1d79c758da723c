"""The layer order of ``cas``, declared once, and a checker that every import points down.

Each layer is a list of module prefixes. A module may import modules of its own layer or of a layer listed
before it; imports between modules of one layer must form no cycle. ``cas`` itself (the package root, which
holds only the version) sits below every layer. Tests (``cas.test``) may import anything.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator

import attrs

LAYERS: list[tuple[str, list[str]]] = [
    ("base", ["cas.base"]),
    ("content", ["cas.content"]),
    ("store", ["cas.store"]),
    ("peer", ["cas.peer"]),
    ("network", ["cas.network"]),
    ("node", ["cas.node"]),
    ("app", ["cas.api", "cas.cli", "cas.service", "cas.tap"]),
]
ROOT_PACKAGE = "cas"
EXEMPT = ("cas.test",)


@attrs.frozen
class Problem:
    module: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.module}:{self.line}: {self.text}"


def modules(top: str) -> dict[str, str]:
    """Every module under ``top`` (the folder holding the ``cas`` package): dotted name -> file path."""
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(os.path.join(top, ROOT_PACKAGE)):
        dirnames[:] = sorted(d for d in dirnames if os.path.exists(os.path.join(dirpath, d, "__init__.py")))
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            parts = os.path.relpath(os.path.join(dirpath, name), top)[:-3].split(os.sep)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = os.path.join(dirpath, name)
    return found


def layer_of(module: str) -> int | None:
    """Index of ``module``'s layer in LAYERS; -1 for the package root; None for an exempt or unknown one."""
    if module == ROOT_PACKAGE:
        return -1
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    return None


def imports(module: str, path: str, known: dict[str, str]) -> Iterator[tuple[int, str]]:
    """(line, imported cas module) for every import in the file, nested ones included."""
    is_package = os.path.basename(path) == "__init__.py"
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == ROOT_PACKAGE or alias.name.startswith(ROOT_PACKAGE + "."):
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not (target == ROOT_PACKAGE or target.startswith(ROOT_PACKAGE + ".")):
                continue
            for alias in node.names:  # ``from pkg import mod`` imports the module, not just the package
                sub = f"{target}.{alias.name}"
                yield node.lineno, sub if sub in known else target


def check(top: str) -> list[Problem]:
    """Upward imports, imports of unknown layers, and cycles within a layer, under ``top``."""
    known = modules(top)
    problems: list[Problem] = []
    edges: dict[str, set[str]] = {}
    for module, path in known.items():
        if module.startswith(EXEMPT) and layer_of(module) is None:
            continue
        mine = layer_of(module)
        if mine is None:
            problems.append(Problem(module, 0, "belongs to no layer: add it to LAYERS in cas/test/layers.py"))
            continue
        for line, target in imports(module, path, known):
            theirs = layer_of(target)
            if target.startswith(EXEMPT):
                problems.append(Problem(module, line, f"imports the tests ({target})"))
            elif theirs is None:
                problems.append(Problem(module, line, f"imports {target}, which belongs to no layer"))
            elif theirs > mine:
                problems.append(Problem(module, line, f"imports {target} ({LAYERS[theirs][0]}), a layer above "
                                                      f"its own ({LAYERS[mine][0]})"))
            elif target != module and target in known:
                edges.setdefault(module, set()).add(target)
    problems.extend(Problem(c[0], 0, "import cycle among " + ", ".join(c)) for c in cycles(edges))
    return problems


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The modules of each strongly connected component of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component: list[str] = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found
