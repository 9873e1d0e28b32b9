"""Accuracy of the embedded model on every built-in task (held-out split), as a Markdown table.

python benchmarks/task_baselines.py [--n-eval 32]
"""

from __future__ import annotations

import argparse
import os

import torch

from clue_mi import load_model, tasks
from clue_mi.evaluate import task_accuracy


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-eval", type=int, default=32)
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    model = load_model(args.model, device="cpu")
    print("| task | prompts | tokens | accuracy | chance | clean metric | corrupted metric |")
    print("|---|---|---|---|---|---|---|")
    for name in tasks.REGISTRY:
        n_eval = args.n_eval
        while True:  # small pools (bool: 16 expressions) get as many prompts as exist
            try:
                task = tasks.get(name, model, n=0, n_eval=n_eval)
                break
            except ValueError:
                n_eval //= 2
        ps = task.eval
        with torch.no_grad():
            clean = tasks.logit_metric(model(ps.clean_tokens)[:, -1], ps.choices, ps.good)
            corrupt = tasks.logit_metric(model(ps.corrupted_tokens)[:, -1], ps.choices, ps.good)
        acc = task_accuracy(model, ps)
        print(
            f"| {name} | {len(ps)} | {ps.clean_tokens.shape[1]} | {acc:.2f} | {task.chance:.2f} "
            f"| {clean.mean():.2f} | {corrupt.mean():.2f} |"
        )


if __name__ == "__main__":
    main()
