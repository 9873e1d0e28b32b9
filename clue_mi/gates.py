"""Gate typing: noising + denoising circuits -> one logical circuit (DESIGN §6).

The noising circuit C_Ns finds edges that are each *necessary*, the denoising circuit C_Dn
edges that are each *sufficient*. Their union, with every edge typed, is the logical circuit
that :mod:`clue_mi.cnf` turns into CNF:

* edge in C_Ns only -> ``"AND"``; in C_Dn only -> ``"OR"``; in both -> ``"ADDER"``;
* internal edges (``a{L}.h{H}.q`` / ``a{L}.g{G}.k`` / ``a{L}.g{G}.v`` -> ``a{L}.h{H}``) are
  always ``"ADDER"``;
* single-input rule: a receiver with exactly one incoming AND edge has no AND gate to speak
  of, so that edge becomes ``"ADDER"``; the same for a single OR edge.

Every edge of the result carries:

``gate``            ``"AND"`` / ``"OR"`` / ``"ADDER"`` after both rules above;
``source``          ``"noising"``, ``"denoising"`` or ``"both"``: the circuits holding the edge
                    (so the type before the single-input rule can always be recovered);
``score_noising``   the edge's ``score`` in C_Ns as a float, ``None`` if the edge is not in C_Ns
                    (or has no ``score`` there);
``score_denoising`` likewise for C_Dn;
``score``           the one of the two with the larger magnitude, so code that ranks or draws
                    edges by ``score`` keeps working (``None`` if neither has a score);
``internal``        ``True`` for q/k/v -> head edges.

Node kinds and layers come from the node attributes ``kind`` / ``layer`` when present and are
otherwise read from the node name (DESIGN §4 naming), see :func:`node_kind`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import networkx as nx

__all__ = [
    "GATES",
    "gate_counts",
    "is_internal_edge",
    "logical_circuit",
    "node_kind",
    "node_layer",
]

GATES: tuple[str, str, str] = ("AND", "OR", "ADDER")
_SOURCE_GATE = {"noising": "AND", "denoising": "OR", "both": "ADDER"}

_NAME_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^a(\d+)\.h(\d+)\.q$"), "q"),
    (re.compile(r"^a(\d+)\.g(\d+)\.k$"), "k"),
    (re.compile(r"^a(\d+)\.g(\d+)\.v$"), "v"),
    (re.compile(r"^a(\d+)\.h(\d+)$"), "head"),
    (re.compile(r"^m(\d+)$"), "mlp"),
]


def node_kind(name: str, attrs: Mapping[str, Any] | None = None) -> str:
    """Kind of a node: its ``kind`` attribute, else read from its name.

    Names follow DESIGN §4 (``input``, ``a3.h1.q``, ``a3.g0.k``, ``a3.g0.v``, ``a3.h1``,
    ``m3``, ``logits``). A name that matches none of them (a hand-made ``"A"``) is ``"other"``.
    """
    if attrs is not None and attrs.get("kind") is not None:
        return str(attrs["kind"])
    if name in ("input", "logits"):
        return name
    for pattern, kind in _NAME_PATTERNS:
        if pattern.match(name):
            return kind
    return "other"


def node_layer(name: str, attrs: Mapping[str, Any] | None = None) -> int | None:
    """Layer of a node: its ``layer`` attribute, else read from its name.

    ``input`` is layer -1. ``logits`` has no layer in its name (it is ``n_layers``, which the
    name does not tell), so without a ``layer`` attribute it is ``None``, as is any name
    outside DESIGN §4.
    """
    if attrs is not None and attrs.get("layer") is not None:
        return int(attrs["layer"])
    if name == "input":
        return -1
    for pattern, _ in _NAME_PATTERNS:
        match = pattern.match(name)
        if match:
            return int(match.group(1))
    return None


def is_internal_edge(circuit: nx.DiGraph, sender: str, receiver: str) -> bool:
    """True for the q/k/v -> head edges inside one attention head (always ADDER)."""
    return (
        node_kind(sender, circuit.nodes[sender]) in ("q", "k", "v")
        and node_kind(receiver, circuit.nodes[receiver]) == "head"
    )


def _check_circuit(circuit: Any, role: str, output: str) -> None:
    """Raise a clear error if ``circuit`` cannot be one side of a logical circuit."""
    if not isinstance(circuit, nx.DiGraph) or circuit.is_multigraph():
        raise TypeError(
            f"the {role} circuit must be a networkx.DiGraph, got {type(circuit).__name__}"
        )
    if output not in circuit:
        raise ValueError(
            f"the {role} circuit has no {output!r} node: every circuit must end in the output "
            f"node (pass output=... if yours is named differently)"
        )
    if not nx.is_directed_acyclic_graph(circuit):
        cycle = " -> ".join(str(u) for u, _ in nx.find_cycle(circuit))
        raise ValueError(
            f"the {role} circuit has a cycle ({cycle}); circuits must be DAGs, so check how "
            f"it was built"
        )
    direction = circuit.graph.get("direction")
    if direction is not None and direction != role:
        raise ValueError(
            f"the circuit passed as {role} says direction={direction!r}: are the noising and "
            f"denoising arguments swapped?"
        )


def _score(attrs: Mapping[str, Any]) -> float | None:
    value = attrs.get("score")
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _merged_graph_attrs(noising: nx.DiGraph, denoising: nx.DiGraph) -> dict[str, Any]:
    """Graph attrs: both sources in full, plus every key on which they agree at the top."""
    attrs: dict[str, Any] = {
        key: value
        for key, value in noising.graph.items()
        if key != "direction" and key in denoising.graph and denoising.graph[key] == value
    }
    attrs["direction"] = "logical"
    attrs["noising"] = dict(noising.graph)
    attrs["denoising"] = dict(denoising.graph)
    return attrs


def logical_circuit(
    noising: nx.DiGraph, denoising: nx.DiGraph, *, output: str = "logits"
) -> nx.DiGraph:
    """Union of the noising and denoising circuits with a ``gate`` on every edge.

    Args:
        noising: circuit found by noising attribution (C_Ns); edges only here become AND.
        denoising: circuit found by denoising attribution (C_Dn); edges only here become OR.
        output: name of the output node both circuits must contain.

    Returns:
        A new DiGraph: node attributes of both inputs merged (noising wins on a clash),
        edge attributes as described in the module docstring, graph attributes
        ``direction="logical"``, ``noising`` / ``denoising`` (copies of both sources'
        metadata) and every metadata key on which the two agree (``model``, ``task``, ...).

    Raises:
        TypeError: an argument is not a ``networkx.DiGraph``.
        ValueError: a circuit lacks ``output``, has a cycle, or says (``direction``
            attribute) that it is the other direction.
    """
    _check_circuit(noising, "noising", output)
    _check_circuit(denoising, "denoising", output)

    logical = nx.DiGraph()
    logical.graph.update(_merged_graph_attrs(noising, denoising))
    # Insertion order follows the inputs (no set iteration), so results are reproducible.
    for node in [*noising, *(n for n in denoising if n not in noising)]:
        attrs = dict(denoising.nodes[node]) if node in denoising else {}
        if node in noising:
            attrs.update(noising.nodes[node])
        logical.add_node(node, **attrs)

    edges = [*noising.edges, *(e for e in denoising.edges if not noising.has_edge(*e))]
    for sender, receiver in edges:
        in_ns = noising.has_edge(sender, receiver)
        in_dn = denoising.has_edge(sender, receiver)
        source = "both" if in_ns and in_dn else "noising" if in_ns else "denoising"
        score_ns = _score(noising.edges[sender, receiver]) if in_ns else None
        score_dn = _score(denoising.edges[sender, receiver]) if in_dn else None
        scores = [s for s in (score_ns, score_dn) if s is not None]
        logical.add_edge(
            sender,
            receiver,
            source=source,
            score_noising=score_ns,
            score_denoising=score_dn,
            score=max(scores, key=abs) if scores else None,
            internal=is_internal_edge(logical, sender, receiver),
        )

    _assign_gates(logical)
    if not nx.is_directed_acyclic_graph(logical):
        # Each side is a DAG, but two circuits of one model can still disagree on edge
        # direction only if they were built on different graphs.
        cycle = " -> ".join(str(u) for u, _ in nx.find_cycle(logical))
        raise ValueError(
            f"the union of the two circuits has a cycle ({cycle}): were they built on the "
            f"same model graph?"
        )
    return logical


def _assign_gates(logical: nx.DiGraph) -> None:
    """Set ``gate`` on every edge: source type, internal rule, then the single-input rule."""
    for receiver in logical:
        incoming = list(logical.in_edges(receiver, data=True))
        gates: dict[tuple[str, str], str] = {}
        for sender, _, attrs in incoming:
            base = _SOURCE_GATE[attrs["source"]]
            gates[sender, receiver] = "ADDER" if attrs["internal"] else base
        for gate in ("AND", "OR"):
            of_type = [edge for edge, g in gates.items() if g == gate]
            if len(of_type) == 1:  # a one-input AND/OR is no gate: keep the edge as ADDER
                gates[of_type[0]] = "ADDER"
        for edge, gate in gates.items():
            logical.edges[edge]["gate"] = gate


def _zero_counts() -> dict[str, int]:
    return dict.fromkeys(GATES, 0)


def gate_counts(circuit: nx.DiGraph, *, include_internal: bool = True) -> dict[str, Any]:
    """Count the gate types of a logical circuit's edges, by receiver layer and kind.

    An edge is counted at its *receiver* (the node whose gate it is part of).

    Args:
        circuit: a logical circuit (every edge has ``gate``).
        include_internal: count the internal q/k/v -> head edges (always ADDER) too.

    Returns:
        A dict with

        ``"total"``:    ``{"AND": n, "OR": n, "ADDER": n}``;
        ``"by_layer"``: ``{layer: {"AND": n, "OR": n, "ADDER": n}}`` sorted by layer; a
                        ``logits`` receiver without a ``layer`` attribute is put one layer past
                        the deepest known layer, other layerless receivers under ``None``;
        ``"by_kind"``:  ``{receiver kind: {"AND": n, ...}}`` (``q``, ``k``, ``v``, ``head``,
                        ``mlp``, ``logits``, ``other``);
        ``"rows"``:     long format, one dict ``{"layer", "kind", "gate", "count"}`` per
                        non-zero cell, for ``pandas.DataFrame(rows)``.

        ``pandas.DataFrame(counts["by_layer"]).T`` gives a layer x gate table ready for a
        stacked bar plot.

    Raises:
        ValueError: an edge has no ``gate`` or an unknown one.
    """
    layers = {node: node_layer(node, circuit.nodes[node]) for node in circuit}
    known = [layer for layer in layers.values() if layer is not None]
    past_last = (max(known) + 1) if known else 0
    for node, layer in layers.items():
        if layer is None and node_kind(node, circuit.nodes[node]) == "logits":
            layers[node] = past_last

    total = _zero_counts()
    by_layer: dict[int | None, dict[str, int]] = {}
    by_kind: dict[str, dict[str, int]] = {}
    cells: dict[tuple[int | None, str, str], int] = {}
    for sender, receiver, attrs in circuit.edges(data=True):
        gate = attrs.get("gate")
        if gate not in GATES:
            raise ValueError(
                f"edge {sender} -> {receiver} has gate={gate!r}; expected one of {GATES} "
                f"(build the circuit with gates.logical_circuit)"
            )
        if not include_internal and is_internal_edge(circuit, sender, receiver):
            continue
        layer = layers[receiver]
        kind = node_kind(receiver, circuit.nodes[receiver])
        total[gate] += 1
        by_layer.setdefault(layer, _zero_counts())[gate] += 1
        by_kind.setdefault(kind, _zero_counts())[gate] += 1
        cells[layer, kind, gate] = cells.get((layer, kind, gate), 0) + 1

    def layer_key(layer: int | None) -> float:
        return math.inf if layer is None else layer

    rows = [
        {"layer": layer, "kind": kind, "gate": gate, "count": count}
        for (layer, kind, gate), count in sorted(
            cells.items(), key=lambda item: (layer_key(item[0][0]), item[0][1], item[0][2])
        )
    ]
    return {
        "total": total,
        "by_layer": {layer: by_layer[layer] for layer in sorted(by_layer, key=layer_key)},
        "by_kind": dict(sorted(by_kind.items())),
        "rows": rows,
    }
