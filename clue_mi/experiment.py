"""The default experiment (``clue-mi run``): localize, unlearn with CLUE and baselines, evaluate.

A run folder holds everything the run made::

    run/
      config.json                 what was run
      environment.json            what the numbers depend on beyond the seed (torch, CPU...)
      circuits/{task}.json        gate-typed logical circuit of every task
      localization.json           forget / conflict / retain / safe (+ explanations)
      masks.safetensors           CLUE's forget and conflict masks
      results/{method}.json       metrics of every method (written as each one finishes)
      localization_after.json     re-localization on the CLUE-unlearned model (paper Table 3)
      model/                      the CLUE-unlearned model as a standard HF checkpoint
      timings.json                seconds per stage (attribution, faithfulness, localization,
                                  each method's mask / training / evaluation); not a result
      report.md, *.png            the report

The folder appears whole once its setup (config, circuits, localization, masks) is computed, so
bad input never leaves one behind (:mod:`clue_mi.rundir`). An interrupted run is resumed with
``resume=True`` (``clue-mi run --resume DIR``): it runs with its recorded ``config.json`` and
setup, and methods with a results file are not run again. A run stopped by an exception holds a
``FAILED`` file until it is resumed. A finished run folder (one with ``report.md``) is never
written to.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import networkx as nx
import torch
from torch import Tensor
from tqdm.auto import tqdm

from clue_mi import masks as mask_lib
from clue_mi import rundir
from clue_mi.evaluate import evaluate_model
from clue_mi.graph import NonFiniteScoresError, load_circuit, save_circuit
from clue_mi.localization import Localization
from clue_mi.models import DTYPES, hf_parameters, load_model
from clue_mi.options import (
    OptionError,
    check_choice,
    check_device,
    check_float,
    check_int,
    check_unique,
)
from clue_mi.pipeline import (
    EmptyCircuitError,
    PipelineConfig,
    load_tasks,
    localize_tasks,
    logical_circuits,
)
from clue_mi.tasks import Task
from clue_mi.timing import Timings, recording, stage
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
# The paper's fine-tuning rows (DESIGN §8): each forget loss on all weights, alone and with
# + lam * retain loss, whatever the run's own ``loss``. Opt-in (``--methods``); "full" is the
# run's loss with the retain loss, so e.g. "po_retain" repeats it in a PO run.
FINETUNE: dict[str, tuple[LossName, bool]] = {
    f"{loss}{suffix}": (loss, suffix == "_retain")
    for loss in ("ga", "npo", "po")
    for suffix in ("", "_retain")
}
KNOWN_METHODS = METHODS + tuple(FINETUNE)
EXPLAINED = 3  # conflict nodes whose explanation the report shows
METHOD_LABELS = {
    "original": "Original model",
    "clue": "CLUE (forget + conflict mask)",
    "full": "{loss} on all weights",
    # WAGLE's full first-order score |(w - grad_r / gamma) * grad_f| (unlearn.wagle_scores).
    "wagle": "WAGLE mask (same size)",
    "random": "Random mask (same size)",
    "entangled": "Forget-circuit nodes (entangled)",
    **{
        name: f"{loss.upper()} on all weights"
        + (" + retain loss" if with_retain else ", forget loss only")
        for name, (loss, with_retain) in FINETUNE.items()
    },
}


@dataclass
class RunConfig:
    """Everything ``clue-mi run`` takes. ``quick`` shrinks every budget for a smoke run."""

    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    model: str | None = None
    device: str | None = None
    # The operating point of DESIGN §10 (benchmarks/sweep_operating_point.py, BENCHMARKS.md):
    # GA at lr 1e-4 takes all-weights FE to 0.84 in one epoch and 0.94 in two with every retain
    # task at 100%, while 48 PO steps leave FE <= 0.125; 1 + 1 epochs is the least budget that
    # trains both CLUE stages. DESIGN §8's lr 1e-5 barely moves a 135M model.
    loss: LossName = "ga"
    methods: tuple[str, ...] = METHODS
    lr: float = 1e-4
    epochs: tuple[int, int] = (1, 1)
    lam: float = 1.0
    batch_size: int = 8
    quick: bool = False
    relocalize: bool = True
    gu_tasks: tuple[str, ...] | None = None  # None: the shipped offline lm-eval tasks
    # bfloat16 autocast of training (1.4x faster steps on this CPU); off by default because
    # it changes the table's numbers (README, "Time").
    bf16: bool = False
    # The weights' dtype (models.DTYPES): bfloat16 halves a 7B model's 28 GB of float32
    # weights; the masked optimizer keeps float32 moments either way.
    dtype: str = "float32"
    # Gradient checkpointing of the decoder layers in training (less activation memory).
    checkpointing: bool = False

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in KNOWN_METHODS]
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(KNOWN_METHODS)}")
        if self.loss not in ("ga", "npo", "po"):
            raise ValueError(f"unknown loss {self.loss!r}; choose ga, npo or po")
        self.methods = tuple(self.methods)
        if not self.methods:
            raise OptionError("methods (--methods) must name at least one method")
        check_unique(self.methods, "methods", "--methods")
        self.lr = check_float(self.lr, "lr", "--lr", "> 0", lambda x: x > 0)
        self.epochs = self._checked_epochs(self.epochs)
        self.lam = check_float(self.lam, "lam", "--lam", ">= 0", lambda x: x >= 0)
        check_int(self.batch_size, "batch_size", 1, "--train-batch-size")
        check_device(self.device)
        check_choice(self.dtype, "dtype", tuple(DTYPES), "--dtype")
        if self.gu_tasks is not None:
            self.gu_tasks = tuple(self.gu_tasks)
            if not self.gu_tasks or not all(isinstance(t, str) and t for t in self.gu_tasks):
                raise OptionError(
                    "gu_tasks (--gu-tasks) must name at least one lm-eval task, e.g. "
                    f"arc_easy,boolq; got {self.gu_tasks!r}"
                )
            check_unique(self.gu_tasks, "gu_tasks", "--gu-tasks")

    @staticmethod
    def _checked_epochs(epochs: Any) -> tuple[int, int]:
        """Two epoch counts >= 0 (stage 1, stage 2), at least one epoch in all: with none, no
        method trains and every row of the table would be the original model."""
        message = (
            "epochs (--epochs STAGE1 STAGE2) must be two integers >= 0 with at least one "
            f"epoch in all, got {epochs!r}"
        )
        try:
            first, second = epochs
        except (TypeError, ValueError):
            raise OptionError(message) from None
        for value in (first, second):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise OptionError(message)
        if first + second < 1:
            raise OptionError(message)
        return (first, second)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["pipeline"] = self.pipeline.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """The inverse of :meth:`to_dict` (JSON lists become tuples again); validates."""
        data = dict(data)
        pipeline = dict(data.pop("pipeline", {}))
        if "retain" in pipeline:
            pipeline["retain"] = tuple(pipeline["retain"])
        if pipeline and "semantics" not in pipeline:
            pipeline["semantics"] = "output"  # recorded before per-gate semantics existed
        for key in ("methods", "epochs", "gu_tasks"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(pipeline=PipelineConfig(**pipeline), **data)


_write_json = rundir.write_json


@dataclass
class RunSetup:
    """What every method of a run starts from: logical circuits, localization, CLUE's masks."""

    logical: dict[str, nx.DiGraph]
    localization: Localization
    masks: dict[str, dict[str, Tensor]]

    def forget_nodes(self, forget: str) -> list[str]:
        return sorted(n for n in self.logical[forget].nodes if n not in ("input", "logits"))


def make_setup(model, task_data: dict[str, Task], p: PipelineConfig) -> RunSetup:
    """Circuits (cached), localization and masks; raises (e.g. ``EmptyCircuitError``) before
    any run folder exists."""
    logical = logical_circuits(model, task_data, p)
    loc = localize_tasks(model, logical, p)
    for node in sorted(loc.conflict)[:EXPLAINED]:
        loc.explain(node)  # explanations need the formula, which is not saved: make them now
    masks = {
        "forget": mask_lib.forget_mask(model, loc.forget),
        "conflict": mask_lib.conflict_mask(model, loc.conflict),
    }
    return RunSetup(logical, loc, masks)


def write_setup(folder: Path, cfg: RunConfig, setup: RunSetup) -> None:
    """The files a run starts with (into the hidden folder that becomes the run folder)."""
    (folder / "circuits").mkdir()
    (folder / "results").mkdir()
    rundir.write_json(folder / "config.json", cfg.to_dict())
    rundir.record_environment(folder, print, cfg.device)
    for name, circuit in setup.logical.items():
        save_circuit(circuit, folder / "circuits" / f"{name}.json")
    setup.localization.save(folder / "localization.json")
    mask_lib.save_masks(folder / "masks.safetensors", setup.masks)


def load_setup(out: Path, model, p: PipelineConfig) -> RunSetup:
    """The setup a run folder recorded, exactly; a damaged file is a ``RunFolderError``."""
    logical = {}
    for name in p.task_names:
        path = out / "circuits" / f"{name}.json"
        logical[name] = _load_recorded(partial(load_circuit, path), path)
    path = out / "localization.json"
    loc = _load_recorded(lambda: Localization.load(path), path)
    path = out / "masks.safetensors"
    masks = _load_recorded(lambda: mask_lib.load_masks(path, model), path)
    if set(masks) != {"forget", "conflict"}:
        raise rundir.RunFolderError(f"{path} does not hold the forget and conflict masks")
    return RunSetup(logical, loc, masks)


def _load_recorded(load: Callable[[], Any], path: Path) -> Any:
    try:
        return load()
    except FileNotFoundError:
        raise rundir.RunFolderError(
            f"{path} is missing; this run cannot be resumed, start a new one"
        ) from None
    except Exception as err:  # any parse error: JSON, safetensors header, missing keys
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise rundir.RunFolderError(
            f"{path} is damaged ({first}); the finished methods of this run were computed "
            "from it, so it is not recomputed: start a new run"
        ) from None


def resumed_config(out: Path, recorded: dict[str, Any], given: RunConfig | None) -> RunConfig:
    """The run's own configuration; ``given`` (if any) must equal it, so runs never mix."""
    try:
        cfg = RunConfig.from_dict(recorded)
    except (TypeError, ValueError) as err:
        raise rundir.RunFolderError(
            f"{out / 'config.json'} is not a configuration this version can run ({err})"
        ) from None
    if given is not None:
        diff = rundir.config_differences(cfg.to_dict(), given.to_dict())
        if diff:
            raise OptionError(
                f"cannot resume {out} with other options ({'; '.join(diff[:6])}"
                f"{'; ...' if len(diff) > 6 else ''}); give only --resume {out}"
            )
    return cfg


def read_result(path: Path, log: Callable[[str], None]) -> dict[str, Any] | None:
    """A finished method's results, or ``None`` (with a note) if the file is damaged: that
    method then runs again, from the recorded setup and seed."""
    if not path.exists():
        return None
    try:
        row = json.loads(path.read_text())
        if isinstance(row, dict) and "method" in row:
            return row
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        pass
    log(f"warning: {path} is damaged; running {path.stem} again")
    return None


class WeightSnapshot:
    """A copy of every HF weight, to start each method from the original model.

    The copy is kept in host memory: on an accelerator it costs no device memory (a 7B model's
    14.5 GB in bfloat16), and a restore is one host-to-device copy per method. ``restore``
    writes with ``param.copy_`` (an in-place torch op, never ``param.data``), so every
    parameter's ``_version`` moves and the circuit cache sees the restored weights.
    """

    def __init__(self, model) -> None:
        self.params = hf_parameters(model.original_model)
        self.saved = {name: p.detach().to("cpu", copy=True) for name, p in self.params.items()}

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
    retain_text: Sequence[str] | None = None,
) -> dict[str, Tensor]:
    """The one-stage mask of a baseline, sized like CLUE's union mask where DESIGN §8 says so.

    WAGLE's score uses ``retain_text`` (the retain loss the baselines train with)."""
    size = mask_lib.mask_size(mask_lib.union(clue_masks["forget"], clue_masks["conflict"]))
    if method == "full":
        return baseline_mask(model, "all")
    if method == "entangled":
        return baseline_mask(model, "nodes", nodes=forget_nodes)
    kind: Literal["wagle", "random"] = "wagle" if method == "wagle" else "random"
    return baseline_mask(
        model,
        kind,
        size=max(size, 1),
        forget=forget_text,
        retain=retain_text,
        loss=cfg.loss,
        seed=cfg.pipeline.seed,
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
    common: dict[str, Any] = dict(
        loss=cfg.loss, lr=cfg.lr, lam=cfg.lam, batch_size=cfg.batch_size, bf16=cfg.bf16,
        checkpointing=cfg.checkpointing,
    )  # fmt: skip
    start = time.perf_counter()
    if method in FINETUNE:  # the paper's rows: one loss on every weight, retain loss or not
        loss, with_retain = FINETUNE[method]
        common.update(loss=loss, lam=cfg.lam if with_retain else 0.0)
        forget = forget_data(forget_task, loss)  # prompts for PO, sentences for GA / NPO
        mask = baseline_mask(model, "all")
        with stage(f"{method}: training"):
            result = unlearn_baseline(
                model, forget, retain, mask, epochs=sum(cfg.epochs), seed=cfg.pipeline.seed,
                **common,
            )  # fmt: skip
        used = [mask]
    elif method == "clue":
        with stage("clue: training"):
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
        with stage(f"{method}: mask"):
            mask = method_mask(method, model, clue_masks, forget_nodes, forget, cfg, retain)
        with stage(f"{method}: training"):
            result = unlearn_baseline(
                model,
                forget,
                retain,
                mask,
                epochs=sum(cfg.epochs),
                seed=cfg.pipeline.seed,
                **common,
            )
        used = [mask]
    return {
        "unlearned_ratio": mask_lib.unlearned_ratio(model, *used),
        "mask_elements": sum(mask_lib.mask_size(m) for m in used),
        "final_loss": result.losses()[-1] if result.history else None,
        # Optimizer steps: equal across methods (an empty CLUE stage gives its epochs to the
        # other stage; ``notes`` says so); the report flags any row that differs.
        "steps": sum(result.steps.values()),
        "epochs": list(result.epochs),
        "notes": list(result.notes),
        "train_seconds": time.perf_counter() - start,
    }


def run_experiment(
    cfg: RunConfig | None,
    out: str | Path,
    resume: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Run the whole CLUE experiment and write the run folder (see the module docstring).

    With ``resume=True``, ``out`` is an unfinished run and ``cfg`` may be ``None`` (the run's
    ``config.json`` is used); a ``cfg`` that differs from it is refused.
    """
    from clue_mi.report import write_report

    started = time.perf_counter()
    out = Path(out)
    if resume:
        cfg = resumed_config(out, rundir.check_resumable(out), cfg)
    elif cfg is None:
        raise TypeError("run_experiment needs a RunConfig unless resume=True")
    else:
        rundir.check_new(out)
    timings = Timings()  # -> timings.json and the report's "Time" section, not the results
    with recording(timings):
        # Everything that can fail on bad input (model, tasks, empty circuits, localization)
        # happens before the run folder exists; the folder then appears whole (rundir.creating).
        with stage("model load"):
            model = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)
        p = cfg.pipeline
        task_data = load_tasks(model, p)
        log(f"model {model.cfg.model_name}; forget {p.forget}; retain {', '.join(p.retain)}")
        if resume:
            setup = load_setup(out, model, p)
            rundir.record_environment(out, log, cfg.device)
        else:
            setup = make_setup(model, task_data, p)
            with rundir.creating(out) as folder:
                write_setup(folder, cfg, setup)
        log(setup.localization.summary())
        with rundir.failure_marked(out):
            _run_methods(cfg, out, model, task_data, setup, log)
            seconds = time.perf_counter() - started
            write_timings(out, timings, seconds, resumed=resume)
            report = write_report(out, cfg, seconds=seconds)
    log(f"report: {report}")
    return out


def write_timings(out: Path, timings: Timings, seconds: float, resumed: bool) -> Path:
    """``timings.json``: seconds per stage (kept apart from the results, which must not vary
    between identical runs). Nested stages (attribution inside re-localization) count in both."""
    data = {"total_seconds": round(seconds, 3), "resumed": resumed, "stages": timings.as_dict()}
    path = out / "timings.json"
    _write_json(path, data)
    return path


def _run_methods(
    cfg: RunConfig,
    out: Path,
    model,
    task_data: dict[str, Task],
    setup: RunSetup,
    log: Callable[[str], None],
) -> None:
    """The original model and every method, each from the original weights; a method whose
    results file exists (from an interrupted attempt) is not run again."""
    p = cfg.pipeline
    forget_nodes = setup.forget_nodes(p.forget)
    clue_masks = setup.masks
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
        if read_result(path, log) is not None:
            continue  # finished in an earlier, interrupted attempt
        snapshot.restore()
        row: dict[str, Any] = {"method": method}
        if method != "original":
            row.update(run_method(method, model, task_data, forget_nodes, clue_masks, cfg))
        else:
            row.update(unlearned_ratio=0.0, mask_elements=0)
        with stage(f"{method}: evaluation"):
            row.update(evaluate())
        if method == "clue":
            if not (out / "model").exists():
                with stage("export"):
                    export_hf(model, out / "model")
            if cfg.relocalize and not (out / "localization_after.json").exists():
                _relocalize(model, task_data, p, out, log)
        _write_json(path, row)
        log(f"{method}: FE {row['fe']:.3f}  RU {row['ru_mean']:.3f}  GU {row['gu']}")
    snapshot.restore()


def _relocalize(
    model, task_data: dict[str, Task], p: PipelineConfig, out: Path, log: Callable[[str], None]
) -> None:
    """Paper Table 3: localize again on the unlearned model. Optional: if a circuit of the
    unlearned model keeps no path to the logits, the report says "not re-localized"."""
    try:
        # Only the localization is kept, so the circuits' faithfulness is not measured; the
        # weights changed, so every score is computed again (the score cache keys on them).
        with stage("re-localization"):
            logical = logical_circuits(model, task_data, p, faithfulness=False)
            after = localize_tasks(model, logical, p)
    except (EmptyCircuitError, NonFiniteScoresError) as err:
        log(f"not re-localized after CLUE: {err}")
        return
    after.save(out / "localization_after.json")
