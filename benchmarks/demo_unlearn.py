"""Masked PO unlearning of capitals on the embedded SmolLM2, with honest before/after numbers.

Forget: capitals (attribution + eval prompts, refusal answers). Retain: IOI + greater-than
training sentences. The mask is a hand-picked, plausible node set (late-middle MLPs, where
factual recall is usually localized, plus a few attention heads), standing in for the SAT
localization the full pipeline computes. Accuracies are on each task's held-out eval split.

    python benchmarks/demo_unlearn.py --lr 3e-4 --epochs 1 5
"""

from __future__ import annotations

import argparse
import time

import torch

from clue_mi import load_model, tasks
from clue_mi import masks as M
from clue_mi import unlearn as U

FORGET_NODES = ["m14", "m16", "m18", "a18.h3", "a20.h1", "a22.h5"]
CONFLICT_NODES = ["m15", "m17", "a19.h0.q"]


@torch.no_grad()
def accuracy(model, task) -> float:
    ev = task.eval
    logits = model(ev.clean_tokens)[:, -1]
    return float(tasks.choice_accuracy(logits, ev.choices, ev.good).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--epochs", type=int, nargs=2, default=(1, 5))
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--loss", default="po")
    args = ap.parse_args()
    model = load_model(device="cpu")
    forget_task = tasks.get("capitals", model, n=args.n, n_eval=args.n, seed=0)
    retain_tasks = [
        tasks.get(t, model, n=args.n, n_eval=args.n, seed=0) for t in ("ioi", "greater_than")
    ]
    fm = M.forget_mask(model, FORGET_NODES)
    cm = M.conflict_mask(model, CONFLICT_NODES)
    print(
        f"mask: {M.mask_size(fm)} forget + {M.mask_size(cm)} conflict elements, "
        f"unlearned ratio {100 * M.unlearned_ratio(model, fm, cm):.2f}%"
    )
    before = {t.name: accuracy(model, t) for t in (forget_task, *retain_tasks)}
    start = time.time()
    result = U.unlearn(
        model,
        U.forget_data(forget_task, args.loss),
        U.retain_data(retain_tasks),
        fm,
        cm,
        loss=args.loss,
        epochs=tuple(args.epochs),
        lr=args.lr,
        batch_size=args.batch_size,
        progress=False,
    )
    took = time.time() - start
    after = {t.name: accuracy(model, t) for t in (forget_task, *retain_tasks)}
    print(
        f"loss={args.loss} lr={args.lr} epochs={args.epochs} batch={args.batch_size} "
        f"steps={result.steps} time={took:.0f}s"
    )
    print(f"first/last loss: {result.losses()[0]:.3f} / {result.losses()[-1]:.3f}")
    for name in before:
        print(f"  {name:14s} accuracy {before[name]:.3f} -> {after[name]:.3f}")


if __name__ == "__main__":
    main()
