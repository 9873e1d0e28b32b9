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


# ----------------------------------------------------------------------------- fail closed (#16)


def test_accuracy_fails_closed_on_nan_and_ties():
    choices = torch.tensor([[0, 1, 2], [0, 1, 2], [0, 1, 2], [0, 1, 2], [0, 1, 2]])
    good = torch.tensor([[True, False, False]] * 5)
    logits = torch.tensor(
        [
            [float("nan")] * 4,  # a diverged model: argmax would say choice 0, the correct one
            [1.0, 1.0, 1.0, 0.0],  # every choice tied
            [2.0, 2.0, 0.0, 0.0],  # the top score tied with another choice
            [float("inf"), 0.0, 0.0, 0.0],  # a non-finite top score
            [2.0, 1.0, 1.0, 0.0],  # a clear top; ties below it do not matter
        ]
    )
    assert tasks.choice_accuracy(logits, choices, good).tolist() == [
        False,
        False,
        False,
        False,
        True,
    ]


@pytest.mark.parametrize("name", ["capitals", "ioi", "gender", "induction", "greater_than"])
def test_correct_choice_position_is_shuffled_by_seed(tiny, name):
    task = tasks.get(name, tiny, n=32, n_eval=32, seed=0)
    good = torch.cat([task.prompts.good, task.eval.good])
    first_good = good.float().argmax(1)
    k = good.shape[1]
    # Not always in front (before #16 it was index 0 in every built-in task) ...
    if name != "greater_than":  # greater_than: the digits are the choices, several are good
        share = (first_good == 0).float().mean().item()
        assert abs(share - 1 / k) < 0.25, share
    # ... the choice set per prompt is unchanged, only reordered, and the same seed gives the
    # same order.
    again = tasks.get(name, tiny, n=32, n_eval=32, seed=0)
    assert torch.equal(again.prompts.choices, task.prompts.choices)
    assert torch.equal(again.prompts.good, task.prompts.good)
    assert (good.sum(1) >= 1).all() and ((~good).sum(1) >= 1).all()


def test_choice_order_does_not_change_the_metric(tiny):
    task = tasks.get("capitals", tiny, n=8, n_eval=8)
    ps = task.prompts
    logits = torch.randn(len(ps), tiny.cfg.d_vocab)
    perm = torch.randperm(ps.choices.shape[1])
    torch.testing.assert_close(
        tasks.logit_metric(logits, ps.choices, ps.good),
        tasks.logit_metric(logits, ps.choices[:, perm], ps.good[:, perm]),
    )


def test_capitals_have_held_out_phrasings(tiny):
    from clue_mi.tasks.builtin import CAPITAL_HELDOUT_TEMPLATES, CAPITAL_TEMPLATES

    task = tasks.get("capitals", tiny, n=16, n_eval=16, seed=0)
    ph = task.phrasings
    assert ph is not None and len(ph) == len(task.eval)  # each eval fact once
    used = {h for h in CAPITAL_HELDOUT_TEMPLATES for text in ph.clean if text.startswith(h[:12])}
    assert used == set(CAPITAL_HELDOUT_TEMPLATES)  # in turn, every held-out phrasing
    trained = [t.split("{}")[0] for t in CAPITAL_TEMPLATES]
    held = [t.split("{}")[0] for t in CAPITAL_HELDOUT_TEMPLATES]
    assert not set(trained) & set(held)
    # Never a trained phrasing: not in the prompts, the eval split or any training sentence.
    for text in ph.clean + ph.sentences:
        assert not any(text.startswith(h) for h in trained), text
        assert any(text.startswith(h) for h in held), text
    training = set(task.prompts.clean + task.eval.clean + task.train_text + task.eval_text)
    assert not training & set(ph.clean + ph.sentences)
    # The same facts as the eval split: the same answer choices, the same correct one.
    eval_rows = {
        (tuple(c.tolist()), tuple(g.tolist()))
        for c, g in zip(task.eval.choices, task.eval.good, strict=True)
    }
    for c, g in zip(ph.choices, ph.good, strict=True):
        assert (tuple(c.tolist()), tuple(g.tolist())) in eval_rows
    for text, row in zip(ph.clean, ph.clean_tokens, strict=True):
        assert tiny.tokenizer(text)["input_ids"] == row.tolist()
    # Tasks without held-out phrasings say so.
    assert tasks.get("ioi", tiny, n=4, n_eval=4).phrasings is None


def test_default_eval_split_is_every_usable_pair_up_to_the_cap(tiny):
    ioi = tasks.get("ioi", tiny, n=4)
    assert len(ioi.eval) == tasks.MAX_EVAL  # generated without end: capped
    gender = tasks.get("gender", tiny, n=8)
    size = len(gender.eval)
    assert 8 <= size < tasks.MAX_EVAL  # the shipped name list runs out first
    # "Every usable pair": one more than the default is more than the task has.
    assert len(tasks.get("gender", tiny, n=8, n_eval=size).eval) == size
    with pytest.raises(ValueError, match="usable prompt pairs"):
        tasks.get("gender", tiny, n=8, n_eval=size + 1)
