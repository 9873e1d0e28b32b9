"""Faithfulness of the circuits a run folder holds, as a Markdown table.

    python benchmarks/circuit_table.py runs/default

Each logical circuit in ``RUN/circuits/`` keeps the metadata of its noising and denoising
circuits (edges kept, sparsity after pruning, faithfulness on the held-out split).
"""

from __future__ import annotations

import sys
from pathlib import Path

from clue_mi.graph import load_circuit


def main(run: str) -> None:
    print("| task | direction | edges | sparsity | KL | KL (empty circuit) | recovery |")
    print("|---|---|---|---|---|---|---|")
    for path in sorted(Path(run, "circuits").glob("*.json")):
        logical = load_circuit(path)
        for direction in ("noising", "denoising"):
            meta = logical.graph[direction]
            faith = meta["faithfulness"]
            edges = round((1 - meta["sparsity"]) * meta["n_graph_edges"])
            print(
                f"| {path.stem} | {direction} | {edges} | {meta['sparsity']:.3f} "
                f"| {faith['kl']:.3f} | {faith['kl_empty']:.3f} | {faith['recovery']:.2f} |"
            )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/default")
