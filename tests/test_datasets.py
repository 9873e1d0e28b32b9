"""Loaders of the real data sets, on local fixtures in the hub formats (tests/fixtures)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from clue_mi.tasks import datasets as D
from clue_mi.tasks.base import Task

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> Path:
    return FIXTURES / f"{name}.jsonl"


def rows_of(name: str) -> list[dict]:
    return [json.loads(line) for line in fixture(name).read_text().splitlines()]


@pytest.fixture(scope="module")
def tok(tiny):
    return tiny.tokenizer


def first_token(tok, text: str) -> int:
    return tok(text, add_special_tokens=False)["input_ids"][0]


def check_shapes(task: Task, n: int, n_eval: int, k: int) -> int:
    """Rectangular prompt sets of one length, clean and corrupted alike; returns the length."""
    length = task.prompts.clean_tokens.shape[1]
    for part, size in ((task.prompts, n), (task.eval, n_eval)):
        assert part.clean_tokens.shape == part.corrupted_tokens.shape == (size, length)
        assert part.choices.shape == part.good.shape == (size, k)
        assert part.good.sum(1).eq(1).all()
        assert len(part.clean) == len(part.corrupted) == len(part.sentences) == size
    assert task.info["seed"] == 0
    return length


# --------------------------------------------------------------------------- WMDP


def parse_mc(prompt: str) -> tuple[str, list[str]]:
    lines = prompt.split("\n")
    assert lines[0].startswith("The following are multiple choice questions") and lines[-1] == (
        "Answer:"
    )
    choice_lines = lines[3:-1]
    letters = [line[:3] for line in choice_lines]
    assert letters == [f"{c}. " for c in "ABCD"[: len(choice_lines)]]
    return lines[2], [line[3:] for line in choice_lines]


@pytest.mark.parametrize("subset", ["cyber", "bio"])
def test_wmdp_correct_letter_and_corruption(tok, subset):
    loader = {"cyber": D.load_wmdp_cyber, "bio": D.load_wmdp_bio}[subset]
    task = loader(tok, 4, 4, 0, path=fixture(f"wmdp_{subset}"))
    check_shapes(task, 4, 4, 4)
    letters = [first_token(tok, f" {c}") for c in "ABCD"]
    rows = rows_of(f"wmdp_{subset}")
    for part in (task.prompts, task.eval):
        # the four letters, in a seeded random order per prompt (build_task shuffles choices)
        assert (part.choices.sort(1).values == torch.tensor(sorted(letters))).all()
        for clean, corrupted, good, ids, sentence in zip(
            part.clean, part.corrupted, part.good, part.choices, part.sentences, strict=True
        ):
            question, choices = parse_mc(clean)
            matches = [r for r in rows if r["question"] == question and r["choices"] == choices]
            answer = letters.index(int(ids[good].item()))
            # the good letter is the data set's answer (the fixture repeats some rows)
            assert matches and {r["answer"] for r in matches} == {answer}
            c_question, c_choices = parse_mc(corrupted)
            assert c_question == question and sorted(c_choices) == sorted(choices)
            # the answer text moved to another letter; the good letter now shows another text
            assert c_choices[answer] != choices[answer]
            assert c_choices.index(choices[answer]) != answer
            assert sentence == f"{clean} {'ABCD'[answer]}. {choices[answer]}"


def test_wmdp_deterministic_per_seed(tok):
    path = fixture("wmdp_cyber")
    a, b = D.load_wmdp_cyber(tok, 4, 4, 0, path=path), D.load_wmdp_cyber(tok, 4, 4, 0, path=path)
    c = D.load_wmdp_cyber(tok, 4, 4, 1, path=path)
    assert a.prompts.clean == b.prompts.clean and a.eval.corrupted == b.eval.corrupted
    assert torch.equal(a.prompts.corrupted_tokens, b.prompts.corrupted_tokens)
    assert (a.prompts.clean + a.eval.clean) != (c.prompts.clean + c.eval.clean)


def test_wmdp_unknown_subset(tok):
    with pytest.raises(ValueError, match="unknown WMDP subset"):
        D.load_wmdp(tok, subset="chem", path=fixture("wmdp_cyber"))


def test_too_many_pairs_asked_for(tok):
    with pytest.raises(ValueError, match="ask for fewer"):
        D.load_wmdp_cyber(tok, 50, 50, 0, path=fixture("wmdp_cyber"))


# --------------------------------------------------------------------------- SST-2 and RTE


def test_sst2_pairs_opposite_labels(tok):
    task = D.load_sst2(tok, 6, 6, 0, path=fixture("sst2"))
    check_shapes(task, 6, 6, 2)
    labels = {D.SST2_TEMPLATE.format(sentence=r["sentence"].strip()): r["label"] for r in
              rows_of("sst2")}  # fmt: skip
    answer_ids = [first_token(tok, " negative"), first_token(tok, " positive")]  # label 0, 1
    for part in (task.prompts, task.eval):
        for clean, corrupted, choices in zip(part.clean, part.corrupted, part.choices, strict=True):
            label = labels[clean]
            assert labels[corrupted] == 1 - label
            # the correct answer is the good choice, wherever the seeded shuffle put it
            good = part.good[part.clean.index(clean)]
            assert choices[good].tolist() == [answer_ids[label]]
            assert sorted(choices.tolist()) == sorted(answer_ids)
        # labels alternate, so both splits are balanced
        assert sum(labels[c] for c in part.clean) == len(part) // 2
    assert task.info["length"] == task.prompts.clean_tokens.shape[1]


def test_rte_pairs_opposite_labels(tok):
    task = D.load_rte(tok, 5, 5, 0, path=fixture("rte"))
    check_shapes(task, 5, 5, 2)
    labels = {D.rte_prompt(r["sentence1"], r["sentence2"]): r["label"] for r in rows_of("rte")}
    yes, no = first_token(tok, " yes"), first_token(tok, " no")
    for part in (task.prompts, task.eval):
        for clean, corrupted, choices, good in zip(
            part.clean, part.corrupted, part.choices, part.good, strict=True
        ):
            assert labels[corrupted] == 1 - labels[clean]
            assert choices[good].tolist() == [yes if labels[clean] == 0 else no]
            assert sorted(choices.tolist()) == sorted([yes, no])


def test_binary_pairing_deterministic(tok):
    a = D.load_sst2(tok, 6, 6, 3, path=fixture("sst2"))
    b = D.load_sst2(tok, 6, 6, 3, path=fixture("sst2"))
    assert (a.prompts.clean, a.prompts.corrupted) == (b.prompts.clean, b.prompts.corrupted)
    c = D.load_sst2(tok, 6, 6, 4, path=fixture("sst2"))
    assert (a.prompts.clean, a.prompts.corrupted) != (c.prompts.clean, c.prompts.corrupted)


# --------------------------------------------------------------------------- Winogrande


def test_swap_options():
    assert D.swap_options("John lent Mary a pen; _ said", "John", "Mary") == (
        "Mary lent John a pen; _ said"
    )
    assert D.swap_options("John lent Johnny a pen", "John", "Mary") is None  # Mary absent
    assert D.swap_options("Ann met Anna", "Ann", "Anna") is None  # one name inside the other


@pytest.mark.parametrize("corruption", ["auto", "swap", "twin"])
def test_winogrande_answer_and_corruption(tok, corruption):
    task = D.load_winogrande(tok, 3, 3, 0, path=fixture("winogrande"), corruption=corruption)
    check_shapes(task, 3, 3, 2)
    rows = [r for r in rows_of("winogrande") if r["answer"] in ("1", "2")]
    by_prompt = {D.winogrande_prompt(r["sentence"]): r for r in rows}
    kinds = task.info["corruptions"]
    assert set(kinds) <= {"swap", "twin", "none"}
    if corruption != "auto":
        assert kinds.get({"swap": "twin", "twin": "swap"}[corruption], 0) == 0
    for part in (task.prompts, task.eval):
        for clean, corrupted, choices, good, sentence in zip(
            part.clean, part.corrupted, part.choices, part.good, part.sentences, strict=True
        ):
            row = by_prompt[clean]
            right, wrong = row[f"option{row['answer']}"], row[f"option{3 - int(row['answer'])}"]
            assert choices[good].tolist() == [first_token(tok, " " + right)]
            assert choices[~good].tolist() == [first_token(tok, " " + wrong)]
            assert sentence == row["sentence"].replace("_", right)
            swapped = D.swap_options(row["sentence"], row["option1"], row["option2"])
            if corrupted in by_prompt:  # a twin: same options, the other answer
                twin = by_prompt[corrupted]
                assert {twin["option1"], twin["option2"]} == {row["option1"], row["option2"]}
                assert twin[f"option{twin['answer']}"] == wrong
                assert corruption != "swap"
            else:
                assert corrupted == D.winogrande_prompt(swapped) and corruption != "twin"


def test_winogrande_twin_has_the_other_answer(tok):
    """A twin must flip the answer: same-answer rows with the same options are not twins."""
    row = {"sentence": "Mary thanked John because _ got a gift.", "option1": "Mary",
           "option2": "John", "answer": "1"}  # fmt: skip
    same = {**row, "sentence": "Mary thanked John because _ got a card."}
    twin = {**row, "sentence": "Mary thanked John because _ gave a gift.", "answer": "2"}
    flipped = {**twin, "option1": "John", "option2": "Mary", "answer": "1"}  # listed reversed
    for other in (twin, flipped):
        examples, kinds = D.winogrande_examples([row, same, other], tok, "twin", limit=1)
        assert kinds == {"twin": 1}
        assert [e.corrupted for e in examples] == [D.winogrande_prompt(other["sentence"])]
    examples, kinds = D.winogrande_examples([row, same], tok, "twin", limit=1)
    assert examples == [] and kinds == {"none": 1}


def test_winogrande_rejects_unknown_corruption(tok):
    with pytest.raises(ValueError, match="corruption"):
        D.load_winogrande(tok, 2, 2, 0, path=fixture("winogrande"), corruption="shuffle")


# --------------------------------------------------------------------------- PKU-SafeRLHF


def test_pku_saferlhf_text_splits_by_safety():
    forget, retain = D.load_pku_saferlhf_text(fixture("pku_saferlhf"), n=100)
    unsafe, safe = set(), set()
    for r in rows_of("pku_saferlhf"):
        for i in (0, 1):
            text = D.PKU_TEMPLATE.format(prompt=r["prompt"], response=r[f"response_{i}"])
            (safe if r[f"is_response_{i}_safe"] else unsafe).add(text)
    assert set(forget) == unsafe and set(retain) == safe
    assert len(forget) == len(set(forget)) == 32 and len(retain) == 34
    small = D.load_pku_saferlhf_text(fixture("pku_saferlhf"), n=5, seed=1)
    assert [len(x) for x in small] == [5, 5]
    assert small == D.load_pku_saferlhf_text(fixture("pku_saferlhf"), n=5, seed=1)
    assert small != D.load_pku_saferlhf_text(fixture("pku_saferlhf"), n=5, seed=2)


# --------------------------------------------------------------------------- sources


def test_hub_folder_layout_and_parquet(tok, tmp_path):
    """A local copy laid out like the hub repo (config folder, parquet shards) reads the same."""
    import datasets

    folder = tmp_path / "wmdp" / "wmdp-cyber"
    folder.mkdir(parents=True)
    ds = datasets.load_dataset("json", data_files=str(fixture("wmdp_cyber")), split="train")
    ds.to_parquet(str(folder / "test-00000-of-00001.parquet"))
    from_folder = D.load_wmdp_cyber(tok, 4, 4, 0, path=tmp_path / "wmdp")
    from_jsonl = D.load_wmdp_cyber(tok, 4, 4, 0, path=fixture("wmdp_cyber"))
    assert from_folder.prompts.clean == from_jsonl.prompts.clean
    assert torch.equal(from_folder.eval.corrupted_tokens, from_jsonl.eval.corrupted_tokens)


def test_split_files_in_a_folder(tmp_path):
    rows = rows_of("sst2")
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:30]))
    (tmp_path / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[30:]))
    assert D.load_rows(D.SST2, "validation", tmp_path) == rows[30:]
    assert len(D.load_rows(D.SST2, "train+validation", tmp_path)) == len(rows)
    with pytest.raises(FileNotFoundError, match="split 'test'"):
        D.load_rows(D.SST2, "test", tmp_path)


def test_wrong_format_names_missing_fields(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "great film", "label": 1}) + "\n")
    with pytest.raises(ValueError, match=re.escape("missing field(s) ['sentence']")):
        D.load_sst2("unused", path=bad)


def test_offline_without_path_says_what_to_do(tok, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert D.offline()
    for spec in D.DATASET_TASKS.values():
        with pytest.raises(D.DatasetUnavailableError) as err:
            spec.load(tok, 2, 2, 0)
        message = str(err.value)
        assert spec.hub_id in message and "needs to be online" in message
        assert "path=" in message and "offline mode is on" in message
    with pytest.raises(D.DatasetUnavailableError, match="PKU-Alignment/PKU-SafeRLHF"):
        D.load_pku_saferlhf_text()


def test_registry_loads_every_task_like_tasks_get(tok):
    """``tasks.get`` calls ``load(model, n, n_eval, seed, path=...)``."""
    assert set(D.DATASET_TASKS) == {"wmdp_cyber", "wmdp_bio", "sst2", "rte", "winogrande"}
    for name, spec in D.DATASET_TASKS.items():
        task = spec.load(tok, 2, 2, 0, path=fixture(name))
        assert task.name == name and len(task.prompts) == len(task.eval) == 2
        assert task.info["source"] == str(fixture(name))
