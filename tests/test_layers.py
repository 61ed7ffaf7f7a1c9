"""The package's shape: its folders are layers, every import points down, and nothing imports in a circle.

The import graph is read from the source (ast), so an import inside a function counts like any other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import impersonator_cli

PACKAGE = Path(impersonator_cli.__file__).parent
NAME = "impersonator_cli"

# Bottom to top. A module may import modules of its own layer (without a cycle) and of lower layers.
LAYERS = (
    ("version", "types", "defaults", "errors"),
    ("devices",),
    ("io",),
    ("weights",),
    ("body",),
    ("render",),
    ("gan",),
    ("pipeline",),
    ("tune",),
    ("jobs",),
    ("train",),
    ("api",),
    ("batch",),
    ("demo",),
    ("cli",),
    ("__main__", "__init__"),
)
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}
MAX_TOP_LEVEL_FILES = 8


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module of the package that `name` imports, wherever the import statement stands."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = name.split(".") if is_package else name.split(".")[:-1]
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imported(name, path, set(mods)) for name, path in mods.items()}


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_module_belongs_to_a_layer():
    assert sorted({unit(m) for m in modules()} - set(RANK)) == []


def test_imports_point_down_or_within_their_layer():
    upward = sorted(f"{a} -> {b}" for a, deps in graph().items() for b in deps
                    if RANK[unit(b)] > RANK[unit(a)] or (RANK[unit(b)] == RANK[unit(a)] and unit(a) != unit(b)))
    assert upward == []


def test_the_import_graph_has_no_cycle():
    edges, state, cycles = graph(), {}, []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(edges[node]):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(stack[stack.index(dep):] + [node, dep]) if dep in stack else f"{node} -> {dep}")
            elif dep not in state:
                visit(dep, stack + [node])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    assert cycles == []


def test_the_package_top_level_stays_small():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_FILES, top


def test_the_checker_sees_an_upward_import_and_a_cycle(tmp_path):
    """The rules catch what they are for: an import written inside a function counts."""
    body = tmp_path / "body_mod.py"
    body.write_text("def f():\n    from impersonator_cli.api import Impersonator\n")
    assert "impersonator_cli.api" in imported("impersonator_cli.body.x", body, {"impersonator_cli.api"})
    rel = tmp_path / "rel.py"
    rel.write_text("from ..render import maps\nfrom . import smpl\n")
    known = {"impersonator_cli.render.maps", "impersonator_cli.body.smpl"}
    assert imported("impersonator_cli.body.x", rel, known) == known


def test_the_package_root_exports_the_api_and_the_cli_starts_light():
    """`from impersonator_cli import Impersonator` works; loading the CLI (for --help, --version, a usage
    error) imports neither torch nor the API, which load on first use."""
    import subprocess
    import sys

    from impersonator_cli import Impersonator, ImitateOptions, SourceOptions
    from impersonator_cli import api

    assert (Impersonator, ImitateOptions, SourceOptions) == (api.Impersonator, api.ImitateOptions, api.SourceOptions)
    code = "import sys, impersonator_cli.cli; print(sorted(m for m in ('torch', 'impersonator_cli.api') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
