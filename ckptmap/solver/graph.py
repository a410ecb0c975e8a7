"""The candidate graph: source operands, target operands and candidate edges, as one networkx graph.

A candidate can join several sources to several targets (a fused split, a concat), so it is a node of its
own, linked to every operand it touches. Connected components are independent assignment problems.
"""

from __future__ import annotations

import networkx as nx


def build_graph(n_sources: int, n_targets: int, candidates) -> nx.Graph:
    """Nodes ("s", i), ("t", j), ("c", k); edges from each candidate node to its operands."""
    g = nx.Graph()
    g.add_nodes_from((("s", i) for i in range(n_sources)), side="source")
    g.add_nodes_from((("t", j) for j in range(n_targets)), side="target")
    for k, c in enumerate(candidates):
        g.add_node(("c", k), side="candidate", score=c.score)
        g.add_edges_from((("c", k), ("s", i)) for i in c.sources)
        g.add_edges_from((("c", k), ("t", j)) for j in c.targets)
    return g


def components(g: nx.Graph) -> list[tuple[list[int], list[int], list[int]]]:
    """Independent sub-problems: (source indices, target indices, candidate indices) per component."""
    out = []
    for comp in nx.connected_components(g):
        s = sorted(i for kind, i in comp if kind == "s")
        t = sorted(i for kind, i in comp if kind == "t")
        c = sorted(i for kind, i in comp if kind == "c")
        out.append((s, t, c))
    return out
