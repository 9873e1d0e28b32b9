"""The default experiment (``clue-mi run``): localize, unlearn with CLUE and baselines, evaluate.

A run folder holds everything the run made::

    run/
      config.json                 what was run
      circuits/{task}.json        gate-typed logical circuit of every task
      localization.json           forget / conflict / retain / safe (+ explanations)
      masks.safetensors           CLUE's forget and conflict masks
      results/{method}.json       metrics of every method (written as each one finishes)
      localization_after.json     re-localization on the CLUE-unlearned model (paper Table 3)
      model/                      the CLUE-unlearned model as a standard HF checkpoint
      report.md, *.png            the report

An interrupted run is resumed with ``resume=True`` (``clue-mi run --resume DIR``): methods with a
results file are not run again, and circuits come from the circuit cache. A finished run folder
(one with ``report.md``) is never written to.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from clue_mi import masks as mask_lib
from clue_mi.evaluate import evaluate_model
from clue_mi.graph import save_circuit
from clue_mi.models import hf_parameters, load_model
from clue_mi.pipeline import PipelineConfig, load_tasks, localize_tasks, logical_circuits
from clue_mi.tasks import Task
from clue_mi.unlearn import (
    LossName,
    baseline_mask,
    export_hf,
    forget_data,
    retain_data,
    unlearn,
    unlearn_baseline,
)

# CLUE first (its mask sizes the random and WAGLE baselines), then the baselines of DESIGN §8.
METHODS = ("clue", "full", "wagle", "random", "entangled")
EXPLAINED = 3  # conflict nodes whose explanation the report shows
METHOD_LABELS = {
    "original": "Original model",
    "clue": "CLUE (forget + conflict mask)",
    "full": "{loss} on all weights",
    "wagle": "WAGLE-style mask (same size)",
    "random": "Random mask (same size)",
    "entangled": "Forget-circuit nodes (entangled)",
}


@dataclass
class RunConfig:
    """Everything ``clue-mi run`` takes. ``quick`` shrinks every budget for a smoke run."""

    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    model: str | None = None
    device: str | None = None
    loss: LossName = "po"
    methods: tuple[str, ...] = METHODS
    # DESIGN §8's lr 1e-5 barely moves a 135M model in 1 + 5 epochs of 64 prompts; 3e-4 does.
    lr: float = 3e-4
    epochs: tuple[int, int] = (1, 5)
    lam: float = 1.0
    batch_size: int = 8
    quick: bool = False
    relocalize: bool = True
    gu_tasks: tuple[str, ...] | None = None  # None: the shipped offline lm-eval tasks

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
        if self.loss not in ("ga", "npo", "po"):
            raise ValueError(f"unknown loss {self.loss!r}; choose ga, npo or po")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["pipeline"] = self.pipeline.to_dict()
        return out


def _write_json(path: Path, data: Any) -> None:
    """Atomic JSON write: a half-written results file would be trusted on resume."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def check_run_dir(out: str | Path, resume: bool) -> Path:
    """Refuse an existing folder unless resuming an unfinished run (nothing is created yet)."""
    out = Path(out)
    if out.exists():
        if not resume:
            raise FileExistsError(
                f"run folder {out} already exists; choose a new --out, or --resume {out} to "
                "finish an interrupted run"
            )
        if (out / "report.md").exists():
            raise FileExistsError(f"run folder {out} holds a finished run; it is not rewritten")
    elif resume:
        raise FileNotFoundError(f"cannot resume {out}: no such run folder")
    return out


def create_run_dir(out: Path) -> Path:
    (out / "circuits").mkdir(parents=True, exist_ok=True)
    (out / "results").mkdir(exist_ok=True)
    return out


class WeightSnapshot:
    """A copy of every HF weight, to start each method from the original model."""

    def __init__(self, model) -> None:
        self.params = hf_parameters(model.original_model)
        self.saved = {name: p.detach().clone() for name, p in self.params.items()}

    @torch.no_grad()
    def restore(self) -> None:
        for name, param in self.params.items():
            param.copy_(self.saved[name])


def method_mask(
    method: str,
    model,
    clue_masks: dict[str, dict[str, Tensor]],
    forget_nodes: Sequence[str],
    forget_text: Sequence[str],
    cfg: RunConfig,
) -> dict[str, Tensor]:
    """The one-stage mask of a baseline, sized like CLUE's union mask where DESIGN §8 says so."""
    size = mask_lib.mask_size(mask_lib.union(clue_masks["forget"], clue_masks["conflict"]))
    if method == "full":
        return baseline_mask(model, "all")
    if method == "entangled":
        return baseline_mask(model, "nodes", nodes=forget_nodes)
    kind: Literal["wagle", "random"] = "wagle" if method == "wagle" else "random"
    return baseline_mask(
        model, kind, size=max(size, 1), forget=forget_text, loss=cfg.loss, seed=cfg.pipeline.seed
    )


def run_method(
    method: str,
    model,
    task_data: dict[str, Task],
    forget_nodes: Sequence[str],
    clue_masks: dict[str, dict[str, Tensor]],
    cfg: RunConfig,
) -> dict[str, Any]:
    """Unlearn with one method (on the current weights) and return its mask facts and history."""
    forget_task = task_data[cfg.pipeline.forget]
    forget = forget_data(forget_task, cfg.loss)
    retain = retain_data([task_data[t] for t in cfg.pipeline.retain])
    common: dict[str, Any] = dict(loss=cfg.loss, lr=cfg.lr, lam=cfg.lam, batch_size=cfg.batch_size)
    start = time.perf_counter()
    if method == "clue":
        result = unlearn(
            model,
            forget,
            retain,
            clue_masks["forget"],
            clue_masks["conflict"],
            epochs=cfg.epochs,
            seed=cfg.pipeline.seed,
            **common,
        )
        used = [clue_masks["forget"], clue_masks["conflict"]]
    else:
        mask = method_mask(method, model, clue_masks, forget_nodes, forget, cfg)
        result = unlearn_baseline(
            model, forget, retain, mask, epochs=sum(cfg.epochs), seed=cfg.pipeline.seed, **common
        )
        used = [mask]
    return {
        "unlearned_ratio": mask_lib.unlearned_ratio(model, *used),
        "mask_elements": sum(mask_lib.mask_size(m) for m in used),
        "final_loss": result.losses()[-1] if result.history else None,
        "steps": sum(result.steps.values()),
        "train_seconds": time.perf_counter() - start,
    }


def run_experiment(
    cfg: RunConfig, out: str | Path, resume: bool = False, log: Callable[[str], None] = print
) -> Path:
    """Run the whole CLUE experiment and write the run folder (see the module docstring)."""
    from clue_mi.report import write_report

    started = time.perf_counter()
    out = check_run_dir(out, resume)
    # Load first: a bad model or task must fail before the run folder exists.
    model = load_model(cfg.model, device=cfg.device)
    p = cfg.pipeline
    task_data = load_tasks(model, p)
    create_run_dir(out)
    _write_json(out / "config.json", cfg.to_dict())
    log(f"model {model.cfg.model_name}; forget {p.forget}; retain {', '.join(p.retain)}")

    logical = logical_circuits(model, task_data, p)
    for name, circuit in logical.items():
        path = out / "circuits" / f"{name}.json"
        if not path.exists():
            save_circuit(circuit, path)
    loc = localize_tasks(model, logical, p)
    for node in sorted(loc.conflict)[:EXPLAINED]:
        loc.explain(node)  # explanations need the formula, which is not saved: make them now
    loc.save(out / "localization.json")
    log(loc.summary())
    forget_nodes = sorted(n for n in logical[p.forget].nodes if n not in ("input", "logits"))
    clue_masks = {
        "forget": mask_lib.forget_mask(model, loc.forget),
        "conflict": mask_lib.conflict_mask(model, loc.conflict),
    }
    if not (out / "masks.safetensors").exists():
        mask_lib.save_masks(out / "masks.safetensors", clue_masks)

    gu_tasks = list(cfg.gu_tasks) if cfg.gu_tasks is not None else None

    def evaluate() -> dict[str, Any]:
        return evaluate_model(
            model,
            task_data[p.forget],
            [task_data[t] for t in p.retain],
            gu_tasks=gu_tasks,
            quick=cfg.quick,
        )

    snapshot = WeightSnapshot(model)
    todo = ["original", *cfg.methods]
    for method in tqdm(todo, desc="methods"):
        path = out / "results" / f"{method}.json"
        if path.exists():
            continue  # finished in an earlier, interrupted attempt
        snapshot.restore()
        row: dict[str, Any] = {"method": method}
        if method != "original":
            row.update(run_method(method, model, task_data, forget_nodes, clue_masks, cfg))
        else:
            row.update(unlearned_ratio=0.0, mask_elements=0)
        row.update(evaluate())
        if method == "clue":
            if not (out / "model").exists():
                export_hf(model, out / "model")
            if cfg.relocalize and not (out / "localization_after.json").exists():
                after = localize_tasks(model, logical_circuits(model, task_data, p), p)
                after.save(out / "localization_after.json")
        _write_json(path, row)
        log(f"{method}: FE {row['fe']:.3f}  RU {row['ru_mean']:.3f}  GU {row['gu']}")
    snapshot.restore()
    seconds = time.perf_counter() - started
    report = write_report(out, cfg, seconds=seconds)
    log(f"report: {report}")
    return out
