"""Faithfulness of EAP-IG circuits on the embedded model, as a Markdown table.

Usage: ``python benchmarks/faithfulness_table.py [--tasks ioi capitals] [--n 32] [--sparsity 0.95]``

For each task and direction: attribute on ``n`` prompt pairs, keep the top ``1 - sparsity``
edges, prune, and measure faithfulness on ``n`` held-out pairs (KL of the model's next-token
distribution to the circuit run's, its value for the empty circuit, and normalized recovery).
"""

from __future__ import annotations

import argparse
import time

from clue_mi import load_model, tasks
from clue_mi.attribution import find_circuit


def faithfulness_table(
    model,
    task_names: list[str],
    n: int = 32,
    sparsity: float = 0.95,
    method: str = "eap-ig",
    steps: int = 5,
    batch_size: int = 16,
) -> str:
    lines = [
        "| task | direction | edges kept | sparsity | KL | KL (empty circuit) | recovery "
        "| time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in task_names:
        task = tasks.get(name, model, n=n, n_eval=n)
        for direction in ("noising", "denoising"):
            start = time.perf_counter()
            circuit = find_circuit(
                model, task, direction, method, sparsity, steps=steps, batch_size=batch_size
            )
            seconds = time.perf_counter() - start
            f = circuit.graph["faithfulness"]
            lines.append(
                f"| {name} | {direction} | {circuit.number_of_edges()} | "
                f"{circuit.graph['sparsity']:.4f} | {f['kl']:.4f} | {f['kl_empty']:.4f} | "
                f"{f['recovery']:.3f} | {seconds:.0f} |"
            )
            print(lines[-1], flush=True)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["ioi", "capitals"])
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--sparsity", type=float, default=0.95)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    model = load_model()
    table = faithfulness_table(model, args.tasks, args.n, args.sparsity, steps=args.steps)
    print()
    print(table)


if __name__ == "__main__":
    main()
