"""Tests of clue_mi.gates: gate typing of noising + denoising circuits (DESIGN §6)."""

from __future__ import annotations

import networkx as nx
import pytest

from clue_mi.gates import gate_counts, is_internal_edge, logical_circuit, node_kind, node_layer
from clue_mi.localization import LocalizationError, localize


def _circuit(direction: str, edges: dict[tuple[str, str], float], **attrs) -> nx.DiGraph:
    g = nx.DiGraph(direction=direction, model="tiny", task="ioi", **attrs)
    for (u, v), score in edges.items():
        g.add_edge(u, v, score=score)
    for n in g:
        g.nodes[n]["kind"] = node_kind(n)
        g.nodes[n]["layer"] = node_layer(n) if n != "logits" else 2
    return g


def make_pair() -> tuple[nx.DiGraph, nx.DiGraph]:
    noising = _circuit(
        "noising",
        {
            ("input", "m0"): 0.5,  # both -> ADDER
            ("input", "a1.h0.q"): 0.4,  # noising only; 2 AND edges at a1.h0.q -> AND
            ("m0", "a1.h0.q"): -0.3,  # noising only -> AND
            ("a1.h0.q", "a1.h0"): 0.2,  # internal, noising only -> still ADDER
            ("m0", "logits"): 0.9,  # noising only, the single AND edge at logits -> ADDER
            ("a1.h0", "logits"): 0.7,  # both -> ADDER
        },
        sparsity=0.9,
    )
    denoising = _circuit(
        "denoising",
        {
            ("input", "m0"): -0.8,
            ("a1.h0", "logits"): 0.1,
            ("input", "logits"): 0.3,  # denoising only; 2 OR edges at logits -> OR
            ("m1", "logits"): 0.2,  # denoising only -> OR
            ("input", "m1"): 0.6,  # denoising only, single OR edge at m1 -> ADDER
        },
        sparsity=0.8,
    )
    return noising, denoising


EXPECTED_GATES = {
    ("input", "m0"): "ADDER",
    ("input", "a1.h0.q"): "AND",
    ("m0", "a1.h0.q"): "AND",
    ("a1.h0.q", "a1.h0"): "ADDER",
    ("m0", "logits"): "ADDER",
    ("a1.h0", "logits"): "ADDER",
    ("input", "logits"): "OR",
    ("m1", "logits"): "OR",
    ("input", "m1"): "ADDER",
}


def test_gate_typing_union_and_rules():
    noising, denoising = make_pair()
    logical = logical_circuit(noising, denoising)
    assert set(logical.edges) == set(EXPECTED_GATES)
    assert {e: logical.edges[e]["gate"] for e in logical.edges} == EXPECTED_GATES


def test_source_records_type_before_single_input_rule():
    logical = logical_circuit(*make_pair())
    assert logical.edges["m0", "logits"]["source"] == "noising"  # AND before the rule
    assert logical.edges["input", "m1"]["source"] == "denoising"  # OR before the rule
    assert logical.edges["a1.h0", "logits"]["source"] == "both"


def test_internal_edges_are_adder_even_from_one_side():
    noising, denoising = make_pair()
    # Two internal edges present only in denoising must not become an OR gate.
    for name in ("a1.g0.k", "a1.g0.v"):
        denoising.add_edge(name, "a1.h0", score=0.1)
        denoising.add_edge("input", name, score=0.1)
    logical = logical_circuit(noising, denoising)
    for sender in ("a1.h0.q", "a1.g0.k", "a1.g0.v"):
        assert logical.edges[sender, "a1.h0"]["gate"] == "ADDER"
        assert logical.edges[sender, "a1.h0"]["internal"] is True
        assert is_internal_edge(logical, sender, "a1.h0")
    assert logical.edges["m0", "logits"]["internal"] is False


def test_single_input_rule_per_gate_type():
    # r has one AND edge and two OR edges: the AND becomes ADDER, the ORs stay.
    ns = nx.DiGraph(direction="noising")
    dn = nx.DiGraph(direction="denoising")
    ns.add_edge("x", "logits", score=1.0)
    dn.add_edge("y", "logits", score=1.0)
    dn.add_edge("z", "logits", score=1.0)
    logical = logical_circuit(ns, dn)
    assert logical.edges["x", "logits"]["gate"] == "ADDER"
    assert logical.edges["y", "logits"]["gate"] == "OR"
    assert logical.edges["z", "logits"]["gate"] == "OR"
    # With a second noising edge the AND gate is real.
    ns.add_edge("w", "logits", score=1.0)
    logical = logical_circuit(ns, dn)
    assert logical.edges["x", "logits"]["gate"] == "AND"
    assert logical.edges["w", "logits"]["gate"] == "AND"


def test_both_scores_kept():
    logical = logical_circuit(*make_pair())
    both = logical.edges["input", "m0"]
    assert both["score_noising"] == 0.5 and both["score_denoising"] == -0.8
    assert both["score"] == -0.8  # the larger magnitude
    only_ns = logical.edges["m0", "a1.h0.q"]
    assert only_ns["score_noising"] == -0.3 and only_ns["score_denoising"] is None
    only_dn = logical.edges["m1", "logits"]
    assert only_dn["score_noising"] is None and only_dn["score_denoising"] == 0.2


def test_node_and_graph_attrs():
    logical = logical_circuit(*make_pair())
    assert logical.nodes["m1"] == {"kind": "mlp", "layer": 1}  # denoising-only node kept
    assert logical.nodes["a1.h0.q"]["kind"] == "q"
    assert logical.graph["direction"] == "logical"
    assert logical.graph["model"] == "tiny" and logical.graph["task"] == "ioi"
    assert "sparsity" not in logical.graph  # they differ: only in the per-source copies
    assert logical.graph["noising"]["sparsity"] == 0.9
    assert logical.graph["denoising"]["sparsity"] == 0.8


def test_inputs_not_modified():
    noising, denoising = make_pair()
    before = (list(noising.edges(data=True)), list(denoising.edges(data=True)))
    logical_circuit(noising, denoising)
    assert before == (list(noising.edges(data=True)), list(denoising.edges(data=True)))


def test_gate_counts():
    logical = logical_circuit(*make_pair())
    counts = gate_counts(logical)
    assert counts["total"] == {"AND": 2, "OR": 2, "ADDER": 5}
    assert counts["by_layer"] == {
        0: {"AND": 0, "OR": 0, "ADDER": 1},  # input -> m0
        1: {"AND": 2, "OR": 0, "ADDER": 2},  # a1.h0.q (2 AND), a1.h0 (internal), m1
        2: {"AND": 0, "OR": 2, "ADDER": 2},  # logits
    }
    assert counts["by_kind"]["logits"] == {"AND": 0, "OR": 2, "ADDER": 2}
    assert counts["by_kind"]["q"] == {"AND": 2, "OR": 0, "ADDER": 0}
    assert counts["by_kind"]["head"] == {"AND": 0, "OR": 0, "ADDER": 1}
    assert sum(row["count"] for row in counts["rows"]) == logical.number_of_edges()
    assert {"layer": 1, "kind": "q", "gate": "AND", "count": 2} in counts["rows"]
    without = gate_counts(logical, include_internal=False)
    assert without["total"]["ADDER"] == 4 and "head" not in without["by_kind"]


def test_gate_counts_infers_layers_from_names():
    g = nx.DiGraph()
    g.add_edge("a0.h1", "m0", gate="AND")
    g.add_edge("m0", "logits", gate="OR")
    counts = gate_counts(g)
    assert list(counts["by_layer"]) == [0, 1]  # logits goes past the deepest layer
    g.add_edge("m0", "x", gate="BOGUS")
    with pytest.raises(ValueError, match="gate='BOGUS'"):
        gate_counts(g)


def test_node_kind_and_layer_from_names():
    assert [node_kind(n) for n in ("input", "a3.h1.q", "a3.g0.k", "a3.g0.v", "a3.h1", "m7")] == [
        "input",
        "q",
        "k",
        "v",
        "head",
        "mlp",
    ]
    assert node_kind("logits") == "logits" and node_kind("A") == "other"
    assert node_kind("A", {"kind": "mlp"}) == "mlp"
    assert node_layer("a12.g2.v") == 12 and node_layer("input") == -1
    assert node_layer("logits") is None and node_layer("logits", {"layer": 30}) == 30


def test_logical_circuit_feeds_localize():
    noising, denoising = make_pair()
    logical = logical_circuit(noising, denoising)
    # The same behaviour to forget and to keep: whatever the forget side edits is a conflict.
    # input -> logits is OR, so the frozen input keeps the forget output on unless relaxed.
    with pytest.raises(LocalizationError, match="relax_frozen=True"):
        localize(logical, [logical], semantics="output")
    loc = localize(logical, [logical], semantics="output", relax_frozen=True)
    assert loc.relaxed_edges == [("input", "logits")]
    # Forget needs m0, a1.h0 and m1 off; retain needs m0 and a1.h0 (AND) but not m1 (its
    # OR part is met by input). a1.h0 goes dark in forget through a1.h0.q's AND edge from m0.
    assert loc.conflict == {"m0"} and loc.forget == {"m1"}
    assert loc.retain == {"a1.h0.q", "a1.h0"} and not loc.satisfiable


def test_errors():
    noising, denoising = make_pair()
    with pytest.raises(ValueError, match="swapped"):
        logical_circuit(denoising, noising)
    broken = noising.copy()
    broken.remove_node("logits")
    with pytest.raises(ValueError, match="no 'logits' node"):
        logical_circuit(broken, denoising)
    cyclic = denoising.copy()
    cyclic.add_edge("logits", "input")
    with pytest.raises(ValueError, match="cycle"):
        logical_circuit(noising, cyclic)
    with pytest.raises(TypeError, match="DiGraph"):
        logical_circuit(noising, nx.Graph(denoising))
    renamed = logical_circuit(
        nx.relabel_nodes(noising, {"logits": "out"}),
        nx.relabel_nodes(denoising, {"logits": "out"}),
        output="out",
    )
    assert renamed.has_edge("m1", "out")
