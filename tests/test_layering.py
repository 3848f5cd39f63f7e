"""The package's folders import one way (docs/development.md, DESIGN.md's layout).

Every ``import``/``from ... import`` of a convlens module anywhere in a file counts,
including imports inside functions and ``importlib.import_module("convlens....")`` with a
literal name; only imports under ``if TYPE_CHECKING:`` (never run) are exempt.
"""

from __future__ import annotations

import ast
import functools
import importlib
import sys
from pathlib import Path

from tests.helpers.source import parsed

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "convlens"

# Top to bottom. A folder (or top-level module) may import only from its own folder and
# from the levels below it; folders on one level are independent of each other.
LEVELS: list[tuple[str, ...]] = [
    ("cli",),
    ("serve",),
    ("report",),
    ("evaluate", "analysis", "concepts"),
    ("scan", "train"),
    ("attribution",),
    ("features",),
    ("localize",),
    ("render",),
    ("layers",),
    ("targets",),
    ("models",),
    ("data", "detections"),
    ("maps",),
    ("files",),
    ("errors", "package"),
]
RANK = {name: level for level, names in enumerate(LEVELS) for name in names}
FACADE = {"__init__", "__main__"}  # convlens/__init__.py re-exports, __main__ runs the CLI


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_modules(tree: ast.AST, module: str) -> list[tuple[int, str]]:
    """``(line, dotted name)`` of every convlens module ``tree`` imports at run time."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.split(".")[: -node.level]
                base = ".".join([*parent, base] if base else parent)
            found.append((node.lineno, base))
            found.extend((node.lineno, f"{base}.{a.name}") for a in node.names)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return [(line, name) for line, name in found if name.split(".")[0] == "convlens"]


def file_imports(file: Path, module: str) -> list[tuple[int, str]]:
    """`imported_modules` of ``file`` (module ``module``), found once per syntax tree: both
    package checks below read every file (`tests.helpers.source.parsed`: one parse each)."""
    return _tree_imports(parsed(file), module)


@functools.cache
def _tree_imports(tree: ast.Module, module: str) -> list[tuple[int, str]]:
    return imported_modules(tree, module)


def _unit(dotted: str) -> str | None:
    """The folder or top-level module a dotted convlens name belongs to."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else None


def layering_violations(package: Path) -> list[str]:
    """One line per import that goes up, sideways, or to an unlisted folder."""
    problems = []
    for file in sorted(package.rglob("*.py")):
        relative = file.relative_to(package.parent).with_suffix("")
        module = ".".join(relative.parts)
        unit = relative.parts[1]
        if unit in FACADE and len(relative.parts) == 2:
            continue
        if unit not in RANK:
            problems.append(f"{module}: folder {unit!r} is not in the layering table")
            continue
        seen = set()
        for line, name in file_imports(file, module):
            target = _unit(name)
            if (line, target) in seen:
                continue
            seen.add((line, target))
            if target is None or target == unit:
                continue
            if target not in RANK:
                problems.append(f"{module}:{line} imports {name} (unlisted folder {target!r})")
            elif RANK[target] <= RANK[unit]:
                problems.append(
                    f"{module}:{line} imports {name} ({target!r} is not below {unit!r})"
                )
    return problems


def module_cycles(package: Path) -> list[list[str]]:
    """Cycles of run-time imports between modules (package ``__init__`` files aside)."""
    modules = {}
    for file in package.rglob("*.py"):
        relative = file.relative_to(package.parent).with_suffix("")
        modules[".".join(relative.parts)] = file
    edges: dict[str, set[str]] = {}
    for module, file in modules.items():
        if module.endswith("__init__"):
            continue
        targets = {name for _, name in file_imports(file, module) if name in modules}
        edges[module] = targets - {module}
    cycles, state = [], {}

    def walk(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                walk(nxt, [*path, nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            walk(node, [node])
    return cycles


def test_every_folder_imports_only_folders_below_it():
    assert layering_violations(PACKAGE) == []


def test_no_import_cycles_between_modules():
    assert module_cycles(PACKAGE) == []


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "convlens"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_checker_catches_upward_sideways_lazy_and_importlib_imports(tmp_path):
    root = _tree(
        tmp_path,
        {
            "__init__.py": "",
            "maps.py": "def f():\n    from convlens.attribution import explain\n",
            "render/__init__.py": "from convlens.evaluate.faithfulness import auc\n",
            "scan/a.py": "import convlens.train.loop\n",
            "data/b.py": "import importlib\nimportlib.import_module('convlens.models.loading')\n",
            "models/c.py": (
                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                "    from convlens.attribution import explain\nfrom convlens.data import images\n"
            ),
            "layers/d.py": "from . import e\n",
            "layers/e.py": "from .d import x\n",
        },
    )
    problems = layering_violations(root)
    assert any(p.startswith("convlens.maps:2 imports convlens.attribution") for p in problems)
    assert any(
        p.startswith("convlens.render.__init__:1 imports convlens.evaluate") for p in problems
    )
    assert any(p.startswith("convlens.scan.a:1 imports convlens.train") for p in problems)
    assert any(p.startswith("convlens.data.b:2 imports convlens.models") for p in problems)
    assert not any(p.startswith("convlens.models.c") for p in problems)  # type-only, downward
    assert len(problems) == 4
    assert module_cycles(root) == [["convlens.layers.d", "convlens.layers.e", "convlens.layers.d"]]


def _ours(name: str) -> bool:
    return name == "convlens" or name.startswith("convlens.")


def convlens_modules_loaded_by(module: str) -> set[str]:
    """The convlens modules that importing ``module`` loads where none is loaded yet. Run in
    this process with its convlens modules set aside and put back after (a fresh Python
    process, ``python -X importtime``, spent seconds importing torch for the same list)."""
    saved = {name: loaded for name, loaded in sys.modules.items() if _ours(name)}
    for name in saved:
        del sys.modules[name]
    try:
        importlib.import_module(module)
        return {name for name in sys.modules if _ours(name)}
    finally:
        for name in [name for name in sys.modules if _ours(name)]:
            del sys.modules[name]
        sys.modules.update(saved)


def test_the_metric_module_imports_no_attribution_data_or_model_code():
    import convlens.localize.metrics as before

    ours = convlens_modules_loaded_by("convlens.localize.metrics")
    assert "convlens.localize.metrics" in ours and "convlens.maps" in ours
    forbidden = ("convlens.attribution", "convlens.data", "convlens.models", "convlens.layers")
    assert not [name for name in ours if name.startswith(forbidden)]
    assert sys.modules["convlens.localize.metrics"] is before  # this process's modules are back
