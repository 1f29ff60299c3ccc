"""The package's layers, read from its source: subpackages that import only their own layer
and the layers below, no import cycle, and the torch side never imports PyMC or PyTensor
(the amortizers join the two worlds)."""

import ast
from pathlib import Path

import pymc_abi

ROOT = Path(pymc_abi.__file__).parent
#: the subpackages, lowest first: each imports from its own layer and those before it
LAYERS = [
    "core",
    "model",
    "data",
    "banks",
    "networks",
    "training",
    "inference",
    "amortizers",
    "diagnostics",
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(path: Path) -> set[str]:
    """Every module named by an import anywhere in the file (function bodies included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    modules = _modules()
    # the top-level package re-exports everything: edges to it say nothing about layers
    graph = {
        name: {m for m in _imports(path) if m in modules and m not in (name, "pymc_abi")}
        for name, path in modules.items()
    }
    assert _cycles(graph) == []


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_module_lives_in_a_layer():
    modules = _modules()
    assert {name.split(".")[1] for name in modules if name != "pymc_abi"} == set(LAYERS)
    assert [name for name in modules if name != "pymc_abi" and _layer(name) is None] == []


def test_layers_import_only_themselves_and_the_layers_below():
    found = []
    for name, path in _modules().items():
        mine = _layer(name)
        for imported in _imports(path):
            other = _layer(imported)
            if mine and other and LAYERS.index(other) > LAYERS.index(mine):
                found.append(f"{name} imports {imported}")
    assert found == []


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_torch_side_never_imports_pymc_or_pytensor():
    torch_side = {n: p for n, p in _modules().items() if n.startswith("pymc_abi.networks")}
    assert len(torch_side) > 5
    for name, path in torch_side.items():
        worlds = {m.split(".")[0] for m in _imports(path)}
        assert not worlds & {"pymc", "pytensor"}, name


def test_no_private_name_is_imported_from_another_module():
    """A name with a leading underscore is its module's own: another module that needs it
    should get a public name (private modules, such as ``_compat``, may be imported)."""
    modules = _modules()
    found = []
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pymc_abi"):
                for alias in node.names:
                    private = alias.name.startswith("_") and not alias.name.startswith("__")
                    if private and f"{node.module}.{alias.name}" not in modules:
                        found.append(f"{name}: {node.module}.{alias.name}")
    assert found == []
