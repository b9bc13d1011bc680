"""DESIGN.md's layering, read from the sources: scp never imports pipeline or workers, pipeline
never imports scp or workers, and the workers modules import each other without a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kneenode", "scp", "pipeline", "workers")


def _imports(path: Path) -> set[str]:
    """Every module of the project that ``path`` imports (also inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {m for m in found if m.split(".")[0] in PACKAGES}


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def test_scp_and_pipeline_keep_their_layer():
    for package, forbidden in (("scp", ("pipeline", "workers")), ("pipeline", ("scp", "workers"))):
        for path in (ROOT / package).rglob("*.py"):
            bad = {m for m in _imports(path) if m.split(".")[0] in forbidden}
            assert not bad, f"{_module(path)} imports {sorted(bad)} (DESIGN.md layering)"


def test_workers_modules_have_no_import_cycle():
    graph = {_module(p): {m for m in _imports(p) if m.startswith("workers.")}
             for p in (ROOT / "workers").glob("*.py")}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*trail, node, nxt]))
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
