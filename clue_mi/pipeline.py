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

import networkx as nx
from tqdm.auto import tqdm

from clue_mi import tasks
from clue_mi.cache import discover
from clue_mi.cnf import Localization, localize
from clue_mi.gates import logical_circuit
from clue_mi.graph import graph_for
from clue_mi.tasks import Task


@dataclass
class PipelineConfig:
    """What to localize and how. Defaults are the default experiment (DESIGN.md §10)."""

    forget: str = tasks.DEFAULT_FORGET
    retain: tuple[str, ...] = tasks.DEFAULT_RETAIN
    n: int = 32  # attribution prompts per task
    n_eval: int = 32  # held-out prompts per task
    seed: int = 0
    # EAP-IG (steps=5) costs ~3x EAP (BENCHMARKS.md); the default run computes 20 circuits, so
    # on a 2-core CPU it uses EAP. Pass method="eap-ig" for the paper's setting.
    method: str = "eap"
    steps: int = 5
    sparsity: float = 0.95
    batch_size: int = 16
    # An input->logits edge read as OR would keep the forget output on whatever we edit; the
    # default run drops the fewest such edges and lists them (Localization.relaxed_edges).
    relax_frozen: bool = True
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
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")

    @property
    def task_names(self) -> tuple[str, ...]:
        return (self.forget, *self.retain)

    def to_dict(self) -> dict:
        return asdict(self)


def load_tasks(model, config: PipelineConfig) -> dict[str, Task]:
    """Build the forget task and every retain task for ``model``."""
    return {
        name: tasks.get(name, model, n=config.n, n_eval=config.n_eval, seed=config.seed)
        for name in config.task_names
    }


def logical_circuits(
    model, task_data: Mapping[str, Task], config: PipelineConfig, progress: bool = True
) -> dict[str, nx.DiGraph]:
    """Noising and denoising circuits of every task (cached), typed into AND/OR/ADDER gates."""
    out = {}
    steps = [(name, d) for name in task_data for d in ("noising", "denoising")]
    circuits: dict[tuple[str, str], nx.DiGraph] = {}
    for name, direction in tqdm(steps, desc="circuits", disable=not progress):
        circuits[name, direction] = discover(
            model,
            task_data[name],
            direction=direction,
            method=config.method,
            sparsity=config.sparsity,
            steps=config.steps,
            batch_size=config.batch_size,
        )
    for name in task_data:
        out[name] = logical_circuit(circuits[name, "noising"], circuits[name, "denoising"])
    return out


def localize_tasks(
    model, logical: Mapping[str, nx.DiGraph], config: PipelineConfig
) -> Localization:
    """Sort components into forget / conflict / retain / safe for the configured task sets."""
    all_nodes = list(graph_for(model).nodes)
    return localize(
        logical[config.forget],
        [logical[name] for name in config.retain],
        all_nodes=all_nodes,
        relax_frozen=config.relax_frozen,
    )
