"""The operating-point sweep of DESIGN §10 / issue 11: forget loss x learning rate x epochs.

Every setting trains the all-weights baseline with the retain loss (the run's "full" row: the
same trainer, data and batch as ``clue-mi run``) and measures forget efficacy (FE), FE on
held-out phrasings and retain utility (RU) after every epoch, so one training per (loss, lr)
gives the whole epochs axis. The default run's loss and budget are the cheapest setting at
which this baseline reaches FE >= 0.5 without collapsing RU; BENCHMARKS.md records the table.

    python benchmarks/sweep_operating_point.py                     # embedded model (~20 min)
    python benchmarks/sweep_operating_point.py --quick             # tiny model, seconds
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from clue_mi.evaluate import prompt_outcomes
from clue_mi.experiment import WeightSnapshot
from clue_mi.models import load_model
from clue_mi.pipeline import PipelineConfig, load_tasks
from clue_mi.unlearn import (
    baseline_mask,
    forget_data,
    plain_hf_model,
    retain_data,
    unlearn_baseline,
)


def _accuracy(net, promptset) -> float:
    correct, _ = prompt_outcomes(net, promptset)
    return float(correct.float().mean())


def sweep(
    model, task_data, p: PipelineConfig, losses, lrs, epochs: int, batch_size: int = 8
) -> list[dict]:
    """One row per (loss, lr, epochs done): FE, FE on held-out phrasings, RU per task."""
    forget_task = task_data[p.forget]
    retain_tasks = [task_data[t] for t in p.retain]
    retain = retain_data(retain_tasks)
    net = plain_hf_model(model)
    snapshot = WeightSnapshot(model)
    rows: list[dict] = []
    for loss in losses:
        for lr in lrs:
            snapshot.restore()
            start = time.perf_counter()

            def measure(stage: int, epoch: int, loss=loss, lr=lr, start=start) -> None:
                ru = {t.name: _accuracy(net, t.eval) for t in retain_tasks}
                phr = forget_task.phrasings
                row = {
                    "loss": loss,
                    "lr": lr,
                    "epochs": epoch + 1,
                    "fe": 1.0 - _accuracy(net, forget_task.eval),
                    "fe_phrasings": None if phr is None else 1.0 - _accuracy(net, phr),
                    "ru": ru,
                    "ru_min": min(ru.values()),
                    "seconds": round(time.perf_counter() - start, 1),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)

            unlearn_baseline(
                model,
                forget_data(forget_task, loss),
                retain,
                baseline_mask(model, "all"),
                loss=loss,
                epochs=epochs,
                lr=lr,
                batch_size=batch_size,
                seed=p.seed,
                progress=False,
                on_epoch=measure,
            )
    snapshot.restore()
    return rows


def markdown(rows: list[dict], steps_per_epoch: int) -> str:
    retain = list(rows[0]["ru"]) if rows else []
    head = "| loss | lr | epochs | steps | FE | FE phrasings | " + " | ".join(
        f"RU {t}" for t in retain
    )
    lines = [head + " |", "|" + "---|" * (6 + len(retain))]
    for r in rows:
        phr = "–" if r["fe_phrasings"] is None else f"{100 * r['fe_phrasings']:.1f}"
        cells = [
            r["loss"].upper(),
            f"{r['lr']:g}",
            str(r["epochs"]),
            str(r["epochs"] * steps_per_epoch),
            f"{100 * r['fe']:.1f}",
            phr,
            *(f"{100 * r['ru'][t]:.1f}" for t in retain),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny random model, 2 epochs, n 8")
    ap.add_argument("--losses", default="ga,npo,po")
    ap.add_argument("--lrs", default="1e-4,3e-4,1e-3")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--json", type=Path, help="write the rows here as JSON")
    args = ap.parse_args(argv)
    model = load_model("tiny-llama" if args.quick else None)
    p = PipelineConfig(n=8, n_eval=8) if args.quick else PipelineConfig()
    epochs = 2 if args.quick else args.epochs
    task_data = load_tasks(model, p)
    losses = args.losses.split(",")
    lrs = [float(x) for x in args.lrs.split(",")]
    rows = sweep(model, task_data, p, losses, lrs, epochs)
    steps = -(-len(forget_data(task_data[p.forget], "ga")) // 8)  # steps per epoch
    print(markdown(rows, steps))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
