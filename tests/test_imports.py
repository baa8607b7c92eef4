"""No import circles inside specviz: the module graph, read from the source with ast, is acyclic.

Every import counts, the ones inside functions too: a lazy import only hides a circle until the day
someone moves it to the top of the file. `if TYPE_CHECKING:` blocks are skipped (they never run).
Importing a submodule runs its package's __init__ first, but that edge is implicit and not counted:
`from . import palette` inside specviz/views is an edge to specviz.views.palette, not to specviz.views.
"""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "specviz"


def modules(package: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package __init__)."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _runtime_nodes(tree: ast.AST):
    """Every node except those under `if TYPE_CHECKING:` (or `typing.TYPE_CHECKING`)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and ast.unparse(child.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def import_graph(package: Path) -> dict[str, set[str]]:
    """module -> the package's modules it imports (anywhere in the file)."""
    mods = modules(package)
    top = package.name

    def known(name: str) -> str | None:
        while name and name not in mods:  # `from .x import f` names x.f: the module is x
            name = name.rpartition(".")[0]
        return name or None

    graph = {name: set() for name in mods}
    for name, (path, is_package) in mods.items():
        here = name.split(".") if is_package else name.split(".")[:-1]
        for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(here[:len(here) - node.level + 1] + [node.module or ""]).strip(".") \
                    if node.level else node.module
                # `from pkg import sub` is an edge to pkg.sub when sub is a module, else to pkg
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            else:
                continue
            for target in targets:
                if target.split(".")[0] == top and (resolved := known(target)) and resolved != name:
                    graph[name].add(resolved)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as a closed path."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(_loop(graph, set(component)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _loop(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """One closed path through a component, for the failure message: a -> b -> ... -> a."""
    start = min(component)
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for w in sorted(graph[path[-1]] & component):
            if w == start:
                return path + [start]
            if w not in seen:
                seen.add(w)
                paths.append(path + [w])
    return sorted(component)


def test_specviz_has_no_import_cycles():
    graph = import_graph(PACKAGE)
    assert len(graph) > 50 and "specviz.engine" in graph["specviz.api"]  # the reader sees the real package
    found = cycles(graph)
    assert not found, "import cycles in specviz:\n" + "\n".join(" -> ".join(c) for c in found)


def _package(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root / "pkg"


def test_the_checker_finds_a_cycle_through_a_lazy_import(tmp_path):
    pkg = _package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from .b import g\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/c.py": "def f():\n    from .. import a\n",
        "pkg/b.py": "import os\ndef g():\n    from pkg.sub.c import f\n",
    })
    assert cycles(import_graph(pkg)) == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]]


def test_the_checker_ignores_submodule_imports_of_a_package_that_imports_them(tmp_path):
    """views/__init__ imports views.x, views.x does `from . import y`: no circle (and none for TYPE_CHECKING)."""
    pkg = _package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/views/__init__.py": "from .x import f\nfrom .y import g\n",
        "pkg/views/x.py": "from . import y\nfrom typing import TYPE_CHECKING\n"
                          "if TYPE_CHECKING:\n    from . import f\ndef f():\n    return y.g()\n",
        "pkg/views/y.py": "def g():\n    return 1\n",
        "pkg/other.py": "from .views import f\n",
    })
    graph = import_graph(pkg)
    assert graph["pkg.views.x"] == {"pkg.views.y"} and graph["pkg.other"] == {"pkg.views"}
    assert cycles(graph) == []
