"""Masked two-stage unlearning: bit-identity outside the mask, losses, baselines, HF export."""

from __future__ import annotations

import os

import pytest
import torch

from clue_mi import masks as M
from clue_mi import unlearn as U
from clue_mi.models import plain_hf_model

FORGET_TEXT = [
    "The capital of France is Paris.",
    "The capital of Spain is Madrid.",
    "The capital of Italy is Rome.",
    "The capital of Japan is Tokyo.",
    "The capital of Egypt is Cairo.",
    "The capital of Peru is Lima.",
]
FORGET_PROMPTS = [t.removesuffix(".").rsplit(" ", 1)[0] for t in FORGET_TEXT]
RETAIN_TEXT = [
    "When Mary and John went to the store, John gave a drink to Mary.",
    "The war lasted from 1732 to 1756.",
    "Alice said that she would come.",
    "one two three one two three",
]
FORGET_NODES = ["a0.h1.q", "a1.g0.k", "m1"]
CONFLICT_NODES = ["a0.h2", "a1.g1.v"]


@pytest.fixture
def model(restored_tiny):
    """The session's tiny model, restored after each test (conftest)."""
    return restored_tiny


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in M.hf_parameters(model).items()}


def assert_only_mask_changed(model, before, mask):
    for name, p in M.hf_parameters(model).items():
        m = mask.get(name)
        if m is None:
            assert torch.equal(p, before[name]), f"{name} changed outside the mask"
            continue
        assert torch.equal(p[~m], before[name][~m]), f"{name} changed outside the mask"
        moved = (p[m] != before[name][m]).float().mean()
        assert moved > 0.9, f"only {moved:.2f} of the masked elements of {name} moved"


def forget_for(loss):
    return FORGET_PROMPTS if loss == "po" else FORGET_TEXT


@pytest.mark.parametrize("loss", ["ga", "npo", "po"])
def test_each_stage_touches_only_its_mask(model, loss):
    fm, cm = M.forget_mask(model, FORGET_NODES), M.conflict_mask(model, CONFLICT_NODES)
    before = snapshot(model)
    r1 = U.unlearn(
        model,
        forget_for(loss),
        RETAIN_TEXT,
        fm,
        cm,
        loss=loss,
        epochs=(2, 0),
        lr=1e-3,
        batch_size=4,
        progress=False,
    )
    assert_only_mask_changed(model, before, fm)
    assert r1.steps == {1: 4, 2: 0}
    mid = snapshot(model)
    r2 = U.unlearn(
        model,
        forget_for(loss),
        RETAIN_TEXT,
        fm,
        cm,
        loss=loss,
        epochs=(0, 2),
        lr=1e-3,
        batch_size=4,
        progress=False,
    )
    assert_only_mask_changed(model, mid, cm)
    assert r2.steps == {1: 0, 2: 4}
    assert all(h["retain_loss"] == h["retain_loss"] for h in r2.history)  # stage 2 uses retain
    assert r1.state_numel[1] == M.mask_size(fm) and r2.state_numel[2] == M.mask_size(cm)
    # Two fp32 moments per element, plus an int32 position where a parameter is partly masked.
    partial = sum(int(m.sum()) for m in fm.values() if not m.all())
    assert partial > 0
    assert r1.state_bytes[1] == 2 * 4 * M.mask_size(fm) + 4 * partial


def test_bridge_sees_the_updates(model):
    toks = model.tokenizer(FORGET_TEXT[:1], return_tensors="pt").input_ids
    with torch.no_grad():
        before = model(toks)
    U.unlearn(
        model,
        FORGET_TEXT,
        None,
        M.forget_mask(model, ["m1"]),
        None,
        loss="ga",
        epochs=(1, 0),
        lr=1e-3,
        progress=False,
    )
    with torch.no_grad():
        after = model(toks)
        plain = plain_hf_model(model)(toks).logits
    assert not torch.equal(before, after)
    torch.testing.assert_close(after, plain, atol=1e-4, rtol=1e-4)


def forget_nll(model, loss="ga"):
    enc = (
        U.encode_prompt_answers(model.tokenizer, FORGET_PROMPTS)
        if loss == "po"
        else U.encode_texts(model.tokenizer, FORGET_TEXT)
    )
    net = plain_hf_model(model)
    with torch.no_grad():
        return float(U.mean_nll(net, enc.batch(range(len(enc)))))


def test_ga_raises_forget_nll(model):
    before = forget_nll(model)
    U.unlearn(
        model,
        FORGET_TEXT,
        RETAIN_TEXT,
        M.forget_mask(model, FORGET_NODES),
        M.conflict_mask(model, CONFLICT_NODES),
        loss="ga",
        epochs=(2, 2),
        lr=1e-3,
        batch_size=3,
        progress=False,
    )
    assert forget_nll(model) > before + 0.05


def test_po_lowers_refusal_nll(model):
    before = forget_nll(model, "po")
    U.unlearn(
        model,
        FORGET_PROMPTS,
        RETAIN_TEXT,
        M.forget_mask(model, FORGET_NODES),
        M.conflict_mask(model, CONFLICT_NODES),
        loss="po",
        epochs=(2, 2),
        lr=1e-3,
        batch_size=3,
        progress=False,
    )
    assert forget_nll(model, "po") < before - 0.05


def test_po_targets_only_the_answer(model):
    enc = U.encode_prompt_answers(model.tokenizer, ["The capital of France is"], [" Paris"])
    n_prompt = len(model.tokenizer("The capital of France is")["input_ids"])
    assert enc.target[0] == [False] * n_prompt + [True] * (len(enc.ids[0]) - n_prompt)
    assert U.refusal_for(0) == U.REFUSALS[0] and U.refusal_for(len(U.REFUSALS)) == U.REFUSALS[0]


def test_npo_reference_computed_once(model, monkeypatch):
    calls = []
    real = U.reference_nll

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(U, "reference_nll", counting)
    enc = U.encode_texts(model.tokenizer, FORGET_TEXT)
    with torch.no_grad():
        expected = U.sequence_nll(plain_hf_model(model), enc.batch(range(len(enc))))
    result = U.unlearn(
        model,
        FORGET_TEXT,
        RETAIN_TEXT,
        M.forget_mask(model, FORGET_NODES),
        M.conflict_mask(model, CONFLICT_NODES),
        loss="npo",
        epochs=(2, 2),
        lr=1e-3,
        batch_size=3,
        progress=False,
    )
    assert len(calls) == 1
    assert result.ref_nll is not None
    torch.testing.assert_close(result.ref_nll, expected, atol=1e-4, rtol=1e-5)
    # At theta = theta_ref the NPO loss is (2/beta) log 2.
    assert result.history[0]["forget_loss"] == pytest.approx(
        2 / 0.1 * torch.log(torch.tensor(2.0)).item(), rel=1e-4
    )
    # The model moved away from the reference, the reference did not move.
    with torch.no_grad():
        now = U.sequence_nll(plain_hf_model(model), enc.batch(range(len(enc))))
    assert not torch.allclose(now, expected)


def test_masked_adamw_matches_torch_adamw():
    torch.manual_seed(0)
    ours = torch.nn.Parameter(torch.randn(5, 4))
    ref = torch.nn.Parameter(ours.detach().clone())
    opt = U.MaskedAdamW([(ours, torch.ones(5, 4, dtype=torch.bool))], lr=1e-2, weight_decay=0.1)
    topt = torch.optim.AdamW([ref], lr=1e-2, weight_decay=0.1)
    for _ in range(5):
        g = torch.randn(5, 4)
        ours.grad, ref.grad = g.clone(), g.clone()
        opt.step()
        topt.step()
    torch.testing.assert_close(ours.detach(), ref.detach())
    # Masked: the masked entries follow AdamW on those entries alone; the rest never move.
    masked = torch.nn.Parameter(torch.randn(6))
    start = masked.detach().clone()
    mask = torch.tensor([True, False, True, False, False, True])
    opt = U.MaskedAdamW([(masked, mask)], lr=1e-2, weight_decay=0.5)
    masked.grad = torch.ones(6)
    opt.step()
    assert opt.state_numel() == 3
    assert torch.equal(masked.detach()[~mask], start[~mask])
    assert (masked.detach()[mask] != start[mask]).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_masked_adamw_chunks_give_the_same_update(monkeypatch, dtype):
    """``step`` updates parameters in chunks of ``STEP_CHUNK`` elements (its float32 copies
    cost a chunk, not the mask): one element per chunk and one chunk for all are bit-identical,
    for partly masked, whole and half-precision parameters."""
    from clue_mi import plan

    assert plan.STEP_CHUNK == U.STEP_CHUNK  # the plan prices the same chunk

    def run(chunk: int) -> list[torch.Tensor]:
        monkeypatch.setattr(U, "STEP_CHUNK", chunk)
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(shape).to(dtype)) for shape in (64, (8, 8), 32)]
        masks = [torch.rand(64) < 0.5, torch.ones(8, 8, dtype=torch.bool), torch.rand(32) < 0.3]
        opt = U.MaskedAdamW(list(zip(params, masks, strict=True)), lr=1e-2, weight_decay=0.1)
        for _ in range(3):
            for p in params:
                p.grad = torch.randn(p.shape).to(dtype)
            opt.step()
        return [p.detach().clone() for p in params]

    for one, every in zip(run(1), run(1 << 30), strict=True):
        assert torch.equal(one, every)


def test_full_baseline_is_dense(model):
    full = U.baseline_mask(model, "all")
    n_params = sum(p.numel() for p in M.hf_parameters(model).values())
    before = snapshot(model)
    r = U.unlearn_baseline(
        model,
        FORGET_TEXT,
        RETAIN_TEXT,
        full,
        loss="ga",
        epochs=2,
        lr=1e-3,
        batch_size=3,
        progress=False,
    )
    assert r.state_numel[1] == n_params and r.steps[1] == 4
    assert not torch.equal(M.get_parameter(model, "model.norm.weight"), before["model.norm.weight"])


def test_baseline_masks_have_the_requested_size(model):
    size = 3000
    rnd = U.baseline_mask(model, "random", size, seed=1)
    assert M.mask_size(rnd) == size
    assert M.mask_size(U.baseline_mask(model, "random", size, seed=1)) == size
    assert all("layers" in n and "norm" not in n for n in rnd)
    wagle = U.baseline_mask(model, "wagle", size, forget=FORGET_PROMPTS, loss="po")
    assert M.mask_size(wagle) == size
    scores = U.wagle_scores(model, FORGET_PROMPTS, "po")
    kept = torch.cat([scores[n][m] for n, m in wagle.items()])
    dropped = torch.cat([s[~wagle[n]] if n in wagle else s.flatten() for n, s in scores.items()])
    assert kept.min() >= dropped.max()
    nodes = U.baseline_mask(model, "nodes", nodes=["m0", "a1.h1"])
    assert M.mask_size(nodes) == 3 * 256 * 64 + 64 * 16
    with pytest.raises(ValueError):
        U.baseline_mask(model, "random")


def test_export_roundtrip(model, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    U.unlearn(
        model,
        FORGET_TEXT,
        None,
        M.forget_mask(model, ["m0"]),
        None,
        loss="ga",
        epochs=(1, 0),
        lr=1e-3,
        progress=False,
    )
    out = U.export_hf(model, tmp_path / "unlearned")
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    toks = model.tokenizer(FORGET_TEXT[:2], return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(reloaded(toks).logits, model(toks), atol=1e-4, rtol=1e-4)
        assert torch.equal(reloaded(toks).logits, plain_hf_model(model)(toks).logits)
    # The checkpoint carries the original tokenizer, not the bridge's BOS-adding copy.
    tok = AutoTokenizer.from_pretrained(out)
    original = AutoTokenizer.from_pretrained(model.tokenizer.name_or_path)
    assert tok(FORGET_TEXT[0])["input_ids"] == original(FORGET_TEXT[0])["input_ids"]
    with pytest.raises(FileExistsError):
        U.export_hf(model, out)


@pytest.mark.integration
def test_masked_po_forgets_capitals_on_smollm2(smol):
    from clue_mi import tasks

    task = tasks.get("capitals", smol, n=16, n_eval=16, seed=0)
    nodes = ["m14", "m16", "m18", "a18.h3"]
    fm = M.forget_mask(smol, nodes)
    cm = M.conflict_mask(smol, ["m15"])
    ev = task.eval

    def correct_logit() -> tuple[float, float]:
        with torch.no_grad():
            logits = smol(ev.clean_tokens)[:, -1]
        acc = tasks.choice_accuracy(logits, ev.choices, ev.good).float().mean()
        return float(acc), float(logits.gather(1, ev.correct[:, None]).mean())

    saved = snapshot(smol)
    try:
        acc0, logit0 = correct_logit()
        U.unlearn(
            smol,
            U.forget_data(task, "po"),
            None,
            fm,
            cm,
            loss="po",
            epochs=(2, 1),
            lr=3e-4,
            batch_size=8,
            progress=False,
        )
        acc1, logit1 = correct_logit()
        assert acc1 < acc0 or logit1 < logit0 - 1.0
        assert_only_mask_changed(smol, saved, M.union(fm, cm))
    finally:
        with torch.no_grad():
            for n, p in M.hf_parameters(smol).items():
                p.copy_(saved[n])


# ------------------------------------------------------------------ every write lands (#16)


def _adamw_pair(param: torch.nn.Parameter, mask: torch.Tensor, lr: float = 0.1):
    """Our optimizer on ``param`` and torch's AdamW on a contiguous copy of it."""
    ref = torch.nn.Parameter(param.detach().clone().contiguous())
    return (
        U.MaskedAdamW([(param, mask)], lr=lr),
        torch.optim.AdamW([ref], lr=lr, weight_decay=0),
        ref,
    )


@pytest.mark.parametrize("full", [True, False])
@pytest.mark.parametrize("contiguous", [True, False])
def test_update_lands_for_any_layout(full, contiguous):
    """Dense, indexed (contiguous, masked) and boolean-indexed (non-contiguous) paths alike."""
    torch.manual_seed(0)
    data = torch.randn(6, 4) if contiguous else torch.randn(4, 6).t()  # a transposed 6x4 view
    param = torch.nn.Parameter(data)
    assert param.is_contiguous() == contiguous
    mask = torch.ones(6, 4, dtype=torch.bool) if full else torch.rand(6, 4) < 0.5
    start = param.detach().clone()
    opt, topt, ref = _adamw_pair(param, mask)
    for _ in range(3):
        g = torch.randn(6, 4)
        param.grad, ref.grad = g.clone(), g.clone()
        opt.step()
        topt.step()
    now = param.detach()
    torch.testing.assert_close(now[mask], ref.detach()[mask])
    assert (now[mask] != start[mask]).all()
    assert torch.equal(now[~mask], start[~mask])


def test_update_lands_on_a_tied_parameter():
    """One tensor under two names (tied embeddings): both views see one consistent update."""
    torch.manual_seed(0)
    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight  # tied, as HF ties lm_head to embed_tokens
    net = torch.nn.Sequential(emb, head)
    names = {"0.weight": emb.weight, "1.weight": head.weight}
    assert names["0.weight"] is names["1.weight"]
    rows = torch.zeros(10, 4, dtype=torch.bool)
    rows[:3] = True
    cols = torch.zeros(10, 4, dtype=torch.bool)
    cols[:, 0] = True
    start = emb.weight.detach().clone()
    entries = U._entries_from(names, {"0.weight": rows, "1.weight": cols})
    assert len(entries) == 1  # merged: one parameter, the union of both masks
    union = rows | cols
    opt = U.MaskedAdamW(entries, lr=0.1)
    net(torch.arange(10)).sum().backward()
    opt.step()
    now = emb.weight.detach()
    assert torch.equal(now, head.weight.detach())
    assert (now[union] != start[union]).all() and torch.equal(now[~union], start[~union])


@pytest.mark.parametrize("full", [True, False])
def test_step_moves_the_parameter_version(full):
    """The circuit cache trusts ``_version``: a step must move it (``.data`` writes did not)."""
    param = torch.nn.Parameter(torch.randn(5, 3))
    mask = torch.ones(5, 3, dtype=torch.bool) if full else torch.eye(5, 3, dtype=torch.bool)
    opt = U.MaskedAdamW([(param, mask)], lr=0.1)
    param.grad = torch.ones(5, 3)
    before = param._version
    opt.step()
    assert param._version > before


def test_empty_stage_gives_its_steps_to_the_other_stage(model, caplog):
    """CLUE trains as many steps as a baseline whatever its mask sizes (equal step budgets)."""
    fm, empty = M.forget_mask(model, FORGET_NODES), {}
    budget = U.unlearn_baseline(
        model,
        FORGET_TEXT,
        RETAIN_TEXT,
        fm,
        loss="ga",
        epochs=3,
        lr=0.0,
        batch_size=4,
        progress=False,
    )
    with caplog.at_level("WARNING", logger="clue_mi.unlearn"):
        no_conflict = U.unlearn(
            model,
            FORGET_TEXT,
            RETAIN_TEXT,
            fm,
            empty,
            loss="ga",
            epochs=(1, 2),
            lr=0.0,
            batch_size=4,
            progress=False,
        )
    assert "stage 2" in caplog.text and "empty" in caplog.text
    no_forget = U.unlearn(
        model,
        FORGET_TEXT,
        RETAIN_TEXT,
        empty,
        fm,
        loss="ga",
        epochs=(1, 2),
        lr=0.0,
        batch_size=4,
        progress=False,
    )
    total = sum(budget.steps.values())
    assert total == 6
    assert sum(no_conflict.steps.values()) == total == sum(no_forget.steps.values())
    assert no_conflict.steps == {1: 6, 2: 0} and no_forget.steps == {1: 0, 2: 6}
    assert no_conflict.epochs == (3, 0) and no_forget.epochs == (0, 3)
    # an explicit 0-epoch stage is the caller's choice and is not rebalanced
    explicit = U.unlearn(
        model,
        FORGET_TEXT,
        RETAIN_TEXT,
        fm,
        fm,
        loss="ga",
        epochs=(0, 2),
        lr=0.0,
        batch_size=4,
        progress=False,
    )
    assert explicit.steps == {1: 0, 2: 4}


def test_wagle_score_is_the_published_formula(model):
    """WAGLE (Jia et al., 2024; its code's ``snip_advanced``): |(w - grad_r / gamma) * grad_f|."""
    name = "model.layers.1.mlp.up_proj.weight"
    param = M.get_parameter(model, name)
    net, tok = plain_hf_model(model), model.tokenizer
    enc_f = U.encode_prompt_answers(tok, FORGET_PROMPTS)
    enc_r = U.encode_texts(tok, RETAIN_TEXT)
    (g_f,) = torch.autograd.grad(U.po_loss(net, enc_f.batch(range(len(enc_f)))), param)
    (g_r,) = torch.autograd.grad(U.retain_loss(net, enc_r.batch(range(len(enc_r)))), param)
    gamma = 0.05
    want = ((param.detach() - g_r / gamma) * g_f).abs()
    scores = U.wagle_scores(model, FORGET_PROMPTS, "po", retain=RETAIN_TEXT, gamma=gamma)
    torch.testing.assert_close(scores[name], want, rtol=1e-4, atol=1e-9)
    # Without retain text the retain term is zero: the forget saliency |w * grad_f|.
    plain = U.wagle_scores(model, FORGET_PROMPTS, "po")
    torch.testing.assert_close(plain[name], (param.detach() * g_f).abs(), rtol=1e-4, atol=1e-9)
    # The retain term changes which weights are picked.
    size = 2000
    with_retain = U.baseline_mask(model, "wagle", size, forget=FORGET_PROMPTS, retain=RETAIN_TEXT)
    without = U.baseline_mask(model, "wagle", size, forget=FORGET_PROMPTS)
    assert M.mask_size(with_retain) == size
    assert any(
        not torch.equal(m, without.get(n, torch.zeros_like(m))) for n, m in with_retain.items()
    )


def test_a_diverging_run_says_so(model):
    """A non-finite loss is noted (once) and logged; the step budget is kept."""
    with torch.no_grad():
        M.get_parameter(model, "model.norm.weight").fill_(float("inf"))
    result = U.unlearn(
        model, FORGET_TEXT, RETAIN_TEXT, M.forget_mask(model, ["m1"]), None, loss="ga",
        epochs=(1, 0), lr=1e-3, batch_size=3, progress=False,
    )  # fmt: skip
    assert result.steps[1] == 2
    assert [n for n in result.notes if "diverged" in n] == [
        "stage 1 diverged: non-finite loss at step 1"
    ]
