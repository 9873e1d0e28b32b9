"""Tests of clue_mi.evaluate: metrics on hand-made inputs, lm-eval offline, and the real model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clue_mi import evaluate as ev
from clue_mi.stats import bootstrap_auc, tied_fraction
from clue_mi.tasks import PromptSet
from clue_mi.tasks.builtin import CAPITAL_TEMPLATES, CAPITALS

# ----------------------------------------------------------------------------- Min-k% Prob


def test_mink_mean_of_lowest_fraction():
    logprobs = [-0.1, -5.0, -0.2, -3.0, -0.3, -0.4, -0.5, -0.6, -0.7, -0.8]
    # 20% of 10 tokens = the 2 lowest: -5 and -3.
    assert ev.mink_from_logprobs(logprobs, k=0.2) == pytest.approx(-4.0)
    # 50% = the 5 lowest: -5, -3, -0.8, -0.7, -0.6.
    assert ev.mink_from_logprobs(logprobs, k=0.5) == pytest.approx(-10.1 / 5)
    assert ev.mink_from_logprobs(logprobs, k=1.0) == pytest.approx(sum(logprobs) / 10)


def test_mink_short_text_uses_at_least_one_token():
    assert ev.mink_from_logprobs(torch.tensor([-1.0, -2.0, -0.5]), k=0.2) == pytest.approx(-2.0)
    with pytest.raises(ValueError):
        ev.mink_from_logprobs([], k=0.2)
    with pytest.raises(ValueError):
        ev.mink_from_logprobs([-1.0], k=0.0)


def test_token_logprobs_match_a_manual_forward(tiny):
    texts = ["The capital of France is Paris.", "Hello", "One two three four five six"]
    got = ev.token_logprobs(tiny, texts, batch_size=2)  # padding within a batch
    hf, tok = tiny.original_model, tiny.tokenizer
    for text, lp in zip(texts, got, strict=True):
        ids = tok(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logp = hf(input_ids=ids).logits.log_softmax(-1)[0]
        want = logp[:-1].gather(1, ids[0, 1:, None]).squeeze(1)
        assert lp.shape == want.shape
        torch.testing.assert_close(lp, want, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- MIA AUC


@pytest.mark.parametrize(
    ("members", "nonmembers", "auc"),
    [
        ([-1.0, -2.0], [-3.0, -4.0], 1.0),  # every member more familiar
        ([-3.0, -4.0], [-1.0, -2.0], 0.0),  # every member less familiar (over-unlearning)
        ([-1.0, -3.0], [-2.0, -4.0], 0.75),  # 3 of 4 pairs ordered right
        ([-1.0, -4.0], [-2.0, -3.0], 0.5),  # 2 of 4
        ([-2.0], [-2.0], 0.5),  # a tie counts half
    ],
)
def test_mia_auc_on_known_scores(monkeypatch, members, nonmembers, auc):
    # AUC = P(member score > non-member score) + 0.5 P(tie), counted by hand above.
    fake = {"m": members, "n": nonmembers}
    monkeypatch.setattr(ev, "mink_scores", lambda model, texts, k, bs, tok, span: fake[texts[0][0]])
    texts_m = ["m"] * len(members)
    texts_n = ["n"] * len(nonmembers)
    assert ev.mia_auc(None, texts_m, texts_n) == pytest.approx(auc)
    assert bootstrap_auc(members, nonmembers).value == pytest.approx(auc)


def test_tied_fraction_counts_pairs_within_the_tolerance():
    # pairs: (-1, -1.00005) tied, (-1, -2) not, (-3, -1.00005) not, (-3, -2) not -> 1 of 4
    tol = ev.MIA_TIE  # 1e-4
    assert tied_fraction([-1.0, -3.0], [-1.00005, -2.0], tol) == pytest.approx(0.25)
    assert tied_fraction([-1.0], [-1.001], tol) == 0.0  # 1e-3 apart: ordered, not tied


def test_answer_span_scores_only_the_answer(tiny):
    text = "The capital of Spain is the city of Madrid."
    assert text[ev.answer_start(text) :] == " Madrid."
    assert ev.answer_start("no template here") == 0
    whole = ev.token_logprobs(tiny, [text, "no template here"])
    answer = ev.answer_logprobs(tiny, [text, "no template here"])
    n_answer = len(tiny.tokenizer(text)["input_ids"]) - len(
        tiny.tokenizer("The capital of Spain is the city of")["input_ids"]
    )
    assert 0 < n_answer == answer[0].numel() < whole[0].numel()
    assert torch.equal(answer[0], whole[0][-n_answer:])  # the last tokens: " Madrid", "."
    assert torch.equal(answer[1], whole[1])  # outside the templates: the whole text


def test_mia_of_a_model_trained_on_the_forget_texts_is_clearly_above_half(restored_tiny):
    """The guard DESIGN §9 / issue 11 ask for: memorized forget text must read as members."""
    from clue_mi import tasks
    from clue_mi.unlearn import encode_texts, mean_nll

    model = restored_tiny
    forget = tasks.get("capitals", model, n=8, n_eval=8)
    members = forget.train_text + forget.eval_text
    holdout = ev.holdout_capital_texts(like=members)
    before = ev.mia_auc(model, members, holdout)
    net = model.original_model
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    batch = encode_texts(model.tokenizer, members).batch(list(range(len(members))))
    for _ in range(30):  # plain fine-tuning on the member sentences
        loss = mean_nll(net, batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
    result = ev.mia(model, members, holdout)
    assert result.auc > 0.9 and result.auc > before + 0.2, (before, result)
    assert result.ties < 0.05 and result.low <= result.auc <= result.high


def test_mia_auc_on_a_model_scores_each_text_by_mink(tiny):
    members, nonmembers = ["a b c d e f g h i j k", "one two three"], ["x y z", "alpha beta"]
    scores = ev.mink_scores(tiny, members + nonmembers, k=0.2, batch_size=3)
    lps = ev.token_logprobs(tiny, members + nonmembers)
    assert scores == pytest.approx([ev.mink_from_logprobs(lp, 0.2) for lp in lps])
    # Hand count of P(member > non-member) over the 4 pairs.
    wins = sum((m > n) + 0.5 * (m == n) for m in scores[:2] for n in scores[2:])
    assert ev.mia_auc(tiny, members, nonmembers) == pytest.approx(wins / 4)


def test_holdout_capitals_are_disjoint_from_the_forget_set():
    texts = ev.holdout_capital_texts()
    assert len(texts) == len(ev.HOLDOUT_CAPITALS) * len(CAPITAL_TEMPLATES)
    assert not set(ev.HOLDOUT_CAPITALS) & set(CAPITALS)
    for template in CAPITAL_TEMPLATES:
        assert f"{template.format('Uruguay')} Montevideo." in texts
    assert ev.holdout_capital_texts(exclude=["Uruguay", *CAPITALS]) == [
        t for t in texts if "Uruguay" not in t
    ]


def test_holdout_capitals_match_the_forget_templates(tiny):
    from clue_mi import tasks

    forget = tasks.get("capitals", tiny, n=8, n_eval=8)
    members = forget.train_text + forget.eval_text + ["not a capitals sentence"]
    held = ev.holdout_capital_texts(like=members)
    assert len(held) == len(members) - 1
    countries = list(ev.HOLDOUT_CAPITALS)
    for i, (m, h) in enumerate(zip(members, held, strict=False)):
        template = next(t for t in CAPITAL_TEMPLATES if m.startswith(t.split("{}")[0]))
        assert h.startswith(template.format(countries[i % len(countries)]))


# ----------------------------------------------------------------------------- Rouge-L


def test_rouge_l_recall_on_known_lcs():
    # Reference of 4 tokens; LCS with the prediction is "the cat mat", 3 tokens -> 3/4.
    assert ev.rouge_l_recall(["the cat sat on a mat"], ["the cat mat rug"]) == pytest.approx(0.75)
    # Recall ignores extra generated words and punctuation/case (rouge-score tokenizer).
    assert ev.rouge_l_recall(["Paris. It is a big city"], ["Paris."]) == pytest.approx(1.0)
    assert ev.rouge_l_recall(["Berlin is"], ["Paris."]) == pytest.approx(0.0)
    # Order matters: LCS of "b a" vs reference "a b" is 1 token -> 1/2; mean over pairs.
    assert ev.rouge_l_recall(["b a", "a b"], ["a b", "a b"]) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        ev.rouge_l_recall(["a"], ["a", "b"])


def test_greedy_continuations_are_greedy_and_batch_invariant(tiny):
    prompts = ["The capital of France is", "Hi", "One two three four five"]
    batched = ev.greedy_continuations(tiny, prompts, max_new_tokens=4, batch_size=3)
    single = [ev.greedy_continuations(tiny, [p], max_new_tokens=4)[0] for p in prompts]
    assert batched == single  # left padding must not change what is generated
    hf, tok = tiny.original_model, tiny.tokenizer
    ids = tok(prompts[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        new = tok(batched[0], add_special_tokens=False, return_tensors="pt")["input_ids"][0]
        assert len(new) > 0
        for token in new.tolist():  # each generated token is an argmax of a full recompute
            logits = hf(input_ids=ids).logits[0, -1]
            assert logits[token] >= logits.max() - 1e-4
            ids = torch.cat([ids, torch.tensor([[token]])], 1)
    assert tok.padding_side == "right"  # restored


def test_cached_greedy_on_the_plain_model_matches_the_bridge_recompute(tiny):
    from clue_mi.models import is_bridged, plain_hf_model

    prompts = ["The capital of France is", "Hi", "One two three four five"]
    plain = plain_hf_model(tiny)
    assert is_bridged(tiny.original_model) and not is_bridged(plain)  # cache only on plain
    cached = ev.greedy_continuations(plain, prompts, 6, 2, tiny.tokenizer)
    assert cached == ev.greedy_continuations(tiny, prompts, 6, 2)


def test_rouge_l_of_a_model_uses_its_continuations(tiny, monkeypatch):
    monkeypatch.setattr(ev, "greedy_continuations", lambda m, p, n, b, tok: ["Paris is nice", "x"])
    assert ev.rouge_l(tiny, ["p1", "p2"], ["Paris.", "Rome."]) == pytest.approx(0.5)


# ----------------------------------------------------------------------------- accuracy


def _promptset(choices, good, n_pos=3):
    n = len(choices)
    return PromptSet(
        clean=["p"] * n,
        corrupted=["q"] * n,
        clean_tokens=torch.arange(n * n_pos).reshape(n, n_pos),
        corrupted_tokens=torch.zeros(n, n_pos, dtype=torch.long),
        choices=torch.tensor(choices),
        good=torch.tensor(good),
        sentences=["s"] * n,
    )


def test_task_accuracy_on_hand_made_logits(monkeypatch):
    logits = torch.zeros(4, 10)
    logits[0, 3] = 5.0  # choices (3, 4): picks 3, correct
    logits[1, 5] = 5.0  # choices (4, 5): picks 5, wrong
    logits[2, 7] = 1.0  # choices (6, 7, 8): picks 7, one of two correct
    logits[3, 2] = 9.0  # choices (1, 0): 2 is not a choice; 0.0 == 0.0 is a tie -> wrong
    ps = _promptset(
        [[3, 4], [4, 5], [6, 7], [1, 0]],
        [[True, False], [True, False], [False, True], [True, False]],
    )
    monkeypatch.setattr(ev, "final_logits", lambda model, tokens, bs: logits)
    # Before #16 the tie went to the first choice, the correct one here: 0.75.
    assert ev.task_accuracy(None, ps) == pytest.approx(0.5)


def test_fe_and_ru_on_the_tiny_model(tiny):
    from clue_mi import tasks

    forget = tasks.get("capitals", tiny, n=4, n_eval=8)
    retain = [tasks.get("ioi", tiny, n=4, n_eval=8)]
    # final_logits must equal a plain forward's last position
    want = tiny.original_model(input_ids=forget.eval.clean_tokens).logits[:, -1]
    torch.testing.assert_close(ev.final_logits(tiny, forget.eval.clean_tokens, 3), want)
    acc = ev.task_accuracy(tiny, forget.eval)
    assert ev.forget_efficacy(tiny, forget) == pytest.approx(1 - acc)
    ru = ev.retain_utility(tiny, retain)
    assert set(ru) == {"ioi"} and 0.0 <= ru["ioi"] <= 1.0


def test_continuation_references_strip_the_prompt(tiny):
    from clue_mi import tasks

    forget = tasks.get("capitals", tiny, n=2, n_eval=4)
    prompts, refs = ev.continuation_references(forget)
    assert prompts == forget.eval.clean
    for p, r, s in zip(prompts, refs, forget.eval.sentences, strict=True):
        assert s == f"{p} {r}" and r.endswith(".")


# ----------------------------------------------------------------------------- GU (lm-eval)


def test_shipped_data_is_what_make_data_writes(tmp_path):
    from clue_mi.lm_eval_tasks import make_data

    counts = make_data.main(tmp_path)
    shipped = ev.local_task_dir() / "data"
    for name, count in counts.items():
        assert (tmp_path / f"{name}.jsonl").read_bytes() == (shipped / f"{name}.jsonl").read_bytes()
        assert count >= 60
        for line in (shipped / f"{name}.jsonl").read_text().splitlines():
            item = json.loads(line)
            assert len(set(item["choices"])) == len(item["choices"]) >= 2
            assert 0 <= item["answer"] < len(item["choices"])


def test_local_task_yamls_resolve_to_absolute_data(tmp_path, monkeypatch):
    installed = ev.copy_task_dir(tmp_path / "site" / "lm_eval_tasks")
    monkeypatch.chdir(tmp_path)  # relative paths would now point nowhere
    with ev.resolved_task_dir(installed) as d:
        names = sorted(p.stem for p in d.glob("*.yaml"))
        assert set(ev.LOCAL_GU_TASKS) <= set(names)
        for path in d.glob("*.yaml"):
            import yaml

            files = yaml.safe_load(path.read_text())["dataset_kwargs"]["data_files"]["test"]
            assert Path(files).is_absolute() and Path(files).is_file()
            assert Path(files).parent.parent == installed.resolve()
    assert not d.exists()


def test_general_utility_runs_lm_eval_offline(tiny, tmp_path, monkeypatch):
    # Run from an "installed" copy of the task folder and a foreign working directory.
    installed = ev.copy_task_dir(tmp_path / "site" / "lm_eval_tasks")
    monkeypatch.chdir(tmp_path)
    rng = torch.get_rng_state()
    result = ev.general_utility(tiny, limit=8, batch_size=16, task_dir=installed)
    assert torch.equal(torch.get_rng_state(), rng)  # lm-eval must not reseed the caller
    assert set(result["tasks"]) == set(ev.LOCAL_GU_TASKS)
    for score in result["tasks"].values():
        assert 0.0 <= score <= 1.0
        assert score * 8 == pytest.approx(round(score * 8))  # a fraction of the 8 documents
    assert result["gu"] == pytest.approx(sum(result["tasks"].values()) / len(result["tasks"]))
    assert not tiny.original_model.training


def test_general_utility_reports_unknown_metric(tiny, tmp_path):
    with pytest.raises(KeyError, match="no 'f1'"):
        ev.general_utility(tiny, tasks=["clue_colors"], limit=2, metric="f1")


def test_shipped_task_dir_is_package_data():
    d = ev.local_task_dir()
    assert (d / "clue_colors.yaml").is_file() and (d / "data" / "colors.jsonl").is_file()


# ----------------------------------------------------------------------------- integration


@pytest.mark.integration
def test_embedded_model_knows_capitals(smol):
    from clue_mi import tasks

    forget = tasks.get("capitals", smol, n=32, n_eval=32)
    fe = ev.forget_efficacy(smol, forget)
    assert fe < 0.3, fe  # accuracy > 0.7 against a chance of 0.25
    prompts, refs = ev.continuation_references(forget)
    assert ev.rouge_l(smol, prompts, refs) > 0.5
    # Measured (n=32+32, answer span): AUC 0.735, no tied pairs: the forget list's capitals are
    # better known than the held-out ones. Over whole sentences the same sets give 0.502 with
    # 22% of pairs within 1e-4: the template tokens decide the score, float noise the order.
    members = forget.train_text + forget.eval_text
    holdout = ev.holdout_capital_texts(like=members)
    result = ev.mia(smol, members, holdout)
    assert 0.65 < result.auc < 0.85 and result.ties < 0.01, result
    assert result.low < result.auc < result.high  # a real spread at 64 + 64 texts
    assert ev.mia(smol, members, holdout, span="text").ties > 0.1


# Measured with the full shipped data (acc, SmolLM2-135M-Instruct, dequantized Q4_1 GGUF).
MEASURED_GU = {
    "clue_antonyms": 0.750,
    "clue_colors": 0.398,
    "clue_past_tense": 0.933,
    "clue_animals": 0.576,
}
CHANCE = {"clue_antonyms": 0.25, "clue_colors": 0.25, "clue_past_tense": 0.25, "clue_animals": 0.25}


@pytest.mark.integration
def test_embedded_model_general_utility(smol):
    result = ev.general_utility(smol)
    for name, score in result["tasks"].items():
        assert score == pytest.approx(MEASURED_GU[name], abs=0.02), name
        assert score > CHANCE[name] + 0.1, name  # a usable utility signal


# ----------------------------------------------------------------------------- fail closed (#16)


@pytest.mark.parametrize(
    ("lls", "value", "want"),
    [
        ([-1.0, -2.0, -3.0], 1.0, 1.0),  # a clear top: lm-eval's value stands
        ([-1.0, -2.0, -3.0], 0.0, 0.0),
        ([float("nan"), -2.0, -3.0], 1.0, 0.0),  # argmax of NaN is the first choice
        ([-1.0, -1.0, -3.0], 1.0, 0.0),  # a tied top
        ([float("-inf")] * 3, 1.0, 0.0),
        ([-1.0, -2.0, -2.0], 1.0, 1.0),  # ties below the top do not matter
    ],
)
def test_gu_documents_are_rescored_failing_closed(lls, value, want):
    sample = {"filtered_resps": [(x, False) for x in lls], "acc": value}
    assert ev.fail_closed_value(sample, "acc") == want


def test_gu_group_score_is_the_mean_over_its_documents():
    docs = lambda *v: [{"filtered_resps": [(x, False), (-9.0, False)], "acc": x} for x in v]  # noqa: E731
    results = {
        "samples": {"a": docs(1.0, 1.0), "b": docs(0.0, 1.0, 1.0, 1.0)},
        "group_subtasks": {"g": ["a", "b"]},
    }
    assert ev._fail_closed_score(results, "a", "acc") == 1.0
    assert ev._fail_closed_score(results, "g", "acc") == pytest.approx(5 / 6)
    assert ev._fail_closed_score(results, "missing", "acc") is None


def test_evaluate_model_reports_held_out_phrasings(tiny):
    from clue_mi import tasks

    forget = tasks.get("capitals", tiny, n=4, n_eval=8)
    retain = [tasks.get("ioi", tiny, n=4, n_eval=8)]
    out = ev.evaluate_model(tiny, forget, retain, gu_tasks=())
    assert out["finite"] is True
    assert out["fe_phrasings"] == pytest.approx(ev.forget_efficacy(tiny, forget, split="phrasings"))
    assert out["fe_phrasings"] == pytest.approx(1 - ev.task_accuracy(tiny, forget.phrasings))
    no_phrasings = ev.evaluate_model(tiny, retain[0], retain, gu_tasks=(), forget_texts=["a b c"],
                                     holdout_texts=["d e f"])  # fmt: skip
    assert no_phrasings["fe_phrasings"] is None
    with pytest.raises(ValueError, match="no held-out phrasings"):
        ev.forget_efficacy(tiny, retain[0], split="phrasings")


def test_evaluate_model_intervals_are_bootstraps_of_the_prompt_outcomes(tiny):
    from clue_mi import tasks
    from clue_mi.stats import bootstrap_mean

    forget = tasks.get("capitals", tiny, n=4, n_eval=8)
    retain = [tasks.get("ioi", tiny, n=4, n_eval=8)]
    out = ev.evaluate_model(tiny, forget, retain, gu_tasks=())
    correct, _ = ev.prompt_outcomes(tiny, forget.eval)
    want = bootstrap_mean([1.0 - v for v in correct.float().tolist()])
    assert out["ci"]["fe"] == [want.low, want.high]
    assert out["ci"]["fe"][0] <= out["fe"] <= out["ci"]["fe"][1]
    low, high = out["ci"]["ru"]["ioi"]
    assert low <= out["ru"]["ioi"] <= high
    assert set(out["ci"]) == {"fe", "fe_phrasings", "ru", "ru_mean", "mia_auc"}
    # one retain task: the pooled RU mean is that task's accuracy, with the same interval
    assert out["ci"]["ru_mean"] == out["ci"]["ru"]["ioi"] and out["ru_mean"] == out["ru"]["ioi"]
    low, high = out["ci"]["mia_auc"]  # the MIA's bootstrap over member and non-member texts
    assert low <= out["mia_auc"] <= high and 0.0 <= out["mia_ties"] <= 1.0
