"""Benchmark: gate typing + CNF localization on synthetic circuits shaped like real ones.

The model graph follows DESIGN §4 (default: SmolLM2-135M's shape, 30 layers, 9 query heads,
3 KV groups): ``input``, per layer q / k / v receivers, heads, one MLP, and ``logits``; every
sender feeds every receiver downstream of it, plus the internal q/k/v -> head edges.

Each task (one forget, ``--retain`` retain) gets a noising and a denoising circuit: edges are
scored from a component importance shared by all tasks plus task noise (so node sets overlap
the way real circuits of one model do), each direction keeps its top ``--edges`` edges, and the
pair is pruned as in DESIGN §5 and typed with :func:`clue_mi.gates.logical_circuit`. ``--overlap``
sets how alike the two directions are (more alike -> more ADDER gates -> more conflicts).

Run:  python benchmarks/bench_localize.py [--layers 30 --edges 10000 --retain 3 --seed 0]
      [--overlap 0.3 0.9 0.99] [--semantics gates output] [--derived]

Localization on the embedded model's real circuits: benchmarks/localize_table.py.
"""

from __future__ import annotations

import argparse
import time

import networkx as nx
import numpy as np

from clue_mi.gates import gate_counts, logical_circuit
from clue_mi.localization import localize


def model_graph(n_layers: int, n_heads: int, n_kv: int) -> nx.DiGraph:
    """Full computation graph with DESIGN §4 node names and attributes."""
    g = nx.DiGraph()
    g.add_node("input", kind="input", layer=-1)
    senders = ["input"]
    per_group = n_heads // n_kv
    for layer in range(n_layers):
        receivers = [f"a{layer}.h{h}.q" for h in range(n_heads)]
        receivers += [f"a{layer}.g{k}.{x}" for k in range(n_kv) for x in ("k", "v")]
        for name in receivers:
            kind = name.rsplit(".", 1)[1]
            g.add_node(name, kind=kind, layer=layer)
            g.add_edges_from((s, name) for s in senders)
        heads = [f"a{layer}.h{h}" for h in range(n_heads)]
        for h, head in enumerate(heads):
            g.add_node(head, kind="head", layer=layer, head=h)
            group = h // per_group
            for src in (f"a{layer}.h{h}.q", f"a{layer}.g{group}.k", f"a{layer}.g{group}.v"):
                g.add_edge(src, head)
        senders += heads
        mlp = f"m{layer}"
        g.add_node(mlp, kind="mlp", layer=layer)
        g.add_edges_from((s, mlp) for s in senders)
        senders.append(mlp)
    g.add_node("logits", kind="logits", layer=n_layers)
    g.add_edges_from((s, "logits") for s in senders)
    return g


def prune(circuit: nx.DiGraph) -> nx.DiGraph:
    """Keep edges whose sender is reachable from input and whose receiver reaches logits."""
    if "input" not in circuit or "logits" not in circuit:
        return nx.DiGraph()
    alive = (nx.descendants(circuit, "input") | {"input"}) & (
        nx.ancestors(circuit, "logits") | {"logits"}
    )
    return circuit.subgraph(alive).copy()


def task_circuits(
    graph: nx.DiGraph,
    edges: list[tuple[str, str]],
    internal: np.ndarray,
    shared: dict[str, float],
    rng: np.random.Generator,
    n_edges: int,
    overlap: float,
    task: str,
) -> tuple[nx.DiGraph, nx.DiGraph]:
    """Noising and denoising circuits of one task."""
    nodes = list(graph)
    task_w = dict(
        zip(nodes, shared_vals(nodes, shared) + rng.normal(0, 1.0, len(nodes)), strict=True)
    )
    base = np.array([task_w[u] + task_w[v] for u, v in edges]) + rng.normal(0, 1.0, len(edges))
    base[internal] += 100.0  # internal edges of a used head come with it
    noise = 1.0 - overlap
    out = []
    for direction in ("noising", "denoising"):
        score = base + rng.normal(0, 3.0 * noise, len(edges))
        top = np.argsort(-score)[:n_edges]
        c = nx.DiGraph(direction=direction, task=task, model="synthetic", method="eap")
        for i in top:
            u, v = edges[i]
            c.add_edge(u, v, score=float(score[i]))
        c = prune(c)
        for n in c:
            c.nodes[n].update(graph.nodes[n])
        out.append(c)
    return out[0], out[1]


def shared_vals(nodes: list[str], shared: dict[str, float]) -> np.ndarray:
    return np.array([shared[n] for n in nodes])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--heads", type=int, default=9)
    parser.add_argument("--kv", type=int, default=3)
    parser.add_argument("--edges", type=int, default=10_000, help="edges kept per direction")
    parser.add_argument("--retain", type=int, default=3, help="number of retain circuits")
    parser.add_argument("--overlap", type=float, nargs="+", default=[0.3, 0.9, 0.99])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--semantics",
        nargs="+",
        default=["gates", "output"],
        choices=["gates", "output"],
        help="per-gate (default) and/or output semantics (a minimal cut)",
    )
    parser.add_argument(
        "--derived",
        action="store_true",
        help="also run node_model='derived' (DESIGN §7 read literally) with input free",
    )
    args = parser.parse_args()

    start = time.perf_counter()
    graph = model_graph(args.layers, args.heads, args.kv)
    edges = list(graph.edges)
    internal = np.array([graph.nodes[v]["kind"] == "head" for _, v in edges])
    print(
        f"model graph: {graph.number_of_nodes()} nodes, {graph.number_of_edges()} edges "
        f"({time.perf_counter() - start:.2f} s to build)"
    )
    for overlap in args.overlap:
        rng = np.random.default_rng(args.seed)
        shared = dict(zip(graph, rng.normal(0, 2.0, graph.number_of_nodes()), strict=True))
        circuits, typing_s = [], 0.0
        for t in range(args.retain + 1):
            name = "forget" if t == 0 else f"retain{t}"
            ns, dn = task_circuits(graph, edges, internal, shared, rng, args.edges, overlap, name)
            start = time.perf_counter()
            circuits.append(logical_circuit(ns, dn))
            typing_s += time.perf_counter() - start
        print(f"\n== overlap {overlap} (noising/denoising alike-ness), seed {args.seed} ==")
        for c in circuits:
            gates = gate_counts(c)["total"]
            print(
                f"  {c.graph['task']:8s} {c.number_of_nodes():4d} nodes {c.number_of_edges():6d} "
                f"edges  AND {gates['AND']:5d}  OR {gates['OR']:5d}  ADDER {gates['ADDER']:5d}"
            )
        print(f"  gate typing (all circuits): {typing_s:.2f} s")
        for semantics in args.semantics:
            report_localization(circuits, graph, semantics)
        if args.derived:
            start = time.perf_counter()
            derived = localize(
                circuits[0],
                circuits[1:],
                all_nodes=graph,
                semantics="output",
                node_model="derived",
                frozen=(),
            )
            print(
                f"  derived model, input free: {len(derived.forget)} forget, "
                f"{len(derived.conflict)} conflict, {len(derived.retain)} retain "
                f"({time.perf_counter() - start:.2f} s)"
            )


def report_localization(circuits: list[nx.DiGraph], graph: nx.DiGraph, semantics: str) -> None:
    """Localize the forget circuit against the retain circuits; print sizes and timings."""
    start = time.perf_counter()
    loc = localize(
        circuits[0],
        circuits[1:],
        all_nodes=graph,
        semantics=semantics,  # type: ignore[arg-type]
        relax_frozen=True,
    )
    total_s = time.perf_counter() - start
    st = loc.stats
    print(f"  -- semantics={semantics!r}")
    print(
        f"  CNF: {st['n_vars']} vars, {st['n_clauses']} clauses, {st['n_soft']} soft, "
        f"{st['n_split']} split nodes, {st['n_relaxable']} relaxable frozen edges"
    )
    print(
        f"  encode {st['encode_s']:.2f} s | SAT (CaDiCaL) {st['sat_s']:.2f} s | "
        f"MaxSAT (RC2) {st['maxsat_s']:.2f} s | localize total {total_s:.2f} s"
    )
    print(
        f"  Φ {'SAT' if loc.satisfiable else 'UNSAT'}: {len(loc.forget)} forget, "
        f"{len(loc.conflict)} conflict, {len(loc.retain)} retain, {len(loc.safe)} safe; "
        f"relaxed/dropped edges: {len(loc.relaxed_edges)} {loc.relaxed_edges[:3]}"
    )
    if loc.conflict:
        node = sorted(loc.conflict)[0]
        start = time.perf_counter()
        text = loc.explain(node)
        print(
            f"  explain({node!r}): {time.perf_counter() - start:.2f} s, "
            f"{len(text.splitlines())} lines"
        )


if __name__ == "__main__":
    main()
