"""Time edge attribution against a plain forward + backward pass on the embedded model.

Usage: ``python benchmarks/bench_attribution.py [--task ioi] [--batch 8] [--repeats 3]``

Baseline: one forward pass and ``M.backward()`` with parameter gradients on (what one training
step costs). EAP is 2 forwards + 1 backward w.r.t. activations plus one contraction of the
``[b, p, senders, d]`` and ``[b, p, receivers, d]`` buffers; EAP-IG adds a backward pass per step.
Times are the median of ``--repeats`` runs after a warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from clue_mi import load_model, tasks
from clue_mi.attribution import attribute
from clue_mi.graph import graph_for


def median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="ioi")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default=None, help="default: the embedded SmolLM2")
    args = parser.parse_args()

    model = load_model(args.model)
    task = tasks.get(args.task, model, n=args.batch, n_eval=4)
    prompts = task.prompts
    graph = graph_for(model)
    device = next(model.original_model.parameters()).device

    def forward_backward() -> None:
        logits = model(prompts.clean_tokens.to(device))
        metric = tasks.logit_metric(
            logits[:, -1], prompts.choices.to(device), prompts.good.to(device)
        )
        metric.mean().backward()
        model.original_model.zero_grad(set_to_none=True)

    def run(method: str) -> Callable[[], object]:
        return lambda: attribute(
            model, prompts, "noising", method, steps=args.steps, batch_size=args.batch
        )

    base = median_time(forward_backward, args.repeats)
    rows = [("forward+backward", base, None)]
    for label, method in [("EAP", "eap"), (f"EAP-IG (steps={args.steps})", "eap-ig")]:
        rows.append((label, median_time(run(method), args.repeats), graph.n_edges))

    shape = tuple(prompts.clean_tokens.shape)
    print(
        f"model {graph.model_name}: {graph.n_edges} edges; task {args.task}, "
        f"batch {shape[0]} x {shape[1]} tokens; device {device}; "
        f"torch threads {torch.get_num_threads()}"
    )
    print("| run | time (s) | × forward+backward | edges scored / s |")
    print("|---|---|---|---|")
    for label, seconds, n_edges in rows:
        rate = f"{n_edges / seconds:,.0f}" if n_edges else "–"
        print(f"| {label} | {seconds:.3f} | {seconds / base:.2f} | {rate} |")


if __name__ == "__main__":
    main()
