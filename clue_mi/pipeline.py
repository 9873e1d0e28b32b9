"""The CLUE pipeline in a few calls: circuits of every task -> logical circuits -> localization.

Each step is a plain function over the modules it names, so a notebook can stop anywhere:

    model = load_model()
    setup = PipelineConfig()                           # forget/retain sets, sparsity, method...
    task_data = load_tasks(model, setup)               # {name: Task}
    logical = logical_circuits(model, task_data, setup)  # {name: gate-typed nx.DiGraph}
    loc = localize_tasks(model, logical, setup)        # forget / conflict / retain / safe
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import networkx as nx
from tqdm.auto import tqdm

from clue_mi import tasks
from clue_mi.attribution import METHODS, clear_reference_runs
from clue_mi.cache import discover, pinned_fingerprint
from clue_mi.cnf import SEMANTICS
from clue_mi.gates import logical_circuit
from clue_mi.graph import LOGITS, Circuit, graph_for, select_circuit
from clue_mi.localization import Localization, localize
from clue_mi.options import (
    OptionError,
    check_choice,
    check_float,
    check_int,
    check_seed,
    check_unique,
)
from clue_mi.score_cache import attribution_scores
from clue_mi.tasks import Task
from clue_mi.timing import stage

FORGET_EVAL = 32  # facts of the forget set by default (its eval split; see PipelineConfig)


@dataclass
class PipelineConfig:
    """What to localize and how. Defaults are the default experiment (DESIGN.md §10)."""

    forget: str = tasks.DEFAULT_FORGET
    retain: tuple[str, ...] = tasks.DEFAULT_RETAIN
    n: int = 32  # attribution prompts per task
    # Held-out prompts per task. None: every usable pair (at most 128) for the retain tasks, and
    # FORGET_EVAL facts for the forget task, whose eval split is also the forget set that
    # unlearning trains on: growing it would change the experiment, not only its precision.
    n_eval: int | None = None
    seed: int = 0
    # EAP-IG (steps=5) costs ~3x EAP (BENCHMARKS.md); the default run computes 20 circuits, so
    # on a 2-core CPU it uses EAP. Pass method="eap-ig" for the paper's setting.
    method: str = "eap"
    steps: int = 5
    sparsity: float = 0.95
    batch_size: int = 16
    # "gates": every forget gate off, every retain gate on (paper Appendix B, DESIGN §7).
    # "output": the forget output off, the retain outputs on: a minimal cut (for comparison).
    semantics: str = "gates"
    # Output semantics only: an input->logits edge read as OR would keep the forget output on
    # whatever we edit, so drop the fewest such edges and list them (Localization.relaxed_edges).
    # Per-gate semantics always drops the input edges no edit can switch off, and lists them.
    relax_frozen: bool = True
    # Local copies of real data sets in the hub's format, {task name: path} (``--data NAME=PATH``),
    # read instead of the hub (tasks.DATASET_TASKS: wmdp_cyber, sst2, winogrande, ...).
    data: dict[str, str] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.retain = tuple(self.retain)
        unknown = [t for t in (self.forget, *self.retain) if t not in tasks.names()]
        if unknown:
            raise ValueError(
                f"unknown task(s) {', '.join(unknown)}; available: {', '.join(tasks.names())}"
            )
        if not self.retain:
            raise ValueError("give at least one retain task")
        if self.forget in self.retain:
            raise ValueError(
                f"'{self.forget}' is both the forget set and a retain set; a component cannot be "
                "removed and kept for the same task"
            )
        if self.semantics not in SEMANTICS:
            raise ValueError(
                f"semantics must be one of {', '.join(SEMANTICS)}, got {self.semantics!r}"
            )
        self._check_numbers()
        self._check_data()

    def _check_data(self) -> None:
        """Every ``--data NAME=PATH``: a real data set this run uses, at a path that exists."""
        self.data = {str(k): str(v) for k, v in self.data.items()}
        for name, path in self.data.items():
            if name not in tasks.DATASET_TASKS:
                raise OptionError(
                    f"--data {name}=...: '{name}' is not a data set task; those are "
                    f"{', '.join(tasks.DATASET_TASKS)} (built-in tasks need no data)"
                )
            if name not in self.task_names:
                raise OptionError(
                    f"--data {name}=...: '{name}' is neither the forget task nor a retain task "
                    "of this run; add it with --forget or --retain"
                )
            if not Path(path).expanduser().exists():
                raise OptionError(f"--data {name}={path}: no such file or folder")

    def _check_numbers(self) -> None:
        """Ranges of the numeric options (one-line ``OptionError`` naming option and range)."""
        check_unique(self.retain, "retain", "--retain")
        check_int(self.n, "n", 1, "--n")
        if self.n_eval is not None:
            check_int(self.n_eval, "n_eval", 1, "--n-eval")
        check_seed(self.seed)
        check_choice(self.method, "method", METHODS, "--method")
        check_int(self.steps, "steps", 1, "--steps")
        self.sparsity = check_float(
            self.sparsity, "sparsity", "--sparsity", "in [0, 1)", lambda s: 0.0 <= s < 1.0
        )
        check_int(self.batch_size, "batch_size", 1, "--batch-size")

    @property
    def task_names(self) -> tuple[str, ...]:
        return (self.forget, *self.retain)

    def to_dict(self) -> dict:
        return asdict(self)


def load_tasks(model, config: PipelineConfig) -> dict[str, Task]:
    """Build the forget task and every retain task for ``model``."""
    sizes = {name: config.n_eval for name in config.retain}
    sizes[config.forget] = FORGET_EVAL if config.n_eval is None else config.n_eval
    return {
        name: tasks.get(
            name,
            model,
            n=config.n,
            n_eval=sizes[name],
            seed=config.seed,
            **({"path": config.data[name]} if name in config.data else {}),
        )
        for name in config.task_names
    }


class EmptyCircuitError(ValueError):
    """A circuit kept no input -> logits path at the chosen sparsity (nothing to localize)."""


def check_circuit_reaches_logits(
    circuit: nx.DiGraph, task: str, direction: str, config: PipelineConfig
) -> None:
    """Raise :class:`EmptyCircuitError` if nothing in ``circuit`` drives ``logits``.

    Selection keeps the top edges by |score| and then prunes every edge off an input -> logits
    path; on a small graph (the 106 edges of ``tiny-llama``) a high sparsity can leave nothing.
    Localization cannot use such a circuit, so the pipeline stops here, saying what to change.
    """
    if LOGITS in circuit and circuit.in_degree(LOGITS) > 0:
        return
    g = circuit.graph
    selected = g.get("n_selected")
    total = g.get("n_graph_edges")
    kept = f" ({selected} of {total} edges selected, none on an input -> logits path)"
    raise EmptyCircuitError(
        f"the {direction} circuit of task '{task}' keeps no path to the logits at sparsity "
        f"{config.sparsity:g}{kept if selected is not None else ''}; lower --sparsity "
        "(PipelineConfig.sparsity), e.g. to 0.5"
    )


def logical_circuits(
    model,
    task_data: Mapping[str, Task],
    config: PipelineConfig,
    progress: bool = True,
    faithfulness: bool = True,
) -> dict[str, nx.DiGraph]:
    """Noising and denoising circuits of every task (cached), typed into AND/OR/ADDER gates.

    Both directions of a task come from one attribution (``clue_mi.score_cache``).
    ``faithfulness=False`` selects the circuits from the scores without measuring their
    faithfulness (and without the circuit cache, whose entries carry it): the localization is
    the same, at about half the cost. Re-localizing an unlearned model uses it.
    """
    out = {}
    steps = [(name, d) for name in task_data for d in ("noising", "denoising")]
    circuits: dict[tuple[str, str], nx.DiGraph] = {}
    # Nothing here writes the weights: check their content once, not at every cache key.
    with pinned_fingerprint(model):
        for name, direction in tqdm(steps, desc="circuits", disable=not progress):
            find = discover if faithfulness else _select_unmeasured
            circuits[name, direction] = find(
                model,
                task_data[name],
                direction=direction,
                method=config.method,
                sparsity=config.sparsity,
                steps=config.steps,
                batch_size=config.batch_size,
            )
            check_circuit_reaches_logits(circuits[name, direction], name, direction, config)
    clear_reference_runs()  # the last task's clean/corrupted runs are not needed any more
    for name in task_data:
        out[name] = logical_circuit(circuits[name, "noising"], circuits[name, "denoising"])
    return out


def _select_unmeasured(
    model,
    task: Task,
    direction: str,
    method: str,
    sparsity: float,
    steps: int,
    batch_size: int,
) -> Circuit:
    """The circuit :func:`discover` would give, without its faithfulness (not measured)."""
    scores = attribution_scores(model, task, direction, method, steps, batch_size)
    graph = graph_for(model)
    return select_circuit(
        graph,
        scores,
        sparsity=sparsity,
        model=graph.model_name,
        task=task.name,
        direction=direction,
        method=method,
        steps=steps if method == "eap-ig" else None,
        n_prompts=len(task.prompts),
    )


def localize_tasks(
    model, logical: Mapping[str, nx.DiGraph], config: PipelineConfig
) -> Localization:
    """Sort components into forget / conflict / retain / safe for the configured task sets."""
    all_nodes = list(graph_for(model).nodes)
    with stage("localization"):
        return localize(
            logical[config.forget],
            [logical[name] for name in config.retain],
            all_nodes=all_nodes,
            semantics=config.semantics,  # type: ignore[arg-type]  # checked in __post_init__
            relax_frozen=config.relax_frozen,
        )
