"""The package's layers import downwards only, and at module level (an import inside a function
to dodge a cycle hides a design bug)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src"
# Lowest first: a module imports from its own layer or the layers below it. The package's
# __init__ (the public API, named "" here) sits with the API.
LAYERS = (
    ("types and config", ("errors", "types", "config", "stats")),
    ("networks, diffusion, critics", ("nn", "distributions", "diffusion", "critics", "flows")),
    ("envs, buffers, runs", ("envs", "buffer", "runs", "checkpoint", "trackers")),
    ("agents", ("agents",)),
    ("loops", ("loops", "video")),
    ("registry and API", ("registry", "api", "bench", "reproduce", "results", "sweep", "")),
    ("CLI", ("cli",)),
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted((SOURCE / "diffmaxent").rglob("*.py"))}


def _layer(module: str) -> int:
    top = module.removeprefix("diffmaxent").removeprefix(".").split(".")[0]
    for rank, (_, members) in enumerate(LAYERS):
        if top in members:
            return rank
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS in {__file__}")


class _Imports(ast.NodeVisitor):
    """Each diffmaxent module a file imports, with whether the import runs inside a function."""

    def __init__(self) -> None:
        self.found: list[tuple[str, bool]] = []
        self._depth = 0

    def _function(self, node: ast.AST) -> None:
        self._depth += 1
        self.generic_visit(node)
        self._depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_Import(self, node: ast.Import) -> None:
        self._add(alias.name for alias in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and node.module:
            # `from diffmaxent import runs` imports the module diffmaxent.runs.
            submodules = (f"{node.module}.{alias.name}" for alias in node.names)
            self._add(name if name in MODULES else node.module for name in submodules)

    def _add(self, names) -> None:
        for name in names:
            if name.split(".")[0] == "diffmaxent":
                self.found.append((name, self._depth > 0))


def _imports(module: str) -> list[tuple[str, bool]]:
    visitor = _Imports()
    visitor.visit(ast.parse(MODULES[module].read_text()))
    return visitor.found


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_downwards_at_module_level(module):
    for imported, in_function in _imports(module):
        assert not in_function, f"{module} imports {imported} inside a function"
        assert _layer(imported) <= _layer(module), (
            f"{module} ({LAYERS[_layer(module)][0]}) imports {imported} "
            f"({LAYERS[_layer(imported)][0]}), a layer above it"
        )


def test_no_import_cycle():
    edges = {
        module: {name for name, _ in _imports(module) if name != module and name in MODULES}
        for module in MODULES
    }
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        if module in path:
            raise AssertionError("import cycle: " + " -> ".join((*path, module)))
        if module in done:
            return
        for imported in sorted(edges[module]):
            visit(imported, (*path, module))
        done.add(module)

    for module in sorted(MODULES):
        visit(module, ())
