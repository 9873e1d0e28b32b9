"""Task registry: ``tasks.get(name, model, n=..., seed=...)`` returns a ``Task``.

Built-in tasks are generated locally and deterministically per seed (see ``builtin``); the real
data sets of the CLUE paper load through ``datasets`` when online (see ``datasets``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from clue_mi.tasks import builtin
from clue_mi.tasks.base import (
    MAX_EVAL,
    Example,
    Generator,
    PromptSet,
    Rephrase,
    Task,
    build_task,
    choice_accuracy,
    logit_metric,
    rephrased_set,
)
from clue_mi.tasks.datasets import DATASET_TASKS, DatasetUnavailableError, load_pku_saferlhf_text


@dataclass(frozen=True)
class TaskSpec:
    name: str
    description: str
    generate: Generator
    # Rewrites an eval question into held-out phrasings (``Task.phrasings``); None: no such set.
    rephrase: Rephrase | None = None


REGISTRY: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in [
        TaskSpec(
            "capitals",
            "country -> capital recall (default forget set)",
            builtin.capitals,
            builtin.capitals_rephrase,
        ),
        TaskSpec("ioi", "indirect object identification (name mover)", builtin.ioi),
        TaskSpec(
            "greater_than", "'from 1732 to 17' -> a later year's tens digit", builtin.greater_than
        ),
        TaskSpec("gender", "pronoun after a gendered name", builtin.gender),
        TaskSpec("induction", "continue a repeated random word sequence", builtin.induction),
        TaskSpec("bool", "evaluate a boolean expression", builtin.boolean),
        TaskSpec("arithmetic", "single-digit addition", builtin.arithmetic),
        TaskSpec(
            "sentiment", "positive/negative movie reviews (shipped sample)", builtin.sentiment
        ),
    ]
}
DEFAULT_FORGET = "capitals"
DEFAULT_RETAIN = ("ioi", "greater_than", "gender", "induction")


def names() -> list[str]:
    """Built-in tasks first, then the real data sets (these need the hub or ``path=``)."""
    return list(REGISTRY) + list(DATASET_TASKS)


def describe(name: str) -> str:
    if name in REGISTRY:
        return REGISTRY[name].description
    return f"{DATASET_TASKS[name].description} (hub: {DATASET_TASKS[name].hub_id}, or path=)"


def get(name: str, model, n: int = 32, n_eval: int | None = None, seed: int = 0, **kwargs) -> Task:
    """Build task ``name`` for ``model`` (a TransformerBridge, or anything with ``.tokenizer``).

    ``n`` prompt pairs for attribution and ``n_eval`` held-out pairs, all of one token length
    (``None``: every usable pair after the first ``n``, up to ``base.MAX_EVAL``);
    the same seed gives the same task (the order of the answer choices included). Tasks with
    held-out phrasings (``capitals``) also fill ``Task.phrasings``. Real data sets take
    ``path=`` (a local copy in the hub's format), ``split=`` and ``max_rows=`` through
    ``kwargs``.
    """
    if name in DATASET_TASKS:
        return DATASET_TASKS[name].load(model, n, n_eval, seed, **kwargs)
    if name not in REGISTRY:
        raise KeyError(f"unknown task {name!r}; available: {', '.join(names())}")
    spec = REGISTRY[name]
    tokenizer = getattr(model, "tokenizer", model)
    # Generate generously: pairs of unequal length and minority lengths are dropped.
    examples = spec.generate(random.Random(f"{name}:{seed}"), 6 * (n + (n_eval or MAX_EVAL)) + 50)
    task = build_task(name, spec.description, examples, tokenizer, n, n_eval, seed=seed)
    if spec.rephrase is not None:
        # One held-out phrasing per fact, in turn: the facts of the eval split, at a third of
        # the cost of asking each in all three.
        task.phrasings = rephrased_set(task.eval, spec.rephrase, tokenizer, per_fact=1)
    task.info.update(seed=seed)
    return task


__all__ = [
    "DATASET_TASKS",
    "DatasetUnavailableError",
    "load_pku_saferlhf_text",
    "describe",
    "DEFAULT_FORGET",
    "DEFAULT_RETAIN",
    "Example",
    "MAX_EVAL",
    "PromptSet",
    "REGISTRY",
    "Task",
    "build_task",
    "choice_accuracy",
    "get",
    "logit_metric",
    "names",
]
