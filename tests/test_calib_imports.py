"""No import cycle among gpuquant modules, and searches imports no backend (issue 14)."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1] / "gpuquant"


def _module(path: pathlib.Path) -> str:
    parts = ("gpuquant",) + path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):  # lazy imports count too
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] \
                    if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    deps.add(full if full in files else target)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[name] = {d for d in deps if d in files and d not in (name, "gpuquant")}
    return graph


def _cycles(graph):
    state, found = {}, []

    def visit(node, stack):
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                found.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def test_no_import_cycle():
    graph = _graph()
    assert "gpuquant.searches" in graph and "gpuquant.backends.array_ops" in graph
    assert _cycles(graph) == []


def test_searches_and_units_import_no_backend():
    graph = _graph()
    for name in ("gpuquant.searches", "gpuquant.units"):
        assert not {d for d in graph[name] if d.startswith("gpuquant.backends")}, name


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
