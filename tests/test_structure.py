"""The structure of the package: layers that import only downwards, no cycles, the two
written interfaces, small files (docs/ARCHITECTURE.md draws the layers), py.typed and the version."""

import ast
import importlib.metadata
import inspect
import os
import pathlib

import pytest

import gpuquant as gq

ROOT = pathlib.Path(__file__).resolve().parents[1]

def _layers_of_the_doc() -> list[tuple[str, list[str]]]:
    """The layer table of docs/ARCHITECTURE.md: (layer, module names), lowest first."""
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    rows = text.split("<!-- layers: lowest first -->", 1)[1].split("\n\n", 1)[0].splitlines()[3:]
    layers = []
    for row in rows:
        _, layer, cells, _ = row.split("|")
        paths = [c.strip().strip("`") for c in cells.split(",")]
        layers.append((layer.strip(), [_module_of(p) for p in paths]))
    return layers


def _module_of(path: str) -> str:
    assert (ROOT / path).exists(), f"docs/ARCHITECTURE.md names {path}, which is not in the tree"
    name = path.removesuffix("/").removesuffix(".py").removesuffix("/__init__").replace("/", ".")
    return name


# lowest first; a module may import its own layer (without a cycle) and the layers below.
# A name covers the module and everything under it; the longest name that covers a module wins.
# The one list is the table of docs/ARCHITECTURE.md, read here.
LAYERS = _layers_of_the_doc()


def module_files():
    for path in sorted((ROOT / "gpuquant").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join(parts), path


def layer_of(module: str) -> int:
    best, depth = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            covers = module == prefix or (prefix != "gpuquant" and module.startswith(prefix + "."))
            if covers and len(prefix) > depth:
                best, depth = index, len(prefix)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS")
    return best


def imports_of(module: str, path: pathlib.Path) -> set[str]:
    """gpuquant modules imported anywhere in the file (lazy ones too), not under
    ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            node.body = []
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("gpuquant")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("gpuquant"):
                continue
            for alias in node.names:  # "from . import x" may name a submodule
                sub = f"{target}.{alias.name}"
                found.add(sub if any(m == sub for m, _ in module_files()) else target)
    found.discard(module)
    return found


GRAPH = {module: imports_of(module, path) for module, path in module_files()}


def test_every_module_has_a_layer():
    for module in GRAPH:
        layer_of(module)


def test_imports_point_down_the_layers():
    upward = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})"
              for m, targets in GRAPH.items() for t in targets
              if t in GRAPH and layer_of(t) > layer_of(m)]
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    def parent_package(m):  # importing a.b.c runs a/__init__ and a/b/__init__ first
        return {p for p in (m.rsplit(".", i)[0] for i in range(1, m.count(".") + 1))
                if p in GRAPH and p != "gpuquant"}

    edges = {m: {t for t in targets if t in GRAPH and t != "gpuquant"} | parent_package(m)
             for m, targets in GRAPH.items() if m != "gpuquant"}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in edges.get(m, ()):
            if t in edges and not t.startswith(m + "."):
                if state.get(t) == 1:
                    raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(t):] + [t]))
                if not state.get(t):
                    visit(t)
        stack.pop()
        state[m] = 2

    for m in edges:
        if not state.get(m):
            visit(m)


def test_kernels_import_no_host_code():
    for module, targets in GRAPH.items():
        if module.startswith("gpuquant.kernels"):
            assert all(t.startswith("gpuquant.kernels") for t in targets), (module, targets)


def test_files_and_functions_stay_small():
    long_files, long_functions = [], []
    for module, path in module_files():
        source = path.read_text()
        if source.count("\n") > 400:
            long_files.append(f"{path.name}: {source.count(chr(10))} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    long_functions.append(f"{module}.{node.name}: {length} lines")
    assert not long_files, long_files
    assert not long_functions, long_functions


def _protocol_methods(protocol):
    return {name: inspect.signature(getattr(protocol, name))
            for name in dir(protocol) if not name.startswith("_")
            and callable(getattr(protocol, name))}


def _parameters(sig):
    return [p.name for p in sig.parameters.values()]


@pytest.mark.parametrize("backend_name", ["numpy", "triton"])
def test_backends_implement_the_protocol_with_its_signatures(backend_name):
    from gpuquant.backends import Backend, _make

    if backend_name == "triton":
        pytest.importorskip("triton")
    backend = _make(backend_name)
    assert isinstance(backend, Backend)
    for name, sig in _protocol_methods(Backend).items():
        got = inspect.signature(getattr(backend, name))
        assert _parameters(got) == _parameters(sig)[1:], (backend_name, name, got)


@pytest.mark.parametrize("adapter", ["TorchOps", "CupyOps"])
def test_array_adapters_implement_the_protocol_side_by_side(adapter):
    from gpuquant.backends import ArrayOps, array_ops

    cls = getattr(array_ops, adapter)
    assert cls.__bases__ == (object,), "adapters stand side by side, with no inheritance"
    for name, sig in _protocol_methods(ArrayOps).items():
        assert hasattr(cls, name), (adapter, name)
        assert _parameters(inspect.signature(getattr(cls, name))) == _parameters(sig), (adapter,
                                                                                        name)


def test_the_package_root_holds_at_most_twelve_modules():
    root = sorted(p.name for p in (ROOT / "gpuquant").glob("*.py"))
    assert len(root) <= 12, root


def _stem(name: str) -> str:
    for suffix in ("_ops", "ops", "ing", "ed", "es", "s"):
        if name.endswith(suffix) and len(name) > len(suffix) + 2:
            return name[: -len(suffix)].rstrip("_")
    return name.rstrip("_")


def test_no_two_modules_of_a_folder_have_near_synonym_names():
    pairs = []
    for folder in {p.parent for p in (ROOT / "gpuquant").rglob("*.py")}:
        names = sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("__"))
        names += sorted(p.name for p in folder.iterdir() if (p / "__init__.py").exists())
        stems: dict[str, str] = {}
        for name in names:
            other = stems.setdefault(_stem(name), name)
            if other != name:
                pairs.append(f"{folder.relative_to(ROOT)}: {other} / {name}")
    assert not pairs, pairs


def test_the_synonym_check_catches_the_old_names():
    assert _stem("arrays") == _stem("array_ops") and _stem("shards") == _stem("sharded")


def test_callers_reach_a_backend_only_through_the_protocol():
    """Above the backends, only gpuquant.backends (select, the protocols) and its array adapters
    are imported: export, the plan and the API never name a backend's own modules."""
    reaching = [f"{m} imports {t}" for m, targets in GRAPH.items() for t in targets
                if t.startswith(("gpuquant.backends.numpy", "gpuquant.backends.triton"))
                and not m.startswith("gpuquant.backends")]
    assert not reaching, "\n".join(reaching)


def test_py_typed_and_version():
    assert os.path.exists(os.path.join(os.path.dirname(gq.__file__), "py.typed"))
    assert gq.__version__ == importlib.metadata.version("gpuquant")
