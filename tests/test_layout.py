"""The package's layers, as docs/architecture.md draws them, checked against the code.

Every ``import`` of a bottomless module counts: at module level, inside a function, and under
``TYPE_CHECKING``. A module may import its own layer and the layers below it, never one above,
and no chain of imports leads back to where it started.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "bottomless"

#: lowest first; a module belongs to the first layer one of whose prefixes it matches
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("errors", ("bottomless.errors", "bottomless.log", "bottomless.osutil")),
    ("format", ("bottomless.format",)),
    ("settings", ("bottomless.settings",)),
    ("backends", ("bottomless.backends",)),
    ("local", ("bottomless.local",)),
    ("ops", ("bottomless.ops",)),
    ("engine", ("bottomless.engine",)),
    ("sqlite", ("bottomless.sqlite",)),
    ("replica", ("bottomless.replica",)),
    ("metrics", ("bottomless.metrics",)),
    ("api", (
        "bottomless.api", "bottomless.dbapi", "bottomless.sqlalchemy", "bottomless.django",
        "bottomless.testing",
    )),
    ("cli", ("bottomless.cli", "bottomless.__main__", "bottomless")),
]

#: lines a module may reach before it should be split
MAX_MODULE_LINES = 520
#: lines a function may reach unless a comment right above it says why it is longer
MAX_FUNCTION_LINES = 60


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if prefix == "bottomless" and module != "bottomless":
                continue
            if module == prefix or module.startswith(prefix + "."):
                return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and docs/architecture.md")


def imports_in(source: str, module: str, is_package: bool) -> set[str]:
    """The bottomless modules that ``source`` (module ``module``) imports, wherever the
    import statement is: module level, a function, or under ``TYPE_CHECKING``."""
    tree = ast.parse(source)
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "bottomless")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] != "bottomless":
                continue
            for alias in node.names:
                child = f"{base}.{alias.name}"
                found.add(child if child in MODULES else base)
    found.discard(module)
    return {m for m in found if m in MODULES}


def imports_of(module: str) -> set[str]:
    """The bottomless modules ``module`` imports."""
    path = MODULES[module]
    return imports_in(path.read_text(), module, path.name == "__init__.py")


GRAPH = {module: imports_of(module) for module in MODULES}


def test_every_module_is_in_a_layer() -> None:
    for module in MODULES:
        layer_of(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_down_the_layers_only(module: str) -> None:
    mine = layer_of(module)
    upward = sorted(
        f"{target} ({LAYERS[layer_of(target)][0]})"
        for target in GRAPH[module] if layer_of(target) > mine
    )
    assert not upward, f"{module} ({LAYERS[mine][0]}) imports a layer above it: {upward}"


def test_there_are_no_import_cycles() -> None:
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(GRAPH[module]):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target):], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(MODULES):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles: " + "; ".join(cycles)


def test_the_checker_sees_lazy_and_type_checking_imports() -> None:
    """The walk finds imports in functions, under TYPE_CHECKING and relative ones (or the
    layer test above could pass while a layer reaches up lazily)."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from bottomless.sqlite import vfs\n"
        "def f():\n    from bottomless.engine.replicator import Replicator\n"
        "from ..ops import restore\n"
        "import bottomless.cli\n"
    )
    found = imports_in(source, "bottomless.local.files", is_package=False)
    assert found == {
        "bottomless.sqlite.vfs", "bottomless.engine.replicator", "bottomless.ops.restore",
        "bottomless.cli",
    }


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_small(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{module} has {lines} lines: split it by responsibility"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_long_functions_say_why(module: str) -> None:
    """A function over the limit needs a comment on the line above its ``def`` (or its
    decorators) saying why it is long."""
    source = MODULES[module].read_text().splitlines()
    tree = ast.parse("\n".join(source))
    unexplained = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        length = (node.end_lineno or node.lineno) - node.lineno + 1
        first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        above = source[first - 2].strip() if first >= 2 else ""
        if length > MAX_FUNCTION_LINES and not above.startswith("#"):
            unexplained.append(f"{node.name} ({length} lines, line {node.lineno})")
    assert not unexplained, f"{module}: long functions without a reason: {unexplained}"


def test_the_architecture_page_names_every_room() -> None:
    page = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    rooms = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    missing = sorted(room for room in rooms if f"{room}/" not in page)
    assert not missing, f"docs/architecture.md does not show {missing}"
