"""Computation graph (DESIGN §4), circuit selection and pruning (§5), JSON round trip."""

from __future__ import annotations

import math

import networkx as nx
import pytest
import torch

from clue_mi.graph import (
    Circuit,
    ComputationGraph,
    graph_for,
    load_circuit,
    prune,
    save_circuit,
    select_circuit,
)


def closed_formula(n: int, h: int, g: int) -> int:
    """Edges of an N-layer model with H query heads and G KV heads, worked out by hand.

    Attention receivers of layer l (H + 2G of them) hear 1 + l(H+1) senders; m_l hears those
    and the layer's H heads; logits hears 1 + N(H+1); each head has 3 internal edges.
    """
    attn = (h + 2 * g) * (n + (h + 1) * n * (n - 1) // 2)
    mlp = n * (1 + h) + (h + 1) * n * (n - 1) // 2
    return attn + mlp + 1 + n * (h + 1) + 3 * n * h


@pytest.mark.parametrize("n,h,g", [(1, 1, 1), (2, 4, 2), (3, 6, 3), (4, 8, 2), (30, 9, 3)])
def test_edge_count_closed_formula(n, h, g):
    graph = ComputationGraph(n, h, g, d_model=8)
    assert graph.n_edges == closed_formula(n, h, g)
    assert len(set(graph.edges)) == graph.n_edges
    assert int(graph.adjacency.sum()) + 3 * n * h == graph.n_edges


def test_tiny_graph_matches_model_config(tiny):
    graph = graph_for(tiny)
    cfg = tiny.cfg
    assert (graph.n_layers, graph.n_heads, graph.n_kv_heads) == (2, 4, 2)
    assert graph.n_edges == closed_formula(cfg.n_layers, cfg.n_heads, cfg.n_key_value_heads)
    assert graph.n_edges == 106


def test_edges_follow_the_design():
    graph = ComputationGraph(2, 4, 2, d_model=8)
    edges = set(graph.edges)
    # group size 2: heads 0, 1 read KV group 0, heads 2, 3 read group 1
    assert ("a0.g0.k", "a0.h1") in edges and ("a0.g0.k", "a0.h2") not in edges
    assert ("a1.g1.v", "a1.h3") in edges and ("a1.h2.q", "a1.h2") in edges
    assert ("a0.h0", "m0") in edges  # a head feeds its own layer's MLP
    assert ("a0.h0", "a0.h1.q") not in edges  # ...but not its own layer's attention
    assert ("m0", "a1.g0.k") in edges and ("m0", "m0") not in edges
    assert ("m1", "logits") in edges and ("input", "logits") in edges
    assert ("a1.h0", "m0") not in edges  # nothing flows backwards
    nodes = graph.nodes
    assert nodes["a1.g1.k"].attrs() == {"kind": "k", "layer": 1, "group": 1}
    assert nodes["a0.h3.q"].attrs() == {"kind": "q", "layer": 0, "head": 3}
    assert nodes["input"].layer == -1 and nodes["logits"].layer == 2
    # index tensors agree with the names
    for i, (u, v) in enumerate(graph.edges):
        if graph.internal[i]:
            assert graph.senders[graph.edge_sender[i]] == v
            assert graph.receivers[graph.edge_receiver[i]] == u
        else:
            assert graph.senders[graph.edge_sender[i]] == u
            assert graph.receivers[graph.edge_receiver[i]] == v
    assert nx.is_directed_acyclic_graph(nx.DiGraph(graph.edges))


def test_bridge_without_edge_hooks_is_refused():
    from clue_mi.models import load_model

    plain = load_model("tiny-llama", device="cpu", edge_hooks=False)
    with pytest.raises(ValueError, match="edge hooks are off"):
        graph_for(plain)


def _scores_for(graph: ComputationGraph, ranked: list[tuple[str, str]]) -> torch.Tensor:
    scores = torch.zeros(graph.n_edges, dtype=torch.float64)
    for rank, edge in enumerate(ranked):
        # alternate signs: selection must rank by |score|
        scores[graph.edge_index[edge]] = (len(ranked) - rank) * (-1) ** rank
    return scores


def test_selection_prunes_dangling_edges():
    graph = ComputationGraph(2, 4, 2, d_model=8)
    good = [("input", "a0.h0.q"), ("a0.h0.q", "a0.h0"), ("a0.h0", "logits")]
    via_k = [("input", "a0.g1.k"), ("a0.g1.k", "a0.h3"), ("a0.h3", "m0"), ("m0", "logits")]
    dangling = [
        ("a1.h2", "logits"),  # a1.h2 has no kept input: unreachable from input
        ("input", "a1.h3.q"),  # a1.h3.q -> a1.h3 is not kept: cannot reach logits
        ("input", "a1.h1.q"),  # chain that stops at a1.h1, which feeds nothing kept
        ("a1.h1.q", "a1.h1"),
    ]
    ranked = good + dangling + via_k
    circuit = select_circuit(graph, _scores_for(graph, ranked), top_n=len(ranked), task="t")
    assert isinstance(circuit, Circuit)
    assert set(circuit.edges) == set(good + via_k)
    assert circuit.graph["sparsity"] == 1 - 7 / graph.n_edges
    assert circuit.graph["n_selected"] == len(ranked)
    assert circuit.graph["task"] == "t"
    assert circuit.nodes["a0.g1.k"] == {"kind": "k", "layer": 0, "group": 1}
    assert circuit.edges["a0.h0.q", "a0.h0"]["score"] == -(len(ranked) - 1)
    # the top edge alone does not connect input to logits: nothing survives
    empty = select_circuit(graph, _scores_for(graph, ranked), top_n=1)
    assert empty.number_of_edges() == 0 and set(empty.nodes) == {"input", "logits"}
    assert empty.graph["sparsity"] == 1.0


def test_selection_by_sparsity_keeps_ceiling_count():
    graph = ComputationGraph(2, 4, 2, d_model=8)
    scores = torch.linspace(-1, 1, graph.n_edges, dtype=torch.float64)
    circuit = select_circuit(graph, scores, sparsity=0.9)
    assert circuit.graph["n_selected"] == math.ceil(0.1 * graph.n_edges) == 11
    full = select_circuit(graph, scores, sparsity=0.0)
    assert full.number_of_edges() == graph.n_edges and full.graph["sparsity"] == 0.0
    with pytest.raises(ValueError):
        select_circuit(graph, scores)
    with pytest.raises(ValueError):
        select_circuit(graph, scores[:-1], sparsity=0.5)


def test_prune_reaches_a_fixpoint():
    edges = {("input", "a"), ("a", "b"), ("b", "logits"), ("c", "b"), ("a", "d")}
    assert prune(edges) == {("input", "a"), ("a", "b"), ("b", "logits")}
    assert prune({("input", "x")}) == set()


def test_json_round_trip_is_lossless(tmp_path):
    graph = ComputationGraph(2, 4, 2, d_model=8)
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(graph.n_edges, generator=gen, dtype=torch.float64) * 1e-7
    circuit = select_circuit(graph, scores, sparsity=0.3, model="tiny", task="ioi")
    circuit.graph["faithfulness"] = {"kl": 0.1 / 3, "recovery": 2 / 3}
    back = load_circuit(save_circuit(circuit, tmp_path / "c.json"))
    assert isinstance(back, Circuit)
    assert back.graph == circuit.graph
    assert dict(back.nodes(data=True)) == dict(circuit.nodes(data=True))
    assert set(back.edges) == set(circuit.edges) and back.number_of_edges() > 0
    for u, v, data in circuit.edges(data=True):
        assert back.edges[u, v]["score"] == data["score"]  # bit-exact floats
        assert back.edges[u, v]["score"] == float(scores[graph.edge_index[(u, v)]])
