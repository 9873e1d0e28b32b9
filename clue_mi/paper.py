"""Reproducing the paper (DESIGN §11, ``clue-mi paper``): every table and figure, one command.

A paper folder holds::

    paper/
      config.json           what was run (PaperConfig)
      seed{S}/              a ``clue-mi run`` folder per seed with the Table 1 rows; the first
                            seed's also holds the re-localization of Table 3
      ablations.json        Table 2: other masks, stage orders and stage losses (first seed)
      ratios.json           Figure 6: CLUE, WAGLE and random masks at matched sizes
      retain_tasks.json     Figure 3a: conflicts and CLUE's FE against the number of retain tasks
      sparsity.json         Figure 4: circuit sparsity against KL and the change in FE
      neurons.json          Figure 7: where CLUE's and WAGLE's masks lie (q, k, v, o, MLP)
      paper.json            every table with its spread, and a verdict per claim (clue_mi.claims)
      report.md, *.png      the report

Spreads: Table 1 runs every seed (the seed draws the prompts, so the circuits, the masks and
the training order); everything else runs on the first seed, with bootstrap 95% intervals
over the eval prompts. Each part is written when it is done; ``resume=True`` (``clue-mi paper
--resume DIR``) skips the parts (and the methods of a seed run) that are already there.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, cast

from torch import Tensor
from tqdm.auto import tqdm

from clue_mi import masks as mask_lib
from clue_mi import rundir
from clue_mi.cache import discover
from clue_mi.evaluate import accuracy_metrics
from clue_mi.experiment import FINETUNE, RunConfig, WeightSnapshot, load_setup, run_experiment
from clue_mi.graph import NonFiniteScoresError, graph_for
from clue_mi.models import load_model, plain_hf_model
from clue_mi.options import OptionError, check_unique
from clue_mi.pipeline import EmptyCircuitError, load_tasks, localize_tasks, logical_circuits
from clue_mi.score_cache import attribution_scores
from clue_mi.tasks import Task
from clue_mi.timing import stage
from clue_mi.unlearn import (
    LossName,
    Stage,
    balanced_epochs,
    forget_data,
    random_mask,
    retain_data,
    top_mask,
    train_stages,
    wagle_scores,
)

# Table 1 (DESIGN §8): CLUE, the localization baselines at CLUE's size, and the paper's six
# fine-tuning rows ("full" would repeat the run loss's "_retain" row).
TABLE1 = ("clue", "wagle", "random", "entangled", *FINETUNE)
RATIOS = (0.1, 0.2, 0.5, 0.8, 0.9)  # paper Figure 6
STAGE_LOSSES = (
    ("ga", "ga"),
    ("ga", "po"),
    ("po", "ga"),
    ("npo", "npo"),
    ("npo", "po"),
    ("po", "npo"),
)
# Figure 4: around the default 0.95; a circuit much denser makes the CNF large on a CPU.
SPARSITIES = (0.8, 0.9, 0.95, 0.98, 0.99)
QUICK_SPARSITIES = (0.3, 0.5, 0.7)
PARTS = ("ablations", "ratios", "retain_tasks", "sparsity", "neurons")


@dataclass
class PaperConfig:
    """The paper preset: the run's settings (``run``), the seeds of Table 1 and the sweeps."""

    run: RunConfig = field(default_factory=lambda: RunConfig(methods=TABLE1))
    seeds: tuple[int, ...] = (0, 1, 2)
    ratios: tuple[float, ...] = RATIOS
    stage_losses: tuple[tuple[str, str], ...] = STAGE_LOSSES
    sparsities: tuple[float, ...] = SPARSITIES

    def __post_init__(self) -> None:
        self.seeds = tuple(self.seeds)
        if not self.seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0
                                 for s in self.seeds):  # fmt: skip
            raise OptionError(f"seeds (--seeds) must be integers >= 0, got {self.seeds!r}")
        check_unique(self.seeds, "seeds", "--seeds")
        self.ratios = tuple(float(r) for r in self.ratios)
        if any(not 0 < r <= 1 for r in self.ratios):
            raise OptionError(f"forget ratios must lie in (0, 1], got {self.ratios!r}")
        self.sparsities = tuple(float(s) for s in self.sparsities)
        if any(not 0 <= s < 1 for s in self.sparsities):
            raise OptionError(f"sparsities must lie in [0, 1), got {self.sparsities!r}")
        self.stage_losses = tuple(tuple(pair) for pair in self.stage_losses)  # type: ignore[misc]
        for pair in self.stage_losses:
            if len(pair) != 2 or any(loss not in ("ga", "npo", "po") for loss in pair):
                raise OptionError(f"stage losses must be pairs of ga, npo, po, got {pair!r}")

    def seed_config(self, seed: int) -> RunConfig:
        """The ``clue-mi run`` configuration of one seed (only the first re-localizes)."""
        pipeline = replace(self.run.pipeline, seed=seed)
        return replace(self.run, pipeline=pipeline, relocalize=seed == self.seeds[0])

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["run"] = self.run.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PaperConfig:
        data = dict(data)
        run = RunConfig.from_dict(data.pop("run"))
        return cls(run=run, **data)


# ----------------------------------------------------------------------------- helpers


class _Context:
    """What the parts after Table 1 share: the first seed's model, tasks, setup and data."""

    def __init__(self, cfg: PaperConfig, out: Path) -> None:
        self.cfg = cfg.seed_config(cfg.seeds[0])
        self.p = self.cfg.pipeline
        self.model = load_model(self.cfg.model, device=self.cfg.device, dtype=self.cfg.dtype)
        self.task_data = load_tasks(self.model, self.p)
        self.setup = load_setup(out / f"seed{cfg.seeds[0]}", self.model, self.p)
        self.forget_task: Task = self.task_data[self.p.forget]
        self.retain_tasks = [self.task_data[t] for t in self.p.retain]
        self.retain_text = retain_data(self.retain_tasks)
        self.snapshot = WeightSnapshot(self.model)
        self._wagle: dict[str, Tensor] | None = None
        self.pool_size = sum(sum(v) for v in mask_lib.matrix_sizes(self.model).values())

    def forget(self, loss: str) -> list[str]:
        """Prompts (PO) or sentences (GA, NPO); ``loss`` was checked by ``PaperConfig``."""
        return forget_data(self.forget_task, cast(LossName, loss))

    def measure(self) -> dict[str, Any]:
        """FE, FE phrasings and RU with bootstrap intervals, on the current weights."""
        return accuracy_metrics(plain_hf_model(self.model), self.forget_task, self.retain_tasks)

    def train(self, stages: Sequence[Stage], retain: Sequence[str] | None = None) -> dict:
        """Train ``stages`` from the original weights and measure; the weights are restored.

        A stage whose mask is empty gives its epochs to the first non-empty one, so every row
        keeps CLUE's step budget (as ``unlearn`` does for CLUE's own stages)."""
        stages = _keep_budget(stages)
        self.snapshot.restore()
        c = self.cfg
        result = train_stages(
            self.model, stages, self.retain_text if retain is None else retain, lr=c.lr,
            batch_size=c.batch_size, seed=self.p.seed, progress=False, bf16=c.bf16,
            checkpointing=c.checkpointing,
        )  # fmt: skip
        row = self.measure()
        row["steps"] = sum(result.steps.values())
        row["unlearned_ratio"] = mask_lib.unlearned_ratio(self.model, *(s.mask for s in stages))
        self.snapshot.restore()
        return row

    def clue_stages(
        self, forget_mask, conflict_mask, losses: tuple[str, str] | None = None
    ) -> list[Stage]:
        """CLUE's two stages (forget mask: forget loss; conflict mask: + lam * retain loss),
        with an empty stage's epochs given to the other, as ``unlearn`` does."""
        first, second = losses or (self.cfg.loss, self.cfg.loss)
        e1, e2 = balanced_epochs(self.model, forget_mask, conflict_mask, self.cfg.epochs)[0]
        return [
            Stage(forget_mask, cast(LossName, first), self.forget(first), e1, 0.0),
            Stage(conflict_mask, cast(LossName, second), self.forget(second), e2, self.cfg.lam),
        ]

    def one_stage(self, mask) -> list[Stage]:
        """A localization baseline: one stage, forget + lam * retain loss, CLUE's step budget."""
        loss = self.cfg.loss
        return [Stage(mask, loss, self.forget(loss), sum(self.cfg.epochs), self.cfg.lam)]

    def wagle(self) -> dict[str, Tensor]:
        """WAGLE scores at the original weights (computed once)."""
        if self._wagle is None:
            self.snapshot.restore()
            with stage("wagle scores"):
                self._wagle = wagle_scores(
                    self.model, self.forget(self.cfg.loss), self.cfg.loss, retain=self.retain_text
                )
        return self._wagle


def _keep_budget(stages: Sequence[Stage]) -> list[Stage]:
    """``stages`` without those whose mask is empty, their epochs given to the first other."""
    full = [i for i, st in enumerate(stages) if mask_lib.mask_size(st.mask) > 0]
    if not full or len(full) == len(stages):
        return list(stages)
    spare = sum(st.epochs for i, st in enumerate(stages) if i not in full)
    out = [st for i, st in enumerate(stages) if i in full]
    out[0] = replace(out[0], epochs=out[0].epochs + spare)
    return out


# ----------------------------------------------------------------------------- Table 2


def ablation_stages(ctx: _Context, stage_losses: Sequence[tuple[str, str]]) -> dict[str, list]:
    """The rows of paper Table 2, each as the stages it trains (same step budget as CLUE)."""
    f, c = ctx.setup.masks["forget"], ctx.setup.masks["conflict"]
    loss, (e1, e2), lam = ctx.cfg.loss, ctx.cfg.epochs, ctx.cfg.lam
    data = ctx.forget(loss)
    rows: dict[str, list[Stage]] = {
        "-M_f (stage 2 only)": [Stage(c, loss, data, e1 + e2, lam)],
        "-M_c (full mask in stage 2)": [
            Stage(f, loss, data, e1, 0.0),
            Stage(mask_lib.full_mask(ctx.model), loss, data, e2, lam),
        ],
        "M_c before M_f": [Stage(c, loss, data, e2, lam), Stage(f, loss, data, e1, 0.0)],
    }
    for first, second in stage_losses:
        rows[f"{first.upper()}+{second.upper()}"] = ctx.clue_stages(f, c, (first, second))
    return rows


def run_ablations(ctx: _Context, cfg: PaperConfig) -> list[dict]:
    rows = []
    for name, stages in tqdm(ablation_stages(ctx, cfg.stage_losses).items(), desc="Table 2"):
        with stage("ablations: training"):
            rows.append({"ablation": name, **ctx.train(stages)})
    return rows


# ----------------------------------------------------------------------------- Figure 6


def node_scores(ctx: _Context) -> dict[str, float]:
    """Each node's share of the forget task's attribution: the summed |score| of its edges."""
    graph = graph_for(ctx.model)
    scores = attribution_scores(
        ctx.model, ctx.forget_task, "noising", ctx.p.method, ctx.p.steps, ctx.p.batch_size
    )
    out: dict[str, float] = {}
    for (u, v), s in zip(graph.edges, scores.abs().tolist(), strict=True):
        out[u] = out.get(u, 0.0) + s
        out[v] = out.get(v, 0.0) + s
    return out


def node_ranking(loc, scores: Mapping[str, float]) -> list[str]:
    """How CLUE grows or shrinks to a forget ratio: forget nodes first, then conflict, then
    retain, then the rest; within a category by forget-circuit attribution, largest first."""
    order = []
    seen: set[str] = set()
    for category in (loc.forget, loc.conflict, loc.retain, loc.safe):
        fresh = [n for n in category if n not in seen and n not in ("input", "logits")]
        order += sorted(fresh, key=lambda n: (-scores.get(n, 0.0), n))
        seen.update(fresh)
    return order


def clue_at_size(ctx: _Context, ranking: Sequence[str], forget: set[str], size: int):
    """The shortest prefix of ``ranking`` with at least ``size`` mask elements, split into
    CLUE's stage-1 (forget-category) and stage-2 (the rest) masks."""
    counts = [mask_lib.mask_size(mask_lib.mask_from_nodes(ctx.model, [n])) for n in ranking]
    total, k = 0, 0
    while k < len(ranking) and total < size:
        total += counts[k]
        k += 1
    chosen = ranking[:k]
    return (
        mask_lib.forget_mask(ctx.model, [n for n in chosen if n in forget]),
        mask_lib.conflict_mask(ctx.model, [n for n in chosen if n not in forget]),
    )


def run_ratios(ctx: _Context, cfg: PaperConfig) -> list[dict]:
    """CLUE, WAGLE and random masks with ``ratio`` x the attention / MLP matrix elements each."""
    ranking = node_ranking(ctx.setup.localization, node_scores(ctx))
    forget = set(ctx.setup.localization.forget)
    rows = []
    for ratio in tqdm(cfg.ratios, desc="Figure 6"):
        size = round(ratio * ctx.pool_size)
        f, c = clue_at_size(ctx, ranking, forget, size)
        masks = {
            "clue": ctx.clue_stages(f, c),
            "wagle": ctx.one_stage(top_mask(ctx.wagle(), size)),
            "random": ctx.one_stage(random_mask(ctx.model, size, ctx.p.seed)),
        }
        for method, stages in masks.items():
            elements = mask_lib.mask_size(mask_lib.union(*(s.mask for s in stages)))
            with stage("ratios: training"):
                row = ctx.train(stages)
            rows.append({"ratio": ratio, "method": method, "elements": elements,
                         "element_share": elements / ctx.pool_size, **row})  # fmt: skip
    return rows


# ----------------------------------------------------------------------------- Figure 3a


def run_retain_tasks(ctx: _Context) -> dict[str, Any]:
    """Conflicts and forget nodes for every subset of the retain tasks, and CLUE trained with
    the first k retain tasks (k = 1 .. all), evaluated on every retain task."""
    logical = ctx.setup.logical
    retain = ctx.p.retain
    subsets = []
    for k in range(1, len(retain) + 1):
        for subset in itertools.combinations(retain, k):
            loc = localize_tasks(ctx.model, logical, replace(ctx.p, retain=subset))
            subsets.append({"retain": list(subset), "k": k, "conflict": len(loc.conflict),
                            "forget": len(loc.forget)})  # fmt: skip
    trained = []
    for k in tqdm(range(1, len(retain) + 1), desc="Figure 3a"):
        p_k = replace(ctx.p, retain=retain[:k])
        loc = localize_tasks(ctx.model, logical, p_k)
        f, c = mask_lib.masks_from_localization(ctx.model, loc)
        text = retain_data([ctx.task_data[t] for t in retain[:k]])
        with stage("retain tasks: training"):
            row = ctx.train(ctx.clue_stages(f, c), retain=text)
        trained.append({"k": k, "retain": list(retain[:k]), "conflict": len(loc.conflict), **row})
    return {"subsets": subsets, "trained": trained}


# ----------------------------------------------------------------------------- Figure 4


def run_sparsity(ctx: _Context, cfg: PaperConfig, fe_before: float) -> list[dict]:
    """Per sparsity: the forget circuits' KL (both directions), the localization from circuits
    at that sparsity, and the FE after CLUE with its masks (``delta_fe`` against the original)."""
    rows = []
    p = ctx.p
    for s in tqdm(cfg.sparsities, desc="Figure 4"):
        row: dict[str, Any] = {"sparsity": s}
        ctx.snapshot.restore()
        for d in ("noising", "denoising"):
            circuit = discover(ctx.model, ctx.forget_task, d, p.method, sparsity=s,
                               steps=p.steps, batch_size=p.batch_size)  # fmt: skip
            row[f"kl_{d}"] = circuit.graph["faithfulness"]["kl"]
            row[f"edges_{d}"] = circuit.number_of_edges()
        p_s = replace(p, sparsity=s)
        try:
            logical = logical_circuits(ctx.model, ctx.task_data, p_s, progress=False,
                                       faithfulness=False)  # fmt: skip
        except (EmptyCircuitError, NonFiniteScoresError) as err:
            rows.append({**row, "error": str(err)})
            continue
        loc = localize_tasks(ctx.model, logical, p_s)
        f, c = mask_lib.masks_from_localization(ctx.model, loc)
        with stage("sparsity: training"):
            trained = ctx.train(ctx.clue_stages(f, c))
        rows.append({**row, "forget_nodes": len(loc.forget), "conflict_nodes": len(loc.conflict),
                     **trained, "delta_fe": trained["fe"] - fe_before})  # fmt: skip
    return rows


# ----------------------------------------------------------------------------- Figure 7


def run_neurons(ctx: _Context) -> dict[str, Any]:
    """Masked elements per matrix kind and layer: CLUE's forget and conflict masks, and the
    WAGLE mask of the same size (Table 1's WAGLE row)."""
    f, c = ctx.setup.masks["forget"], ctx.setup.masks["conflict"]
    size = mask_lib.mask_size(mask_lib.union(f, c))
    return {
        "counts": {
            "CLUE forget": mask_lib.mask_counts(ctx.model, f),
            "CLUE conflict": mask_lib.mask_counts(ctx.model, c),
            "WAGLE": mask_lib.mask_counts(ctx.model, top_mask(ctx.wagle(), size)),
        },
        "sizes": mask_lib.matrix_sizes(ctx.model),
    }


# ----------------------------------------------------------------------------- the preset


def _part(out: Path, name: str, compute: Callable[[], Any], log: Callable[[str], None]) -> Any:
    """A part's result from ``out/name.json`` if an earlier attempt wrote it, else computed."""
    path = out / f"{name}.json"
    if path.exists():
        log(f"{name}: from {path}")
        return rundir.read_json(path, name)
    with stage(name):
        data = compute()
    rundir.write_json(path, data)
    return data


def run_paper(
    cfg: PaperConfig | None,
    out: str | Path,
    resume: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    """Run the paper preset into ``out`` (see the module docstring) and write its report."""
    from clue_mi.claims import write_paper_report

    started = time.perf_counter()
    out = Path(out)
    if resume:
        try:
            saved = PaperConfig.from_dict(rundir.check_resumable(out))
        except (TypeError, KeyError) as err:
            raise rundir.RunFolderError(
                f"{out / 'config.json'} is not a paper configuration ({err})"
            ) from None
        if cfg is not None and rundir.config_differences(saved.to_dict(), cfg.to_dict()):
            raise OptionError(f"cannot resume {out} with other options; give only --resume {out}")
        cfg = saved
    elif cfg is None:
        raise TypeError("run_paper needs a PaperConfig unless resume=True")
    else:
        rundir.check_new(out)
        # Bad input (model, tasks) fails here, before the folder exists.
        model = load_model(cfg.run.model, device=cfg.run.device, dtype=cfg.run.dtype)
        load_tasks(model, cfg.seed_config(0).pipeline)
        del model  # each seed loads its own
        with rundir.creating(out) as folder:
            rundir.write_json(folder / "config.json", cfg.to_dict())
    with rundir.failure_marked(out, "paper"):
        for seed in cfg.seeds:
            folder = out / f"seed{seed}"
            if (folder / "report.md").exists():
                continue
            log(f"Table 1, seed {seed}")
            run_experiment(cfg.seed_config(seed), folder, resume=folder.exists(), log=log)
        todo = [name for name in PARTS if not (out / f"{name}.json").exists()]
        if todo:
            ctx = _Context(cfg, out)
            first = out / f"seed{cfg.seeds[0]}" / "results" / "original.json"
            fe_before = rundir.read_json(first, "the original model's metrics")["fe"]
            compute = {
                "ablations": lambda: run_ablations(ctx, cfg),
                "ratios": lambda: run_ratios(ctx, cfg),
                "retain_tasks": lambda: run_retain_tasks(ctx),
                "sparsity": lambda: run_sparsity(ctx, cfg, fe_before),
                "neurons": lambda: run_neurons(ctx),
            }
            for name in todo:
                _part(out, name, compute[name], log)
        seconds = None if resume else time.perf_counter() - started  # a resume's time is partial
        report = write_paper_report(out, cfg, seconds)
    log(f"report: {report}")
    return out


def quick_paper_config(run: RunConfig) -> PaperConfig:
    """The smoke-test preset of ``clue-mi paper --quick`` (numbers not meaningful)."""
    return PaperConfig(run=run, seeds=(0, 1), sparsities=QUICK_SPARSITIES)


__all__ = [
    "PARTS",
    "PaperConfig",
    "RATIOS",
    "SPARSITIES",
    "STAGE_LOSSES",
    "TABLE1",
    "ablation_stages",
    "clue_at_size",
    "node_ranking",
    "node_scores",
    "quick_paper_config",
    "run_paper",
]
