"""The package's modules import each other in layers: no cycle among the imports a module runs when
it is loaded (those at its top level, outside `if TYPE_CHECKING:`). A cycle works only by luck of
import order, and says two modules are one idea split in two (the evaluation and its report once
imported each other)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "python" / "ecso_edge"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def load_time_imports(path: Path, modules: set[str]) -> set[str]:
    """The package modules `path` imports at its top level."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
            elif isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                submodules = {f"{target}.{a.name}" for a in node.names} & modules
                out.update(submodules or {target})
            elif isinstance(node, ast.Import):
                out.update(a.name for a in node.names if a.name in modules)

    visit(ast.parse(path.read_text()).body)
    out.discard(name)
    return out & modules


def test_no_module_imports_itself_through_others() -> None:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {name: load_time_imports(p, set(paths)) for name, p in paths.items()}
    # a package's __init__ re-exports its modules: the edge from a module up to its package is the
    # package being loaded first, not a cycle of the module's own making
    for name, deps in graph.items():
        graph[name] = {d for d in deps if not name.startswith(d + ".")}
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                walk(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node)
    assert not cycles, [" -> ".join(c) for c in cycles]


def test_the_evaluation_and_its_report_do_not_import_each_other() -> None:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    tables = load_time_imports(paths["ecso_edge.report.eval_tables"], set(paths))
    assert "ecso_edge.evaluate" not in tables
