"""The package's import graph: no cycles, and the layering the architecture promises.

Every import statement of every module is read (function-level ones included; those under
``if TYPE_CHECKING:``, which never run, left out) and resolved to a module of the ``soat``
namespace. Checked:

- no import cycle at all between modules;
- ``soat.triton_kernels`` imports nothing of the runtime, the exporter, the server or the bench;
- ``soat.runtime`` imports nothing above it: not the exporter (``soat.load``, which joins the two, lives in
  ``soat.loader``), the server, the bench or the command line;
- ``soat.serve`` and ``soat.bench`` use the tasks through public names only: no name with a
  leading underscore from any soat module, and from a task module only the names its
  ``__all__`` publishes;
- ``soat.serve`` and ``soat.bench`` import no ``soat.runtime.tasks`` module at all (nor do the
  Python snippets of ``bench/*.sh``): the endless panorama's face is ``soat.runtime.endless``.
"""

from __future__ import annotations

import ast
import importlib
import pathlib
import re
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
LOWER_LAYERS_FORBIDDEN = ("soat.runtime", "soat.export", "soat.serve", "soat.bench")


def package_dirs() -> dict[str, pathlib.Path]:
    """``{package: folder}`` of every package pyproject lists (subpackages below their mapped parent)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = config["package-dir"]
    dirs = {}
    for pkg in config["packages"]:
        top = max((p for p in mapped if pkg == p or pkg.startswith(p + ".")), key=len)
        dirs[pkg] = ROOT / mapped[top] / pkg[len(top):].lstrip(".").replace(".", "/")
    return dirs


def modules() -> dict[str, pathlib.Path]:
    """Every module of the namespace: ``{dotted name: file}`` (a package is its ``__init__.py``)."""
    found = {}
    for pkg, folder in package_dirs().items():
        for path in folder.glob("*.py"):
            name = pkg if path.name == "__init__.py" else f"{pkg}.{path.stem}"
            found[name] = path
    return found


def run_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """The import statements of ``tree`` that can run: all but those under ``if TYPE_CHECKING:``
    (annotations only, so they make no import cycle)."""
    found, stack = [], [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))
    return found


def imported(module: str, path: pathlib.Path, known: dict[str, pathlib.Path]) -> list[tuple[str, str | None]]:
    """``(target module, imported name or None)`` for every import in ``path`` that names a soat module."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    edges = []
    for node in run_imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            edges += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                edges.append((sub, None) if sub in known else (base, alias.name))
    return [(target, name) for target, name in edges if target in known]


def import_graph() -> dict[str, list[tuple[str, str | None]]]:
    known = modules()
    return {name: imported(name, path, known) for name, path in known.items()}


def cycles(graph: dict[str, list[tuple[str, str | None]]]) -> list[list[str]]:
    """Strongly connected components with more than one module, or a module importing itself (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w, _ in graph[v]:
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
            if len(component) > 1 or any(t == v for t, _ in graph[v]):
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_walk_sees_the_whole_package():
    graph = import_graph()
    assert {"soat", "soat.runtime.generator", "soat.triton_kernels.ramp_lerp", "soat.serve.app",
            "soat.export.onnx_export", "soat.bench.suite"} <= set(graph)
    assert ("soat.runtime.chain", "build_chain") in graph["soat.runtime.generator"]
    assert ("soat.runtime.tasks.blend", "blend") in graph["soat.runtime.generator"]  # function-level


def test_type_checking_imports_are_left_out():
    tree = ast.parse("import a\nif TYPE_CHECKING:\n    import b\nelse:\n    import c\n"
                     "def f():\n    from d import e\n    if typing.TYPE_CHECKING:\n        import g\n")
    assert sorted(ast.unparse(node) for node in run_imports(tree)) == ["from d import e", "import a", "import c"]


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": [("b", None)], "b": [("c", None)], "c": [("a", None)], "d": [("a", None)]}) == [
        ["a", "b", "c"]]


def test_triton_kernels_import_nothing_above_them():
    bad = [(m, t) for m, edges in import_graph().items() if m.startswith("soat.triton_kernels")
           for t, _ in edges if t == "soat" or t.startswith(LOWER_LAYERS_FORBIDDEN)]
    assert bad == []


def test_serve_and_bench_use_public_names_only():
    bad = []
    for m, edges in import_graph().items():
        if not m.startswith(("soat.serve", "soat.bench")):
            continue
        for target, name in edges:
            if name is not None and name.startswith("_") and name != "__version__":
                bad.append((m, target, name))
            elif name is not None and target.startswith("soat.runtime.tasks."):
                public = getattr(importlib.import_module(target), "__all__", ())
                if name not in public:
                    bad.append((m, target, name))
    assert bad == []


RUNTIME_FORBIDDEN = ("soat.export", "soat.serve", "soat.bench", "soat.loader", "soat.cli", "soat.commands",
                     "soat.options")


def test_runtime_imports_nothing_above_it():
    bad = [(m, t) for m, edges in import_graph().items() if m.startswith("soat.runtime")
           for t, _ in edges if t.startswith(RUNTIME_FORBIDDEN) or t == "soat"]
    assert bad == []


TASKS = "soat.runtime.tasks"


def task_imports(graph: dict[str, list[tuple[str, str | None]]]) -> list[tuple[str, str]]:
    """``(module, task module)`` for every import of a ``soat.runtime.tasks`` module by serve or bench."""
    return [(m, t) for m, edges in graph.items() if m.startswith(("soat.serve", "soat.bench"))
            for t, _ in edges if t == TASKS or t.startswith(TASKS + ".")]


def test_serve_and_bench_import_no_task_module():
    assert task_imports(import_graph()) == []
    # the Python that bench's shell scripts run (heredocs, python3 -c) is held to the same rule
    scripts = {path.name: path.read_text() for path in (ROOT / "bench").glob("*.sh")}
    assert "gpu_run.sh" in scripts
    snippets = [(name, line.strip()) for name, text in scripts.items() for line in text.splitlines()
                if re.search(r"\b(from|import)\s+" + re.escape(TASKS) + r"\b", line)]
    assert snippets == []


def test_the_task_import_rule_sees_a_violation():
    graph = {"soat.serve.x": [("soat.runtime.tasks.endless", "spans"), ("soat.runtime.endless", None)],
             "soat.bench.y": [("soat.runtime.tasks", None)],
             "soat.runtime.generator": [("soat.runtime.tasks.blend", None)]}  # the runtime itself may
    assert task_imports(graph) == [("soat.serve.x", "soat.runtime.tasks.endless"),
                                   ("soat.bench.y", "soat.runtime.tasks")]
