"""What a task is: paired clean/corrupted prompts with answer choices, and training text.

A task is built from *examples*: a clean prompt, a corrupted prompt that should change the
answer, and answer choices (token strings), some of them marked correct. ``build_task`` tokenizes
them with the model's tokenizer, drops every pair whose clean and corrupted prompts differ in token
length (never padding one of them, which would misalign positions), keeps the most common length
so that a prompt set is one rectangular tensor, and splits the result into an attribution part and
a held-out eval part.

Metric (DESIGN.md §5): the mean logit of the correct choices minus the mean logit of the others,
at the final position. With two choices (correct, counterfactual) it is the usual logit
difference. Accuracy: the top-scoring choice is a correct one.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


@dataclass(frozen=True)
class Example:
    """One item of a task before tokenization. ``choices[i]`` is correct iff ``good[i]``."""

    clean: str
    corrupted: str
    choices: tuple[str, ...]
    good: tuple[bool, ...]
    # Full sentence used as training text (forget or retain text); default: clean + first good.
    text: str | None = None

    def sentence(self) -> str:
        return self.text or self.clean + self.choices[self.good.index(True)]


@dataclass
class PromptSet:
    """Tokenized prompts of one length, ready for batched attribution and evaluation."""

    clean: list[str]
    corrupted: list[str]
    clean_tokens: Int[Tensor, "n pos"]
    corrupted_tokens: Int[Tensor, "n pos"]
    choices: Int[Tensor, "n k"]
    good: Bool[Tensor, "n k"]
    sentences: list[str]

    def __len__(self) -> int:
        return len(self.clean)

    @property
    def correct(self) -> Int[Tensor, " n"]:
        """The first correct choice of each prompt."""
        return self.choices.gather(1, self.good.float().argmax(1, keepdim=True)).squeeze(1)

    @property
    def incorrect(self) -> Int[Tensor, " n"]:
        """The first incorrect choice of each prompt (the counterfactual answer when k = 2)."""
        return self.choices.gather(1, (~self.good).float().argmax(1, keepdim=True)).squeeze(1)

    def batches(self, batch_size: int):
        """Yield ``(clean_tokens, corrupted_tokens, choices, good)`` slices of ``batch_size``."""
        for start in range(0, len(self), batch_size):
            end = start + batch_size
            yield (
                self.clean_tokens[start:end],
                self.corrupted_tokens[start:end],
                self.choices[start:end],
                self.good[start:end],
            )

    def head(self, n: int) -> PromptSet:
        """The first ``n`` prompts (all of them when there are fewer)."""
        return PromptSet(
            self.clean[:n],
            self.corrupted[:n],
            self.clean_tokens[:n],
            self.corrupted_tokens[:n],
            self.choices[:n],
            self.good[:n],
            self.sentences[:n],
        )

    def to(self, device: str | torch.device) -> PromptSet:
        return PromptSet(
            self.clean,
            self.corrupted,
            self.clean_tokens.to(device),
            self.corrupted_tokens.to(device),
            self.choices.to(device),
            self.good.to(device),
            self.sentences,
        )


@dataclass
class Task:
    """A task: prompts for circuit discovery, a held-out eval split, and training text.

    ``train_text`` holds the full sentences of the attribution examples; ``eval_text`` those of
    the eval split. Unlearning forgets ``train_text + eval_text`` of the forget task (the facts
    to remove are exactly those the eval split asks about) and keeps ``train_text`` of retain
    tasks (so retain utility is measured on examples the retain loss never saw). ``phrasings``
    (optional) asks the eval split's facts in held-out templates that no training text uses.
    """

    name: str
    description: str
    prompts: PromptSet
    eval: PromptSet
    chance: float
    n_dropped: int = 0
    info: dict = field(default_factory=dict)
    # The eval split's facts in phrasings (templates) that training never uses; None for tasks
    # without held-out phrasings. FE on it tells forgetting a fact from forgetting a phrasing.
    phrasings: PromptSet | None = None

    @property
    def train_text(self) -> list[str]:
        return self.prompts.sentences

    @property
    def eval_text(self) -> list[str]:
        return self.eval.sentences

    @property
    def eval_prompts(self) -> list[str]:
        return self.eval.clean


def logit_metric(
    logits: Float[Tensor, "batch vocab"],
    choices: Int[Tensor, "batch k"],
    good: Bool[Tensor, "batch k"],
) -> Float[Tensor, " batch"]:
    """Mean logit of the correct choices minus mean logit of the wrong ones, per prompt."""
    picked = logits.gather(1, choices)
    good_f = good.to(picked.dtype)
    return (picked * good_f).sum(1) / good_f.sum(1) - (picked * (1 - good_f)).sum(1) / (
        1 - good_f
    ).sum(1)


def choice_accuracy(
    logits: Float[Tensor, "batch vocab"],
    choices: Int[Tensor, "batch k"],
    good: Bool[Tensor, "batch k"],
) -> Bool[Tensor, " batch"]:
    """Whether the highest-scoring choice is a correct one, failing closed (DESIGN.md §9).

    A prediction is wrong when any choice score is not finite (a diverged model: ``argmax``
    would return index 0 for NaN) or when the top score is tied with another choice (a model
    that cannot tell the choices apart has not picked one). Ties below the top do not matter.
    """
    picked = logits.gather(1, choices)
    top = picked.max(1, keepdim=True).values
    at_top = picked == top
    decided = torch.isfinite(picked).all(1) & (at_top.sum(1) == 1)
    best = picked.argmax(1, keepdim=True)
    return good.gather(1, best).squeeze(1) & decided


def shuffle_choices(example: Example, rng: random.Random) -> Example:
    """The example with its answer choices (and their ``good`` flags) in a random order.

    The built-in generators write the correct choice first; left there, a model that always
    picks the first choice (e.g. ``argmax`` of NaN or tied logits) would look perfect.
    """
    order = list(range(len(example.choices)))
    rng.shuffle(order)
    return replace(
        example,
        choices=tuple(example.choices[i] for i in order),
        good=tuple(example.good[i] for i in order),
        text=example.sentence(),  # pin the training sentence to the (unchanged) correct answer
    )


def tokenize(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` exactly as the model sees a prompt (BOS included if it adds one)."""
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def answer_token(tokenizer, answer: str) -> int:
    """The first token of an answer continuation (answers are written with their leading space)."""
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"answer {answer!r} tokenizes to nothing")
    return int(ids[0])


MAX_EVAL = 128
"""Held-out pairs per task when none are asked for (``n_eval=None``): every usable one, up to
this. The generated tasks have no natural end (IOI, greater-than and induction give hundreds
of usable pairs); 128 outcomes bound a bootstrap 95% interval of an accuracy to about ±0.09
and keep an evaluation within seconds. The shipped capitals and gender lists run out first."""


def build_task(
    name: str,
    description: str,
    examples: Sequence[Example],
    tokenizer,
    n: int,
    n_eval: int | None,
    chance: float | None = None,
    seed: int | str = 0,
) -> Task:
    """Tokenize examples, enforce equal clean/corrupted lengths, and split attribution / eval.

    The answer choices of every example are shuffled with ``random.Random(f"{name}:choices:
    {seed}")`` (see ``shuffle_choices``), so the correct choice sits at a random position.
    ``n_eval=None`` keeps every usable example after the first ``n`` as held-out, up to
    :data:`MAX_EVAL`. Raises ``ValueError`` if fewer than ``n + n_eval`` usable examples remain
    (``n + 1`` with ``n_eval=None``).
    """
    rows = []
    dropped = 0
    seen: set[str] = set()
    order_rng = random.Random(f"{name}:choices:{seed}")
    for ex in examples:
        ex = shuffle_choices(ex, order_rng)
        # A repeated clean prompt would leak between the attribution and the held-out split.
        if ex.clean in seen:
            dropped += 1
            continue
        seen.add(ex.clean)
        clean_ids, corrupt_ids = tokenize(tokenizer, ex.clean), tokenize(tokenizer, ex.corrupted)
        choice_ids = [answer_token(tokenizer, c) for c in ex.choices]
        # Unequal lengths would misalign positions between the two runs; distinct choice tokens
        # keep the metric and accuracy meaningful.
        if len(clean_ids) != len(corrupt_ids) or len(set(choice_ids)) != len(choice_ids):
            dropped += 1
            continue
        rows.append((ex, clean_ids, corrupt_ids, choice_ids))
    if not rows:
        raise ValueError(f"task {name!r}: no example survived tokenization")
    modal_len, _ = Counter(len(r[1]) for r in rows).most_common(1)[0]
    kept = [r for r in rows if len(r[1]) == modal_len]
    dropped += len(rows) - len(kept)
    if len(kept) < n + (n_eval or 1):
        raise ValueError(
            f"task {name!r}: only {len(kept)} usable prompt pairs of equal length, but "
            f"n={n} + n_eval={n_eval or 1} were asked for; ask for fewer"
        )
    if n_eval is None:
        n_eval = min(MAX_EVAL, len(kept) - n)

    prompts, held_out = _prompt_set(kept[:n]), _prompt_set(kept[n : n + n_eval])
    if chance is None:
        chance = float((held_out.good.float().mean(1)).mean())
    return Task(name, description, prompts, held_out, chance, n_dropped=dropped)


def _prompt_set(rows: Sequence[tuple[Example, list[int], list[int], list[int]]]) -> PromptSet:
    """A ``PromptSet`` of tokenized rows ``(example, clean ids, corrupted ids, choice ids)``."""
    return PromptSet(
        clean=[r[0].clean for r in rows],
        corrupted=[r[0].corrupted for r in rows],
        clean_tokens=torch.tensor([r[1] for r in rows]),
        corrupted_tokens=torch.tensor([r[2] for r in rows]),
        choices=torch.tensor([r[3] for r in rows]),
        good=torch.tensor([list(r[0].good) for r in rows]),
        sentences=[r[0].sentence() for r in rows],
    )


Rephrase = Callable[[str, str, str], list[tuple[str, str, str]]]
"""``(clean, corrupted, sentence) -> [(clean, corrupted, sentence), ...]`` in held-out phrasings."""


def rephrased_set(
    eval_set: PromptSet, rephrase: Rephrase, tokenizer, per_fact: int | None = None
) -> PromptSet | None:
    """The eval split's facts asked in phrasings that training never saw (DESIGN.md §9).

    Every eval prompt is rewritten by ``rephrase`` (one row per held-out phrasing), keeping its
    answer choices, their order and which are correct, so accuracy here and on ``eval_set`` ask
    about exactly the same facts. Rows whose clean and corrupted prompts differ in token length
    are dropped, and only the most common length is kept (one rectangular tensor, never padded).
    None when no row survives. ``per_fact=k`` asks each fact in ``k`` phrasings only, taken in
    turn (eval prompt ``i`` starts at phrasing ``i``), so every phrasing is used about equally.
    """
    rows = []
    for i, (clean, corrupted, sentence) in enumerate(
        zip(eval_set.clean, eval_set.corrupted, eval_set.sentences, strict=True)
    ):
        choice_ids = eval_set.choices[i].tolist()
        good = tuple(bool(g) for g in eval_set.good[i])
        options = rephrase(clean, corrupted, sentence)
        if per_fact is not None and options:
            options = [options[(i + j) % len(options)] for j in range(min(per_fact, len(options)))]
        for new_clean, new_corrupted, new_sentence in options:
            clean_ids = tokenize(tokenizer, new_clean)
            corrupt_ids = tokenize(tokenizer, new_corrupted)
            if len(clean_ids) != len(corrupt_ids):
                continue
            ex = Example(new_clean, new_corrupted, ("",) * len(good), good, text=new_sentence)
            rows.append((ex, clean_ids, corrupt_ids, choice_ids))
    if not rows:
        return None
    modal_len, _ = Counter(len(r[1]) for r in rows).most_common(1)[0]
    return _prompt_set([r for r in rows if len(r[1]) == modal_len])


Generator = Callable[[random.Random, int], list[Example]]
