"""The task library: shapes, determinism, the equal-length guarantee, and honest baselines."""

from __future__ import annotations

import pytest
import torch

from clue_mi import tasks
from clue_mi.tasks.base import Example, build_task

BUILTIN = list(tasks.REGISTRY)


@pytest.mark.parametrize("name", BUILTIN)
def test_task_shapes_and_equal_lengths(tiny, name):
    task = tasks.get(name, tiny, n=8, n_eval=6, seed=0)
    for ps, n in ((task.prompts, 8), (task.eval, 6)):
        assert ps.clean_tokens.shape == ps.corrupted_tokens.shape
        assert ps.clean_tokens.shape[0] == n == len(ps.clean) == len(ps.sentences)
        assert ps.choices.shape == ps.good.shape and ps.choices.shape[0] == n
        assert ps.good.any(1).all() and (~ps.good).any(1).all()
        # the tensors really are the tokenization of the strings
        for text, row in zip(ps.clean, ps.clean_tokens, strict=True):
            assert tiny.tokenizer(text)["input_ids"] == row.tolist()
    assert task.train_text and task.eval_text
    assert 0 < task.chance < 1


@pytest.mark.parametrize("name", BUILTIN)
def test_task_deterministic_per_seed(tiny, name):
    a = tasks.get(name, tiny, n=6, n_eval=4, seed=3)
    b = tasks.get(name, tiny, n=6, n_eval=4, seed=3)
    c = tasks.get(name, tiny, n=6, n_eval=4, seed=4)
    assert a.prompts.clean == b.prompts.clean and torch.equal(a.prompts.choices, b.prompts.choices)
    assert a.prompts.clean != c.prompts.clean


def test_eval_split_is_held_out(tiny):
    task = tasks.get("ioi", tiny, n=16, n_eval=16)
    assert not set(task.prompts.clean) & set(task.eval.clean)


def test_unequal_length_pairs_are_dropped_not_padded(tiny):
    def pair(country: str, other: str, answers: tuple[str, str]) -> Example:
        return Example(f"The capital of {country} is", f"The capital of {other} is", answers,
                       (True, False))  # fmt: skip

    examples = [
        pair("France", "Spain", (" Paris", " Madrid")),
        # " South Korea" is two tokens: this pair must be dropped, never misaligned.
        pair("Germany", "South Korea", (" Berlin", " Seoul")),
        pair("Italy", "Japan", (" Rome", " Tokyo")),
    ]
    task = build_task("t", "", examples, tiny.tokenizer, n=1, n_eval=1)
    assert task.n_dropped == 1
    assert "South Korea" not in " ".join(task.prompts.corrupted + task.eval.corrupted)
    # a repeated clean prompt is dropped too (it would leak between the splits)
    repeated = build_task("t", "", [*examples, examples[0]], tiny.tokenizer, n=1, n_eval=1)
    assert repeated.n_dropped == 2
    with pytest.raises(ValueError, match="ask for fewer"):
        build_task("t", "", examples, tiny.tokenizer, n=2, n_eval=1)


def test_metric_and_accuracy_by_hand():
    logits = torch.tensor([[0.0, 1.0, 5.0, 2.0], [3.0, 0.0, 1.0, 1.0]])
    choices = torch.tensor([[2, 1, 3], [2, 0, 3]])
    good = torch.tensor([[True, False, False], [True, True, False]])
    # row 0: 5 - mean(1, 2) = 3.5; row 1: mean(1, 3) - 1 = 1
    torch.testing.assert_close(tasks.logit_metric(logits, choices, good), torch.tensor([3.5, 1.0]))
    assert tasks.choice_accuracy(logits, choices, good).tolist() == [True, True]
    worse = torch.tensor([[0.0, 9.0, 5.0, 2.0], [0.0, 0.0, 1.0, 7.0]])
    assert tasks.choice_accuracy(worse, choices, good).tolist() == [False, False]


def test_correct_and_incorrect_tokens(tiny):
    task = tasks.get("ioi", tiny, n=4, n_eval=4)
    ps = task.prompts
    for i in range(4):
        io = ps.clean[i].split("When ")[-1].split(" and")[0] if "When" in ps.clean[i] else None
        if io:
            assert tiny.tokenizer.decode(ps.correct[i]) == " " + io
        assert ps.correct[i] != ps.incorrect[i]


def test_unknown_task_error(tiny):
    with pytest.raises(KeyError, match="unknown task 'nope'.*capitals"):
        tasks.get("nope", tiny)


@pytest.mark.integration
@pytest.mark.parametrize("name", list(tasks.DEFAULT_RETAIN) + [tasks.DEFAULT_FORGET])
def test_embedded_model_beats_chance_on_default_tasks(smol, name):
    task = tasks.get(name, smol, n=8, n_eval=48)
    with torch.no_grad():
        logits = smol(task.eval.clean_tokens)[:, -1]
    acc = tasks.choice_accuracy(logits, task.eval.choices, task.eval.good).float().mean().item()
    # Measured 0.9-1.0 on every default task (README table); chance is 0.25-0.56.
    assert acc >= task.chance + 0.3, (name, acc, task.chance)
