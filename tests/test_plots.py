"""clue_mi.plots on small hand-made inputs (Agg backend, no model), plus exact edge patching on
the tiny model."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import math  # noqa: E402
import os  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import networkx as nx  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.container import BarContainer  # noqa: E402

from clue_mi import plots  # noqa: E402
from clue_mi.gates import gate_counts, logical_circuit  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _node(g: nx.DiGraph, name: str) -> None:
    from clue_mi.gates import node_kind, node_layer

    kind = node_kind(name)
    layer = {"input": -1, "logits": 2}.get(kind, node_layer(name))
    g.add_node(name, kind=kind, layer=layer)


def _hand_logical() -> nx.DiGraph:
    """A 2-layer logical circuit with 2 AND edges into m1, 2 OR edges into logits, ADDERs."""
    noising, denoising = nx.DiGraph(), nx.DiGraph()
    ns_edges = [
        ("input", "a0.h0.q"),
        ("a0.h0.q", "a0.h0"),
        ("a0.h0", "m1"),  # AND
        ("input", "m1"),  # AND
        ("m1", "logits"),  # ADDER (both)
    ]
    dn_edges = [
        ("input", "a0.h0.q"),
        ("a0.h0.q", "a0.h0"),
        ("m1", "logits"),
        ("a0.h0", "logits"),  # OR
        ("m0", "logits"),  # OR
        ("input", "m0"),  # single OR into m0 -> ADDER
    ]
    for g, edges, score in ((noising, ns_edges, -1.0), (denoising, dn_edges, 0.5)):
        for u, v in edges:
            _node(g, u)
            _node(g, v)
            g.add_edge(u, v, score=score)
    return logical_circuit(noising, denoising)


def _rgba(collection: LineCollection) -> tuple[float, ...]:
    """RGB of a collection's first line (alpha is a style choice, not the gate)."""
    return tuple(np.round(collection.get_colors()[0][:3], 3))


def test_draw_logical_circuit_colours_edges_by_gate():
    logical = _hand_logical()
    expected = {g: 0 for g in plots.GATE_COLORS}
    for _, _, gate in logical.edges(data="gate"):
        expected[gate] += 1
    assert expected == {"AND": 2, "OR": 2, "ADDER": 4}

    fig = plots.draw_logical_circuit(logical)
    ax = fig.axes[0]
    lines = {c.get_label(): c for c in ax.collections if isinstance(c, LineCollection)}
    assert set(lines) == {"AND", "OR", "ADDER"}
    for gate, collection in lines.items():
        assert len(collection.get_segments()) == expected[gate]
        assert _rgba(collection) == tuple(np.round(to_rgba(plots.GATE_COLORS[gate])[:3], 3))
    # One node scatter per kind, every node drawn once.
    scatters = [c for c in ax.collections if not isinstance(c, LineCollection)]
    assert sum(len(c.get_offsets()) for c in scatters) == logical.number_of_nodes()
    # The AND edge a0.h0 -> m1 is drawn between the layout positions of its ends.
    pos = plots.layered_layout(logical)
    and_segments = [tuple(map(tuple, s)) for s in lines["AND"].get_segments()]
    assert (pos["a0.h0"], pos["m1"]) in and_segments


def test_draw_without_internal_edges_and_into_given_axes():
    logical = _hand_logical()
    fig, ax = plt.subplots()
    out = plots.draw_logical_circuit(logical, ax=ax, include_internal=False)
    assert out is fig
    adder = [c for c in ax.collections if c.get_label() == "ADDER"][0]
    # a0.h0.q -> a0.h0 (internal) is gone: 4 - 1 ADDER edges remain.
    assert len(adder.get_segments()) == 3


def test_draw_top_edges_only():
    logical = _hand_logical()
    for u, v in logical.edges:
        logical.edges[u, v]["score"] = 0.1
    logical.edges["a0.h0", "m1"]["score"] = -5.0  # AND
    logical.edges["m0", "logits"]["score"] = 3.0  # OR
    fig = plots.draw_logical_circuit(logical, max_edges=2)
    lines = {c.get_label(): c for c in fig.axes[0].collections if isinstance(c, LineCollection)}
    assert {k: len(c.get_segments()) for k, c in lines.items()} == {"AND": 1, "OR": 1}
    # Nodes: the edges' ends plus input and logits.
    drawn = sum(len(c.get_offsets()) for c in fig.axes[0].collections if c not in lines.values())
    assert drawn == len({"a0.h0", "m1", "m0", "logits", "input"})


def test_layered_layout_orders_layers():
    pos = plots.layered_layout(_hand_logical())
    y = {node: p[1] for node, p in pos.items()}
    assert y["input"] < y["a0.h0.q"] < y["a0.h0"] < y["m0"] < y["m1"] < y["logits"]
    assert all(0 < p[0] < 1 for p in pos.values())


def test_plot_gate_counts_bars_match_counts():
    counts = gate_counts(_hand_logical())
    fig = plots.plot_gate_counts(counts)
    ax_layer, ax_kind = fig.axes
    containers = [c for c in ax_layer.containers if isinstance(c, BarContainer)]
    assert [c.get_label() for c in containers] == ["AND", "OR", "ADDER"]
    n_layers = len(counts["by_layer"])
    for container in containers:
        gate = container.get_label()
        assert len(container.patches) == n_layers
        heights = [p.get_height() for p in container.patches]
        assert heights == [counts["by_layer"][layer][gate] for layer in counts["by_layer"]]
        assert container.patches[0].get_facecolor() == to_rgba(plots.GATE_COLORS[gate])
    # Stacked: total bar height per layer is that layer's edge count.
    tops = np.sum([[p.get_height() for p in c.patches] for c in containers], axis=0)
    assert tops.tolist() == [sum(v.values()) for v in counts["by_layer"].values()]
    assert len(ax_kind.patches) == 3 * len(counts["by_kind"])


def test_plot_neuron_distribution_bars_and_lines():
    counts = {
        "CLUE forget": {"q": [10, 0], "k": [0, 0], "down": [0, 30]},
        "WAGLE": {"q": [1, 1], "k": [2, 2], "down": [5, 5]},
    }
    fig = plots.plot_neuron_distribution(counts)
    ax_kind, ax_layer = fig.axes
    containers = ax_kind.containers
    assert [c.get_label() for c in containers] == ["CLUE forget", "WAGLE"]
    assert [p.get_height() for p in containers[0].patches] == [10, 0, 30]  # q, k, down
    assert [p.get_height() for p in containers[1].patches] == [2, 4, 10]
    lines = ax_layer.get_lines()
    assert len(lines) == 2
    assert lines[0].get_ydata().tolist() == [10, 30]

    sizes = {"q": [100, 100], "k": [50, 50], "down": [300, 300]}
    frac = plots.plot_neuron_distribution(counts, sizes)
    heights = [p.get_height() for p in frac.axes[0].containers[0].patches]
    assert heights == pytest.approx([0.05, 0.0, 0.05])


def test_plot_sparsity_faithfulness_lines():
    rows = [
        {"sparsity": 0.9, "kl_noising": 0.5, "kl_denoising": 0.7, "delta_fe": 0.3},
        {"sparsity": 0.2, "kl_noising": 0.01, "kl_denoising": 0.02, "delta_fe": 0.1},
    ]
    fig = plots.plot_sparsity_faithfulness(rows)
    ax_kl, ax_fe = fig.axes
    kl_lines = ax_kl.get_lines()
    assert [line.get_label() for line in kl_lines] == ["kl_denoising", "kl_noising"]
    assert kl_lines[1].get_xdata().tolist() == [0.2, 0.9]  # sorted by sparsity
    assert kl_lines[1].get_ydata().tolist() == [0.01, 0.5]
    fe = [line for line in ax_fe.get_lines() if line.get_label() == "delta_fe"]
    assert fe[0].get_ydata().tolist() == [0.1, 0.3]
    assert ax_kl.get_yscale() == "log"


def test_save_figure_writes_png_atomically(tmp_path, monkeypatch):
    fig = plots.plot_sparsity_faithfulness([{"sparsity": 0.5, "kl": 0.1, "delta_fe": 0.0}])
    path = plots.save_figure(fig, tmp_path / "sub" / "fig")
    assert path.name == "fig.png"
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    assert os.listdir(path.parent) == ["fig.png"]  # no temp file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600

    # A failing write leaves the previous file intact and no temp file behind.
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(fig, "savefig", boom)
    with pytest.raises(RuntimeError):
        plots.save_figure(fig, path)
    assert path.read_bytes() == data
    assert os.listdir(path.parent) == ["fig.png"]


def test_pick_gate_receiver():
    logical = _hand_logical()
    receiver, edges = plots.pick_gate_receiver(logical, "AND")
    assert receiver == "m1" and set(edges) == {("a0.h0", "m1"), ("input", "m1")}
    receiver, edges = plots.pick_gate_receiver(logical, "OR")
    assert receiver == "logits" and set(edges) == {("a0.h0", "logits"), ("m0", "logits")}
    with pytest.raises(ValueError):
        plots.pick_gate_receiver(logical, "AND", k=3)


def test_patch_edges_matches_clean_and_corrupted_runs(tiny):
    from clue_mi import tasks
    from clue_mi.tasks.base import logit_metric

    task = tasks.get("ioi", tiny, n=4, n_eval=2)
    p = task.prompts
    clean = logit_metric(tiny(p.clean_tokens)[:, -1], p.choices, p.good).mean().item()
    cor = logit_metric(tiny(p.corrupted_tokens)[:, -1], p.choices, p.good).mean().item()
    assert plots.patch_edges(tiny, task, [], "noising") == pytest.approx(clean, abs=1e-4)
    assert plots.patch_edges(tiny, task, [], "denoising") == pytest.approx(cor, abs=1e-4)
    # Noising the input -> logits edge alone moves the metric, and noising every edge into
    # logits gives the corrupted run's logits there.
    from clue_mi.graph import graph_for

    into_logits = [e for e in graph_for(tiny).edges if e[1] == "logits"]
    assert plots.patch_edges(tiny, task, into_logits, "noising") == pytest.approx(cor, abs=1e-4)
    assert plots.patch_edges(tiny, task, into_logits, "denoising") == pytest.approx(clean, abs=1e-4)
    rows = plots.gate_patch_check(tiny, task, into_logits[:2])
    assert len(rows) == 6 and all(not math.isnan(r["normalized"]) for r in rows)
    fig = plots.plot_gate_check({"logits": rows})
    assert len(fig.axes[0].patches) == 6
