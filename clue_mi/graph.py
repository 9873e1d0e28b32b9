"""The computation graph of a model, circuits as networkx DAGs, selection, and JSON I/O.

Nodes and edges follow DESIGN.md §4. Senders write into the residual stream (``input``, every
head ``a{L}.h{H}``, every MLP ``m{L}``); receivers read from it (the query input of every head
``a{L}.h{H}.q``, the key / value input of every KV group ``a{L}.g{G}.k`` / ``a{L}.g{G}.v``, every
MLP ``m{L}`` and ``logits``). A receiver's input is exactly the sum of the outputs of all senders
upstream of it, so an edge is one sender's term in one receiver's input. Internal edges
``q/k/v -> head`` join a head's inputs to its output.

``ComputationGraph`` holds the index tensors that attribution uses: the hook slots of senders and
receivers, the sender x receiver adjacency mask, and for every edge its sender and receiver index.
Edge ``i`` of ``graph.edges`` is scored by ``scores[i]`` everywhere in clue_mi.

A ``Circuit`` is a ``networkx.DiGraph`` (DESIGN.md §5) with node attributes ``kind``
(input/q/k/v/head/mlp/logits), ``layer`` (``input`` -1, ``logits`` n_layers), ``head`` / ``group``,
edge attribute ``score``, and graph attributes ``model``, ``task``, ``direction``, ``method``,
``sparsity`` (after pruning), ``faithfulness`` and a few more (see ``select_circuit``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import networkx as nx
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

__all__ = [
    "Circuit",
    "ComputationGraph",
    "HookSlot",
    "NodeInfo",
    "NonFiniteScoresError",
    "circuit_from_json",
    "circuit_to_json",
    "expected_edge_count",
    "graph_for",
    "load_circuit",
    "prune",
    "save_circuit",
    "select_circuit",
]

INPUT, LOGITS = "input", "logits"
# Hook points the graph reads and patches; checked against the bridge (clue_mi.attribution).
EMBED_HOOK = "hook_embed"
LOGITS_HOOK = "ln_final.hook_in"


def head_node(layer: int, head: int) -> str:
    return f"a{layer}.h{head}"


def mlp_node(layer: int) -> str:
    return f"m{layer}"


@dataclass(frozen=True)
class NodeInfo:
    """Attributes of one node (see the module docstring)."""

    name: str
    kind: str
    layer: int
    head: int | None = None
    group: int | None = None

    def attrs(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "layer": self.layer}
        if self.head is not None:
            out["head"] = self.head
        if self.group is not None:
            out["group"] = self.group
        return out


@dataclass(frozen=True)
class HookSlot:
    """Where a run of consecutive senders (or receivers) lives in the bridge.

    ``hook`` fires with ``[batch, pos, count, d_model]`` when ``per_head`` (attention results and
    q/k/v inputs) or ``[batch, pos, d_model]`` otherwise (count 1); ``start`` is the index of its
    first node in the sender (receiver) list.
    """

    hook: str
    start: int
    count: int
    per_head: bool

    @property
    def stop(self) -> int:
        return self.start + self.count


def expected_edge_count(n_layers: int, n_heads: int, n_kv_heads: int) -> int:
    """Closed formula for the number of edges (DESIGN §4), used to check the construction.

    Before layer ``l``'s attention there are ``1 + l (H + 1)`` senders; each feeds the layer's
    ``H + 2G`` attention receivers; the MLP also hears the layer's own ``H`` heads; ``logits``
    hears all ``1 + N (H + 1)`` senders; and each head has 3 internal edges.
    """
    n, h, g = n_layers, n_heads, n_kv_heads
    to_layers = n * (h + 2 * g + 1) + (h + 1) * (h + 2 * g + 1) * n * (n - 1) // 2 + n * h
    return to_layers + 1 + n * (h + 1) + 3 * n * h


class ComputationGraph:
    """All nodes and edges of a model's computation graph, with the indices attribution needs.

    Build it with :meth:`from_model` (or :func:`graph_for`, which memoizes per configuration).

    Attributes:
        senders / receivers: node names in buffer order (index = position in the list).
        sender_slots / receiver_slots: the hooks that produce / consume them.
        adjacency: ``[n_senders, n_receivers]``, True where sender feeds receiver.
        edges: ``(u, v)`` names; ``scores[i]`` belongs to ``edges[i]``.
        edge_sender: sender index of each edge; for internal edges the head's sender index.
        edge_receiver: receiver index of each edge; for internal edges the index of the q/k/v
            receiver whose whole input the edge carries.
        internal: True for the internal ``q/k/v -> head`` edges.
    """

    def __init__(
        self,
        n_layers: int,
        n_heads: int,
        n_kv_heads: int,
        d_model: int,
        model_name: str = "",
    ) -> None:
        if n_heads % n_kv_heads:
            raise ValueError(f"n_heads={n_heads} is not a multiple of n_kv_heads={n_kv_heads}")
        self.n_layers, self.n_heads, self.n_kv_heads = n_layers, n_heads, n_kv_heads
        self.d_model = d_model
        self.model_name = model_name
        self.group_size = n_heads // n_kv_heads
        self.nodes: dict[str, NodeInfo] = {}
        self._build_nodes()
        self._build_edges()

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def from_model(cls, model) -> ComputationGraph:
        """The graph of a TransformerBridge (Llama family with GQA, or GPT-2)."""
        return graph_for(model)

    def _add(self, info: NodeInfo) -> str:
        self.nodes[info.name] = info
        return info.name

    def _build_nodes(self) -> None:
        n_layers, h_count, g_count = self.n_layers, self.n_heads, self.n_kv_heads
        self.senders: list[str] = [self._add(NodeInfo(INPUT, "input", -1))]
        self.sender_slots: list[HookSlot] = [HookSlot(EMBED_HOOK, 0, 1, False)]
        self.receivers: list[str] = []
        self.receiver_slots: list[HookSlot] = []
        for layer in range(n_layers):
            # Receivers of this layer: q per head, k and v per KV group, then the MLP.
            start = len(self.receivers)
            for h in range(h_count):
                name = f"a{layer}.h{h}.q"
                self.receivers.append(self._add(NodeInfo(name, "q", layer, head=h)))
            for kind in ("k", "v"):
                for g in range(g_count):
                    name = f"a{layer}.g{g}.{kind}"
                    self.receivers.append(self._add(NodeInfo(name, kind, layer, group=g)))
            self.receiver_slots += [
                HookSlot(f"blocks.{layer}.attn.hook_q_input", start, h_count, True),
                HookSlot(f"blocks.{layer}.attn.hook_k_input", start + h_count, g_count, True),
                HookSlot(
                    f"blocks.{layer}.attn.hook_v_input", start + h_count + g_count, g_count, True
                ),
            ]
            self.receiver_slots.append(
                HookSlot(f"blocks.{layer}.hook_mlp_in", len(self.receivers), 1, False)
            )
            # The MLP is a receiver and a sender under one name.
            self.receivers.append(self._add(NodeInfo(mlp_node(layer), "mlp", layer)))
            # Senders of this layer: every head's result, then the MLP output.
            self.sender_slots.append(
                HookSlot(f"blocks.{layer}.attn.hook_result", len(self.senders), h_count, True)
            )
            for h in range(h_count):
                self.senders.append(self._add(NodeInfo(head_node(layer, h), "head", layer, h)))
            self.sender_slots.append(
                HookSlot(f"blocks.{layer}.mlp.hook_out", len(self.senders), 1, False)
            )
            self.senders.append(mlp_node(layer))
        self.receiver_slots.append(HookSlot(LOGITS_HOOK, len(self.receivers), 1, False))
        self.receivers.append(self._add(NodeInfo(LOGITS, "logits", n_layers)))
        self.sender_index = {name: i for i, name in enumerate(self.senders)}
        self.receiver_index = {name: i for i, name in enumerate(self.receivers)}

    def _sender_order(self, name: str) -> float:
        """Position of a sender in the forward pass: layer, heads before the MLP."""
        info = self.nodes[name]
        return info.layer + (0.5 if info.kind == "mlp" else 0.0)

    def _receiver_order(self, name: str) -> float:
        info = self.nodes[name]
        return info.layer + (0.5 if info.kind == "mlp" else 0.0)

    def _build_edges(self) -> None:
        n_s, n_r = len(self.senders), len(self.receivers)
        s_order = torch.tensor([self._sender_order(s) for s in self.senders])
        r_order = torch.tensor([self._receiver_order(r) for r in self.receivers])
        # A sender feeds every receiver that runs after it: head outputs of layer L reach m{L}
        # (order L + 0.5 > L) but not the q/k/v of layer L (order L, not greater).
        self.adjacency: Bool[Tensor, "n_senders n_receivers"] = s_order[:, None] < r_order[None]
        assert self.adjacency.shape == (n_s, n_r)
        s_idx, r_idx = self.adjacency.nonzero(as_tuple=True)
        edges = [
            (self.senders[s], self.receivers[r])
            for s, r in zip(s_idx.tolist(), r_idx.tolist(), strict=True)
        ]
        senders, receivers, internal = s_idx.tolist(), r_idx.tolist(), [False] * len(edges)
        for layer in range(self.n_layers):
            for h in range(self.n_heads):
                g = h // self.group_size
                head = head_node(layer, h)
                for src in (f"a{layer}.h{h}.q", f"a{layer}.g{g}.k", f"a{layer}.g{g}.v"):
                    edges.append((src, head))
                    senders.append(self.sender_index[head])
                    receivers.append(self.receiver_index[src])
                    internal.append(True)
        self.edges: list[tuple[str, str]] = edges
        self.edge_index = {edge: i for i, edge in enumerate(edges)}
        self.edge_sender: Int[Tensor, " n_edges"] = torch.tensor(senders)
        self.edge_receiver: Int[Tensor, " n_edges"] = torch.tensor(receivers)
        self.internal: Bool[Tensor, " n_edges"] = torch.tensor(internal)

    # -- views -------------------------------------------------------------------------------

    @property
    def n_edges(self) -> int:
        return len(self.edges)

    @property
    def n_senders(self) -> int:
        return len(self.senders)

    @property
    def n_receivers(self) -> int:
        return len(self.receivers)

    def __repr__(self) -> str:
        return (
            f"ComputationGraph({self.model_name or 'model'}: {self.n_layers} layers, "
            f"{self.n_heads} heads, {self.n_kv_heads} KV heads, {len(self.nodes)} nodes, "
            f"{self.n_edges} edges)"
        )

    def config(self) -> dict[str, Any]:
        return {
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "d_model": self.d_model,
        }

    def score_dict(self, scores: Float[Tensor, " n_edges"]) -> dict[tuple[str, str], float]:
        """``{(u, v): score}`` for every edge."""
        self._check_scores(scores)
        return dict(zip(self.edges, scores.tolist(), strict=True))

    def edge_mask(self, circuit: nx.DiGraph) -> Bool[Tensor, " n_edges"]:
        """True for the edges of this graph that ``circuit`` contains (unknown edges raise)."""
        mask = torch.zeros(self.n_edges, dtype=torch.bool)
        for u, v in circuit.edges:
            try:
                mask[self.edge_index[(u, v)]] = True
            except KeyError:
                raise ValueError(f"edge {u} -> {v} is not in the graph of {self!r}") from None
        return mask

    def to_circuit(
        self,
        keep: Bool[Tensor, " n_edges"],
        scores: Float[Tensor, " n_edges"] | None = None,
        **attrs: Any,
    ) -> Circuit:
        """The circuit holding the kept edges (plus ``input`` and ``logits`` always)."""
        circuit = Circuit(**attrs)
        for name in (INPUT, LOGITS):
            circuit.add_node(name, **self.nodes[name].attrs())
        values = scores.tolist() if scores is not None else None
        for i in keep.nonzero().flatten().tolist():
            u, v = self.edges[i]
            for node in (u, v):
                if node not in circuit:
                    circuit.add_node(node, **self.nodes[node].attrs())
            if values is None:
                circuit.add_edge(u, v)
            else:
                circuit.add_edge(u, v, score=float(values[i]))
        return circuit

    def _check_scores(self, scores: Tensor) -> None:
        if scores.shape != (self.n_edges,):
            raise ValueError(f"scores have shape {tuple(scores.shape)}, expected ({self.n_edges},)")


def model_config(model) -> tuple[int, int, int, int, str]:
    """``(n_layers, n_heads, n_kv_heads, d_model, name)`` of a bridge."""
    cfg = model.cfg
    n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    return cfg.n_layers, cfg.n_heads, n_kv, cfg.d_model, str(getattr(cfg, "model_name", ""))


def graph_for(model) -> ComputationGraph:
    """The (memoized) graph of a bridge; raises for architectures without the edge hooks."""
    check_edge_hooks(model)
    return _graph_cached(*model_config(model))


@lru_cache(maxsize=16)
def _graph_cached(
    n_layers: int, n_heads: int, n_kv_heads: int, d_model: int, name: str
) -> ComputationGraph:
    return ComputationGraph(n_layers, n_heads, n_kv_heads, d_model, model_name=name)


def check_edge_hooks(model) -> None:
    """Raise a clear error if the bridge lacks a hook point the graph needs."""
    hooks = getattr(model, "hook_dict", None)
    if hooks is None:
        raise TypeError(f"expected a TransformerBridge, got {type(model).__name__}")
    arch = getattr(model.cfg, "architecture", None) or type(model.original_model).__name__
    needed = [EMBED_HOOK, LOGITS_HOOK]
    for layer in range(model.cfg.n_layers):
        needed += [
            f"blocks.{layer}.attn.hook_q_input",
            f"blocks.{layer}.attn.hook_k_input",
            f"blocks.{layer}.attn.hook_v_input",
            f"blocks.{layer}.attn.hook_result",
            f"blocks.{layer}.hook_mlp_in",
            f"blocks.{layer}.mlp.hook_out",
        ]
    missing = [name for name in needed if name not in hooks]
    if missing:
        raise NotImplementedError(
            f"architecture {arch} does not expose the edge hooks clue_mi needs "
            f"(missing e.g. {missing[:3]}); supported: Llama-family (GQA included) and GPT-2"
        )
    flags = ("use_split_qkv_input", "use_attn_result", "use_hook_mlp_in")
    off = [flag for flag in flags if not getattr(model.cfg, flag, False)]
    if off:
        raise ValueError(
            f"edge hooks are off ({', '.join(off)}); load the model with edge_hooks=True or call "
            "clue_mi.models.enable_edge_hooks(model)"
        )


# -- circuits ----------------------------------------------------------------------------------


class Circuit(nx.DiGraph):
    """A circuit: a ``networkx.DiGraph`` with the attributes of DESIGN.md §5.

    Graph attributes (``circuit.graph``): ``model``, ``task``, ``direction``, ``method``,
    ``sparsity`` (1 - |C| / |G| after pruning), ``faithfulness`` (dict or None), ``n_graph_edges``
    and the selection parameters ``requested_sparsity`` / ``top_n``.
    """

    @property
    def sparsity(self) -> float | None:
        return self.graph.get("sparsity")

    @property
    def faithfulness(self) -> dict[str, float] | None:
        return self.graph.get("faithfulness")

    def scores(self) -> dict[tuple[str, str], float]:
        return {(u, v): d["score"] for u, v, d in self.edges(data=True) if "score" in d}

    def nodes_by_kind(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, kind in self.nodes(data="kind"):
            counts[kind] = counts.get(kind, 0) + 1
        return counts


def prune(edges: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """Drop, until nothing changes, every edge whose sender is unreachable from ``input`` or whose
    receiver cannot reach ``logits`` (a head is reachable iff one of its q/k/v inputs is, since
    those join it through internal edges)."""
    kept = set(edges)
    while True:
        g = nx.DiGraph(list(kept))
        forward = nx.descendants(g, INPUT) | {INPUT} if INPUT in g else set()
        backward = nx.ancestors(g, LOGITS) | {LOGITS} if LOGITS in g else set()
        new = {(u, v) for u, v in kept if u in forward and v in backward}
        if new == kept:
            return kept
        kept = new


class NonFiniteScoresError(ValueError):
    """Attribution scores with NaN or inf: the model is broken, no circuit can be chosen."""


def select_circuit(
    graph: ComputationGraph,
    scores: Float[Tensor, " n_edges"],
    sparsity: float | None = None,
    top_n: int | None = None,
    **attrs: Any,
) -> Circuit:
    """Keep the ``ceil((1 - sparsity) |E|)`` (or ``top_n``) edges of largest ``|score|``, prune
    them to a fixpoint (see :func:`prune`), and return the circuit.

    Ties in ``|score|`` are broken by edge order (stable sort), so selection is deterministic.
    ``attrs`` become graph attributes; ``sparsity`` is set to the value after pruning.
    """
    graph._check_scores(scores)
    if (sparsity is None) == (top_n is None):
        raise ValueError("give exactly one of sparsity or top_n")
    if sparsity is not None:
        if not 0.0 <= sparsity <= 1.0:
            raise ValueError(f"sparsity must lie in [0, 1], got {sparsity}")
        k = math.ceil((1.0 - sparsity) * graph.n_edges)
    else:
        assert top_n is not None
        if top_n < 0:
            raise ValueError(f"top_n must be >= 0, got {top_n}")
        k = min(top_n, graph.n_edges)
    scores = scores.detach().cpu()
    if not torch.isfinite(scores).all():
        # Fail closed: sort puts NaN (and inf) first, so a diverged model would get a "circuit"
        # of arbitrary edges.
        bad = int((~torch.isfinite(scores)).sum())
        raise NonFiniteScoresError(
            f"scores contain NaN or inf ({bad} of {scores.numel()} edges): the model's "
            "activations or gradients are not finite, so no circuit can be selected"
        )
    order = torch.sort(scores.abs().double(), descending=True, stable=True).indices[:k]
    chosen = {graph.edges[i] for i in order.tolist()}
    kept = prune(chosen)
    keep = torch.zeros(graph.n_edges, dtype=torch.bool)
    for edge in kept:
        keep[graph.edge_index[edge]] = True
    attrs.setdefault("model", graph.model_name)
    circuit = graph.to_circuit(keep, scores, **attrs)
    circuit.graph.update(
        requested_sparsity=sparsity,
        top_n=top_n,
        n_selected=k,
        n_graph_edges=graph.n_edges,
        sparsity=1.0 - len(kept) / graph.n_edges,
    )
    circuit.graph.setdefault("faithfulness", None)
    return circuit


# -- JSON ------------------------------------------------------------------------------------


def circuit_to_dict(circuit: nx.DiGraph) -> dict[str, Any]:
    """A JSON-ready dict (networkx node-link format). Python floats survive JSON exactly."""
    return nx.node_link_data(circuit, edges="edges")


def circuit_from_dict(data: dict[str, Any]) -> Circuit:
    g = nx.node_link_graph(data, directed=True, multigraph=False, edges="edges")
    circuit = Circuit()
    circuit.graph.update(g.graph)
    circuit.add_nodes_from(g.nodes(data=True))
    circuit.add_edges_from(g.edges(data=True))
    return circuit


def circuit_to_json(circuit: nx.DiGraph) -> str:
    return json.dumps(circuit_to_dict(circuit), sort_keys=True)


def circuit_from_json(text: str) -> Circuit:
    return circuit_from_dict(json.loads(text))


def save_circuit(circuit: nx.DiGraph, path: str | Path) -> Path:
    """Write a circuit as JSON (lossless: node/edge/graph attributes, exact floats)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(circuit_to_json(circuit))
    return path


def load_circuit(path: str | Path) -> Circuit:
    return circuit_from_json(Path(path).read_text())
