"""Figures for notebooks and reports: logical circuits, gate counts, neuron distributions, and
sparsity / faithfulness curves; plus the few computations the notebooks plot.

Every plotting function returns the matplotlib ``Figure`` it drew on (pass ``ax=`` to draw into
an existing one) and never calls ``plt.show``; :func:`save_figure` writes a PNG atomically. The
module does not choose a backend: notebooks get the inline one, tests and scripts should use
``matplotlib.use("Agg")``.

Colours are fixed so figures can be compared: gates by :data:`GATE_COLORS`, node kinds by
:data:`KIND_COLORS`.

Helpers that compute what the notebooks draw:

* :func:`patch_edges` / :func:`gate_patch_check`: exact activation patching of hand-chosen edge
  sets (through :func:`clue_mi.attribution.circuit_run`), to check that an AND-typed receiver
  needs each of its AND senders and an OR-typed receiver is restored by each of its OR senders;
* :func:`pick_gate_receiver`: a receiver with at least two incoming edges of a gate type;
* :func:`component_counts`: forget / conflict mask elements per parameter type and layer.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import networkx as nx
import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

__all__ = [
    "GATE_COLORS",
    "KIND_COLORS",
    "PARAM_KINDS",
    "draw_logical_circuit",
    "gate_patch_check",
    "layered_layout",
    "patch_edges",
    "pick_gate_receiver",
    "plot_gate_counts",
    "plot_gate_check",
    "plot_neuron_distribution",
    "plot_sparsity_faithfulness",
    "save_figure",
]

GATE_COLORS: dict[str, str] = {"AND": "#d62728", "OR": "#1f77b4", "ADDER": "#7f7f7f"}
"""Edge colour of each gate type (red AND, blue OR, grey ADDER)."""

KIND_COLORS: dict[str, str] = {
    "input": "#2ca02c",
    "q": "#9467bd",
    "k": "#8c564b",
    "v": "#e377c2",
    "head": "#ff7f0e",
    "mlp": "#17becf",
    "logits": "#000000",
}
"""Node colour of each node kind (DESIGN §4)."""

PARAM_KINDS: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")
"""Parameter types of the neuron-distribution plots (``clue_mi.masks.MATRIX_KINDS``)."""

# Height of each node kind inside its layer band: q/k/v inputs, then the head, then the MLP.
_SUBLEVEL = {"q": 0.0, "k": 0.0, "v": 0.0, "head": 0.35, "mlp": 0.7}
_KIND_ORDER = {"input": 0, "q": 1, "k": 2, "v": 3, "head": 4, "mlp": 5, "logits": 6}


# ----------------------------------------------------------------------------- files


def save_figure(fig: Figure, path: str | os.PathLike[str], dpi: int = 100) -> Path:
    """Write ``fig`` to ``path`` atomically (temp file in the same folder, then rename).

    The format comes from the suffix (``.png`` by default when there is none). A reader never
    sees a half-written file, and an error leaves any previous file untouched.
    """
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            fig.savefig(handle, format=path.suffix[1:], dpi=dpi, bbox_inches="tight")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _new_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is not None:
        fig = ax.get_figure()
        assert isinstance(fig, Figure)
        return fig, ax
    fig, new = plt.subplots(figsize=figsize)
    return fig, new


# ----------------------------------------------------------------------------- circuits


def _kind(circuit: nx.DiGraph, node: str) -> str:
    from clue_mi.gates import node_kind

    return node_kind(node, circuit.nodes[node])


def _layer(circuit: nx.DiGraph, node: str, n_layers: int) -> float:
    from clue_mi.gates import node_layer

    kind = _kind(circuit, node)
    if kind == "input":
        return -1.0
    if kind == "logits":
        return float(n_layers)
    layer = node_layer(node, circuit.nodes[node])
    return float(layer if layer is not None else n_layers)


def _index(circuit: nx.DiGraph, node: str) -> int:
    attrs = circuit.nodes[node]
    for key in ("head", "group"):
        if attrs.get(key) is not None:
            return int(attrs[key])
    digits = "".join(ch if ch.isdigit() else " " for ch in node).split()
    return int(digits[1]) if len(digits) > 1 else 0


def layered_layout(circuit: nx.DiGraph) -> dict[str, tuple[float, float]]:
    """Node positions: height = layer (``input`` at the bottom, ``logits`` at the top), with
    q/k/v inputs, heads and the MLP on three sub-levels of a layer; nodes of one level are
    spread evenly over ``[0, 1]`` in (kind, head/group index) order."""
    layers = [
        _layer(circuit, n, 0) for n in circuit if _kind(circuit, n) not in ("input", "logits")
    ]
    n_layers = int(max(layers)) + 1 if layers else 0
    levels: dict[float, list[str]] = {}
    for node in circuit:
        kind = _kind(circuit, node)
        height = _layer(circuit, node, n_layers) + _SUBLEVEL.get(kind, 0.0)
        levels.setdefault(height, []).append(node)
    pos: dict[str, tuple[float, float]] = {}
    for height, nodes in levels.items():
        nodes.sort(key=lambda n: (_KIND_ORDER.get(_kind(circuit, n), 9), _index(circuit, n), n))
        for i, node in enumerate(nodes):
            pos[node] = ((i + 1) / (len(nodes) + 1), height)
    return pos


def draw_logical_circuit(
    circuit: nx.DiGraph,
    ax: Axes | None = None,
    *,
    include_internal: bool = True,
    labels: bool | None = None,
    width_by_score: bool = True,
    title: str | None = None,
    max_edges: int | None = None,
) -> Figure:
    """Draw a gate-typed logical circuit in a layered layout (see :func:`layered_layout`).

    Edges are one ``LineCollection`` per gate type, coloured by :data:`GATE_COLORS` and
    labelled with the gate name (so ``ax.collections`` can be inspected); nodes are one scatter
    per node kind, coloured by :data:`KIND_COLORS`.

    Args:
        circuit: a logical circuit (every edge has ``gate``; see ``clue_mi.gates``).
        ax: axes to draw into; a new figure when ``None``.
        include_internal: draw the internal q/k/v -> head edges (always ADDER).
        labels: write node names; default only when the circuit has at most 60 nodes.
        width_by_score: line width grows with ``|score|`` (relative to the largest).
        title: axes title; default names the task and the edge counts.
        max_edges: draw only the ``max_edges`` edges of largest ``|score|`` (and the nodes they
            touch); a circuit of thousands of edges is otherwise a hairball. Counts in the
            default title are those of the drawn edges.
    """
    from clue_mi.gates import GATES, is_internal_edge

    fig, ax = _new_axes(ax, (12, 9))
    pos = layered_layout(circuit)
    edges = [
        (u, v, d)
        for u, v, d in circuit.edges(data=True)
        if include_internal or not is_internal_edge(circuit, u, v)
    ]
    if max_edges is not None and len(edges) > max_edges:
        edges = sorted(edges, key=lambda e: -abs(e[2].get("score") or 0.0))[:max_edges]
        shown = {n for u, v, _ in edges for n in (u, v)} | {
            n for n in circuit if _kind(circuit, n) in ("input", "logits")
        }
        circuit = circuit.subgraph(shown)
        pos = {n: p for n, p in pos.items() if n in shown}
    scores = [abs(d.get("score") or 0.0) for _, _, d in edges]
    top = max(scores, default=0.0) or 1.0
    for gate in GATES:
        segs, widths = [], []
        for u, v, d in edges:
            if d.get("gate") != gate:
                continue
            segs.append([pos[u], pos[v]])
            rel = abs(d.get("score") or 0.0) / top
            widths.append(0.4 + 2.6 * math.sqrt(rel) if width_by_score else 0.8)
        if not segs:
            continue
        alpha = 0.35 if gate == "ADDER" else 0.7
        collection = LineCollection(
            segs, colors=GATE_COLORS[gate], linewidths=widths, alpha=alpha, label=gate
        )
        collection.set_gid(f"gate:{gate}")
        ax.add_collection(collection)
    kinds: dict[str, list[str]] = {}
    for node in circuit:
        kinds.setdefault(_kind(circuit, node), []).append(node)
    for kind in sorted(kinds, key=lambda k: _KIND_ORDER.get(k, 9)):
        xy = np.array([pos[n] for n in kinds[kind]])
        ax.scatter(
            xy[:, 0],
            xy[:, 1],
            s=40 if kind in ("input", "logits") else 14,
            c=KIND_COLORS.get(kind, "#bcbd22"),
            zorder=3,
            label=f"{kind} node",
            gid=f"kind:{kind}",
        )
    show_labels = circuit.number_of_nodes() <= 60 if labels is None else labels
    if show_labels:
        for node, (x, y) in pos.items():
            ax.annotate(node, (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
    counts = {g: sum(1 for _, _, d in edges if d.get("gate") == g) for g in GATES}
    task = circuit.graph.get("task")
    top_note = f" (top {max_edges} edges by |score|)" if max_edges is not None else ""
    ax.set_title(
        title
        or f"logical circuit{f' of {task}' if task else ''}{top_note}: "
        + ", ".join(f"{counts[g]} {g}" for g in GATES)
    )
    heights = [y for _, y in pos.values()]
    if heights:
        ax.set_ylim(min(heights) - 0.5, max(heights) + 0.5)
    ax.set_xlim(0, 1)
    ax.set_xticks([])
    ax.set_ylabel("layer (input at -1, logits on top)")
    handles = [Line2D([], [], color=GATE_COLORS[g], lw=2, label=g) for g in GATES]
    handles += [
        Line2D([], [], marker="o", ls="", color=KIND_COLORS.get(k, "#bcbd22"), label=k)
        for k in sorted(kinds, key=lambda k: _KIND_ORDER.get(k, 9))
    ]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    return fig


def plot_gate_counts(counts: Mapping[str, Any], *, title: str | None = None) -> Figure:
    """Bars of AND / OR / ADDER counts by receiver layer (stacked) and by receiver kind.

    ``counts`` is the output of :func:`clue_mi.gates.gate_counts` (keys ``by_layer`` and
    ``by_kind``). The figure has two axes; each gate is one bar container per axes, with one
    bar per layer (kind), coloured by :data:`GATE_COLORS`.
    """
    from clue_mi.gates import GATES

    by_layer = counts["by_layer"]
    by_kind = counts["by_kind"]
    fig, (ax_layer, ax_kind) = plt.subplots(
        1, 2, figsize=(13, 4), gridspec_kw={"width_ratios": [3, 1]}
    )
    layers = list(by_layer)
    x = np.arange(len(layers))
    bottom = np.zeros(len(layers))
    for gate in GATES:
        values = np.array([by_layer[layer][gate] for layer in layers], dtype=float)
        ax_layer.bar(x, values, bottom=bottom, color=GATE_COLORS[gate], label=gate)
        bottom += values
    ax_layer.set_xticks(x, [str(layer) for layer in layers], fontsize=7)
    ax_layer.set_xlabel("receiver layer (logits = one past the last layer)")
    ax_layer.set_ylabel("edges")
    ax_layer.legend()
    ax_layer.set_title(title or "gates by receiver layer")
    kinds = list(by_kind)
    xk = np.arange(len(kinds))
    width = 0.8 / len(GATES)
    for i, gate in enumerate(GATES):
        kind_values = [by_kind[kind][gate] for kind in kinds]
        ax_kind.bar(xk + (i - 1) * width, kind_values, width, color=GATE_COLORS[gate], label=gate)
    ax_kind.set_xticks(xk, kinds)
    ax_kind.set_yscale("symlog")
    ax_kind.set_xlabel("receiver kind")
    ax_kind.set_title("gates by receiver kind")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- gate check


def _edge_circuit(graph, drop: Iterable[tuple[str, str]]) -> nx.DiGraph:
    """Every edge of the model graph except ``drop`` (unknown edges raise)."""
    drop = set(drop)
    unknown = drop - set(graph.edge_index)
    if unknown:
        raise ValueError(f"not edges of the model graph: {sorted(unknown)[:3]}")
    circuit = nx.DiGraph()
    circuit.add_edges_from(e for e in graph.edges if e not in drop)
    return circuit


def _swapped(prompts):
    """The same prompts with clean and corrupted exchanged (answers unchanged)."""
    from clue_mi.tasks.base import PromptSet

    return PromptSet(
        prompts.corrupted,
        prompts.clean,
        prompts.corrupted_tokens,
        prompts.clean_tokens,
        prompts.choices,
        prompts.good,
        prompts.sentences,
    )


def patch_edges(
    model,
    prompts,
    edges: Iterable[tuple[str, str]],
    direction: str = "noising",
    batch_size: int = 16,
) -> float:
    """Exact activation patching of an edge set; returns the mean metric M of the patched run.

    * ``"noising"``: the clean run, with only ``edges`` carrying their sender's activation from
      the corrupted run (a circuit run of every edge but ``edges``);
    * ``"denoising"``: the corrupted run, with only ``edges`` carrying their sender's activation
      from the clean run (the same circuit run with clean and corrupted swapped).

    M is ``tasks.logit_metric`` against the clean answers, at the final position. ``prompts``
    is a ``PromptSet`` (or a ``Task``: its attribution prompts).
    """
    from clue_mi.attribution import circuit_run
    from clue_mi.graph import graph_for
    from clue_mi.tasks.base import Task, logit_metric

    if direction not in ("noising", "denoising"):
        raise ValueError(f"direction must be 'noising' or 'denoising', got {direction!r}")
    prompts = prompts.prompts if isinstance(prompts, Task) else prompts
    run_on = prompts if direction == "noising" else _swapped(prompts)
    circuit = _edge_circuit(graph_for(model), edges)
    logits = circuit_run(model, run_on, circuit, batch_size=batch_size)[:, -1]
    return float(logit_metric(logits, prompts.choices.cpu(), prompts.good.cpu()).mean())


def pick_gate_receiver(
    logical: nx.DiGraph, gate: str, score: str | None = None, k: int = 2
) -> tuple[str, list[tuple[str, str]]]:
    """A receiver with at least ``k`` incoming ``gate`` edges (internal edges excluded), and its
    ``k`` such edges of largest ``|score|``; the receiver chosen maximises the ``k``-th
    largest ``|score|``. ``score`` names the edge attribute to rank by (default
    ``score_noising`` for AND, ``score_denoising`` for OR, ``score`` otherwise).

    Raises ``ValueError`` when no receiver qualifies.
    """
    from clue_mi.gates import is_internal_edge

    key = score or {"AND": "score_noising", "OR": "score_denoising"}.get(gate, "score")
    best: tuple[float, str, list[tuple[str, str]]] | None = None
    for receiver in logical:
        ranked = sorted(
            (
                (abs(d.get(key) or 0.0), (u, receiver))
                for u, _, d in logical.in_edges(receiver, data=True)
                if d.get("gate") == gate and not is_internal_edge(logical, u, receiver)
            ),
            reverse=True,
        )
        if len(ranked) < k:
            continue
        strength = ranked[k - 1][0]
        if best is None or strength > best[0]:
            best = (strength, receiver, [e for _, e in ranked[:k]])
    if best is None:
        raise ValueError(f"no receiver has {k} incoming {gate} edges")
    return best[1], best[2]


def gate_patch_check(
    model, prompts, edges: Sequence[tuple[str, str]], batch_size: int = 16
) -> list[dict[str, Any]]:
    """Patch each edge of ``edges`` alone and all together, in both directions.

    Returns one row per (direction, edge set) with the patched metric and
    ``normalized = (M_patched - M(x̃)) / (M(x) - M(x̃))``: 1 = clean behaviour, 0 = corrupted.
    For an AND gate, noising any one edge should drop ``normalized`` well below 1; for an OR
    gate, denoising any one edge should lift it well above 0.
    """
    m_clean = patch_edges(model, prompts, [], "noising", batch_size)
    m_cor = patch_edges(model, prompts, [], "denoising", batch_size)
    gap = m_clean - m_cor
    sets: list[tuple[str, list[tuple[str, str]]]] = [
        (f"{u} -> {v}", [(u, v)]) for u, v in edges
    ] + [("all together", list(edges))]
    rows = []
    for direction in ("noising", "denoising"):
        for label, chosen in sets:
            metric = patch_edges(model, prompts, chosen, direction, batch_size)
            rows.append(
                {
                    "direction": direction,
                    "edges": label,
                    "metric": metric,
                    "normalized": (metric - m_cor) / gap if gap else math.nan,
                    "metric_clean": m_clean,
                    "metric_corrupted": m_cor,
                }
            )
    return rows


def plot_gate_check(checks: Mapping[str, Sequence[Mapping[str, Any]]]) -> Figure:
    """Bars of :func:`gate_patch_check` rows, one axes per checked gate (``{title: rows}``).

    Each axes has one bar per (direction, edge set), coloured by direction (noising red,
    denoising blue), on the normalized scale (1 = clean, 0 = corrupted).
    """
    colors = {"noising": GATE_COLORS["AND"], "denoising": GATE_COLORS["OR"]}
    fig, axes = plt.subplots(1, len(checks), figsize=(6 * len(checks), 4), squeeze=False)
    for ax, (title, rows) in zip(axes[0], checks.items(), strict=True):
        labels = [f"{r['direction'][:5]}: {r['edges']}" for r in rows]
        ax.barh(
            np.arange(len(rows)),
            [r["normalized"] for r in rows],
            color=[colors.get(r["direction"], "#7f7f7f") for r in rows],
        )
        ax.set_yticks(np.arange(len(rows)), labels, fontsize=7)
        ax.invert_yaxis()
        for ref in (0.0, 1.0):
            ax.axvline(ref, color="black", lw=0.6, ls="--")
        ax.set_xlabel("normalized metric (1 = clean run, 0 = corrupted run)")
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- masks


def component_counts(model, masks: Mapping[str, Mapping[str, Any]]) -> dict[str, dict]:
    """``{label: masks.mask_counts(model, mask)}`` for several masks (labels kept in order)."""
    from clue_mi.masks import mask_counts

    return {label: mask_counts(model, mask) for label, mask in masks.items()}


def plot_neuron_distribution(
    counts_by_method: Mapping[str, Mapping[str, Sequence[int]]],
    sizes: Mapping[str, Sequence[int]] | None = None,
    *,
    title: str | None = None,
) -> Figure:
    """Where each mask's elements lie: per parameter type (left) and per layer (right).

    Args:
        counts_by_method: ``{label: {param kind: [count per layer]}}``, e.g. from
            :func:`component_counts` / ``masks.mask_counts`` (labels such as
            ``"CLUE forget"``, ``"CLUE conflict"``, ``"WAGLE"``).
        sizes: ``masks.matrix_sizes(model)``; when given, values are the fraction of the
            elements of that type (layer) in the mask, else raw element counts.

    The left axes has one bar container per method with one bar per parameter type (in
    :data:`PARAM_KINDS` order, kinds absent everywhere dropped); the right axes has one line
    per method over the layers.
    """
    methods = list(counts_by_method)
    kinds = [k for k in PARAM_KINDS if any(k in c for c in counts_by_method.values())]
    n_layers = max(
        (len(v) for c in counts_by_method.values() for v in c.values()),
        default=0,
    )
    fig, (ax_kind, ax_layer) = plt.subplots(1, 2, figsize=(13, 4))
    width = 0.8 / max(len(methods), 1)
    x = np.arange(len(kinds))
    colors = plt.get_cmap("tab10")
    for i, method in enumerate(methods):
        counts = counts_by_method[method]
        per_kind = np.array([sum(counts.get(k, [])) for k in kinds], dtype=float)
        per_layer = np.zeros(n_layers)
        for k in kinds:
            for layer, value in enumerate(counts.get(k, [])):
                per_layer[layer] += value
        if sizes is not None:
            total_kind = np.array([sum(sizes.get(k, [])) for k in kinds], dtype=float)
            per_kind = np.divide(
                per_kind, total_kind, out=np.zeros_like(per_kind), where=total_kind > 0
            )
            total_layer = np.zeros(n_layers)
            for k in kinds:
                for layer, value in enumerate(sizes.get(k, [])):
                    total_layer[layer] += value
            per_layer = np.divide(
                per_layer, total_layer, out=np.zeros_like(per_layer), where=total_layer > 0
            )
        offset = (i - (len(methods) - 1) / 2) * width
        ax_kind.bar(x + offset, per_kind, width, label=method, color=colors(i % 10))
        ax_layer.plot(
            np.arange(n_layers), per_layer, marker="o", ms=3, label=method, color=colors(i % 10)
        )
    unit = "fraction of elements" if sizes is not None else "masked elements"
    ax_kind.set_xticks(x, kinds)
    ax_kind.set_xlabel("parameter type")
    ax_kind.set_ylabel(unit)
    ax_kind.set_title(title or "components per parameter type")
    ax_kind.legend(fontsize=7)
    ax_layer.set_xlabel("layer")
    ax_layer.set_ylabel(unit)
    ax_layer.set_title("components per layer")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- sparsity


def plot_sparsity_faithfulness(
    rows: Sequence[Mapping[str, Any]],
    *,
    kl_keys: Sequence[str] | None = None,
    fe_key: str = "delta_fe",
) -> Figure:
    """KL faithfulness (left axis, log scale) and change in forget efficacy (right axis)
    against circuit sparsity, as in the paper's Figure 4.

    Args:
        rows: one dict per sparsity with ``sparsity``, one or more KL values and ``fe_key``.
        kl_keys: the KL columns to draw, one line each; default every key starting with
            ``"kl"`` (e.g. ``kl_noising`` and ``kl_denoising``).
        fe_key: the forget-efficacy change column (FE after unlearning − FE before).

    Returns a figure with two axes (``fig.axes[0]`` KL, ``fig.axes[1]`` ΔFE).
    """
    rows = sorted(rows, key=lambda r: r["sparsity"])
    if kl_keys is None:
        kl_keys = sorted({k for r in rows for k in r if k.startswith("kl")})
    x = [r["sparsity"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    styles = ["-", "--", ":", "-."]
    for i, key in enumerate(kl_keys):
        ax.plot(
            x,
            [r.get(key, math.nan) for r in rows],
            ls=styles[i % len(styles)],
            marker="o",
            color="#1f77b4",
            label=key,
        )
    if any((r.get(k) or 0) > 0 for r in rows for k in kl_keys):
        ax.set_yscale("log")
    ax.set_xlabel("circuit sparsity")
    ax.set_ylabel("KL(model ‖ circuit)  (lower = more faithful)", color="#1f77b4")
    ax_fe = ax.twinx()
    ax_fe.plot(
        x, [r.get(fe_key, math.nan) for r in rows], marker="s", color="#d62728", label=fe_key
    )
    ax_fe.axhline(0.0, color="#d62728", lw=0.5, ls=":")
    ax_fe.set_ylabel("Δ forget efficacy after unlearning", color="#d62728")
    lines = ax.get_lines() + ax_fe.get_lines()[:1]
    ax.legend(lines, [str(line.get_label()) for line in lines], fontsize=8, loc="best")
    ax.set_title("circuit sparsity vs faithfulness and unlearning")
    fig.tight_layout()
    return fig
