"""Localization on the embedded model's real circuits: categories, weight shares, conflicts, time.

With the default pipeline settings (EAP, sparsity 0.95, 32 prompts per task; circuits from the
cache in ``$CLUE_MI_CACHE``, computed on a miss: ~4 min of CPU for all 10) this prints, for the
forget set ``capitals``:

1. for each default retain task alone and for all four: category counts by node kind, the
   number of MLPs in conflict, and the share of the q, k, v, o, gate, up and down weights that
   forget and conflict nodes own;
2. the number of conflicts for every non-empty subset of the retain tasks (15 subsets), by
   number of retain tasks (paper Figure 3a's x-axis);
3. localization time (median of ``--repeats`` runs) for one and four retain circuits;
4. the same under ``semantics="output"`` (a minimal cut), for comparison.

Run:  CLUE_MI_CACHE=/work/circuits_cache_shared python benchmarks/localize_table.py
      [--json out.json] [--repeats 5]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from collections.abc import Sequence

import networkx as nx

from clue_mi import masks
from clue_mi.graph import graph_for
from clue_mi.localization import Localization, localize
from clue_mi.models import load_model
from clue_mi.pipeline import PipelineConfig, load_tasks, logical_circuits
from clue_mi.plots import PARAM_KINDS

CATEGORIES = ("forget", "conflict", "retain")


def run(
    logical: dict[str, nx.DiGraph],
    forget: str,
    retain: Sequence[str],
    all_nodes: list[str],
    semantics: str = "gates",
) -> tuple[Localization, float]:
    """One localization and its wall time in seconds."""
    start = time.perf_counter()
    loc = localize(
        logical[forget],
        [logical[r] for r in retain],
        all_nodes=all_nodes,
        semantics=semantics,  # type: ignore[arg-type]
        relax_frozen=True,
    )
    return loc, time.perf_counter() - start


def category_rows(model, loc: Localization) -> dict:
    """Counts by node kind, MLPs in conflict, weight share per matrix kind."""
    shares = masks.category_shares(model, loc, CATEGORIES)
    return {
        "counts": {c: len(getattr(loc, c)) for c in CATEGORIES},
        "by_kind": loc.counts_by_kind(),
        "mlp_conflicts": sum(loc.kinds.get(n) == "mlp" for n in loc.conflict),
        "shares": shares,
        "relaxed_edges": [list(e) for e in loc.relaxed_edges],
    }


def print_categories(label: str, row: dict) -> None:
    counts = row["counts"]
    print(
        f"\n### capitals vs {label}: {counts['forget']} forget, {counts['conflict']} conflict, "
        f"{counts['retain']} retain nodes; {row['mlp_conflicts']} MLPs in conflict; "
        f"dropped input edges: {len(row['relaxed_edges'])}"
    )
    kinds = sorted(row["by_kind"])
    print("| nodes | " + " | ".join(kinds) + " |")
    print("|---|" + "---|" * len(kinds))
    for c in CATEGORIES:
        print(f"| {c} | " + " | ".join(str(row["by_kind"][k][c]) for k in kinds) + " |")
    cols = [*PARAM_KINDS, "all"]
    print("| weights (%) | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for c in CATEGORIES:
        shares = row["shares"][c]
        print(f"| {c} | " + " | ".join(f"{100 * shares.get(k, 0.0):.1f}" for k in cols) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", default=None, help="also write every number here")
    parser.add_argument("--repeats", type=int, default=5, help="timing runs (median reported)")
    args = parser.parse_args()

    config = PipelineConfig()  # the default experiment's settings (DESIGN §10)
    start = time.perf_counter()
    model = load_model(None, device="cpu")
    logical = logical_circuits(model, load_tasks(model, config), config, progress=False)
    all_nodes = list(graph_for(model).nodes)
    print(
        f"model + {len(logical)} logical circuits in {time.perf_counter() - start:.0f} s "
        f"(EAP, sparsity {config.sparsity}, n={config.n}):"
    )
    for name, g in logical.items():
        print(f"  {name:13s} {g.number_of_nodes():4d} nodes {g.number_of_edges():6d} edges")

    forget, retain = config.forget, tuple(config.retain)
    out: dict = {"settings": config.to_dict(), "categories": {}, "subsets": [], "timing": {}}

    print("\n## 1. Categories (semantics='gates')")
    for subset in [(r,) for r in retain] + [retain]:
        label = "+".join(subset)
        loc, _ = run(logical, forget, subset, all_nodes)
        out["categories"][label] = row = category_rows(model, loc)
        print_categories(label, row)

    print("\n## 2. Conflicts against the number of retain tasks (every subset)")
    print("| retain tasks | subset | forget | conflict | retain |")
    print("|---|---|---|---|---|")
    for k in range(1, len(retain) + 1):
        for subset in itertools.combinations(retain, k):
            loc, seconds = run(logical, forget, subset, all_nodes)
            entry = {
                "k": k,
                "retain": list(subset),
                **{c: len(getattr(loc, c)) for c in CATEGORIES},
                "seconds": seconds,
            }
            out["subsets"].append(entry)
            print(
                f"| {k} | {'+'.join(subset)} | {entry['forget']} | {entry['conflict']} | "
                f"{entry['retain']} |"
            )
    print("| retain tasks | mean conflicts | min | max |")
    print("|---|---|---|---|")
    for k in range(1, len(retain) + 1):
        values = [e["conflict"] for e in out["subsets"] if e["k"] == k]
        print(f"| {k} | {statistics.mean(values):.1f} | {min(values)} | {max(values)} |")

    print(f"\n## 3. Localization time (median of {args.repeats})")
    for semantics in ("gates", "output"):
        for subset in [retain[:1], retain]:
            runs = sorted(
                (run(logical, forget, subset, all_nodes, semantics) for _ in range(args.repeats)),
                key=lambda pair: pair[1],
            )
            loc, median = runs[len(runs) // 2]  # the median run, with its own breakdown
            label = f"{semantics}, {len(subset)} retain"
            out["timing"][label] = {"median_s": median, "stats": loc.stats}
            st = loc.stats
            print(
                f"  {label}: {median:.3f} s (encode {st['encode_s']:.3f}, SAT {st['sat_s']:.3f}, "
                f"MaxSAT {st['maxsat_s']:.3f}; {st['n_vars']} vars, {st['n_clauses']} clauses)"
                f" -> {len(loc.forget)} forget, {len(loc.conflict)} conflict"
            )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(out, handle, indent=1, default=str)
        print(f"\nwritten: {args.json}")


if __name__ == "__main__":
    main()
