"""The package's layering, read from the source: module-level imports between edgeflow's modules
form no cycle, `Span` sits below everything, and the modules a worker or an editor loads stay
light."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

from tests.conftest import ROOT

PACKAGE = ROOT / "edgeflow"


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path) -> set[str]:
    """edgeflow modules imported when `path` is imported: module-level statements only, not
    those under `if TYPE_CHECKING:` or inside functions."""
    out: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
            out.add(node.module)
            out.update(names)  # `from edgeflow import api` imports the module edgeflow.api
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("edgeflow")}


def _graph() -> nx.DiGraph:
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph = nx.DiGraph()
    for name, path in modules.items():
        graph.add_node(name)
        for target in _top_level_imports(path):
            if target in modules and target != name:
                graph.add_edge(name, target)
    return graph


def test_no_import_cycles() -> None:
    graph = _graph()
    assert nx.is_directed_acyclic_graph(graph), nx.find_cycle(graph)


def test_span_and_the_worker_contract_sit_at_the_bottom() -> None:
    graph = _graph()
    for leaf in ("edgeflow.span", "edgeflow.unit_config"):
        assert not list(graph.successors(leaf)), f"{leaf} imports {list(graph.successors(leaf))}"
    for module in ("edgeflow.diagnostics", "edgeflow.ir", "edgeflow.plan",
                   "edgeflow.placement.milp", "edgeflow.objectives"):
        reached = nx.descendants(graph, module)
        assert not {m for m in reached if m.startswith("edgeflow.syntax")}, module
    # the checker and the language server never load the solver or the emitters
    for module in ("edgeflow.semantics.lower", "edgeflow.lsp.server", "edgeflow.api"):
        reached = nx.descendants(graph, module)
        assert "edgeflow.placement.milp" not in reached and "edgeflow.emit" not in reached, module
