"""Half-precision weights (``load_model(dtype=...)``, ``--dtype``): attribution accumulates in
float32, masked training leaves every other weight bit-identical, export keeps the dtype."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from clue_mi import masks as M
from clue_mi import tasks
from clue_mi import unlearn as U
from clue_mi.attribution import attribute
from clue_mi.models import load_model, torch_dtype

FORGET = ["The capital of France is Paris.", "The capital of Spain is Madrid."]
RETAIN = ["When Mary and John went to the store, John gave a drink to Mary."]
# Measured (tiny-llama, capitals, 8 prompts, EAP): the largest |bf16 - float32| edge score is
# 1.5-1.8% of the largest |score|, Pearson 0.99985-0.99989. Tolerances sit a margin above.
SCORE_TOLERANCE = 0.05  # of the largest |float32 score|
MIN_PEARSON = 0.999


@pytest.fixture(scope="module")
def tiny_bf16():
    return load_model("tiny-llama", device="cpu", dtype="bfloat16")


def test_dtype_names():
    assert torch_dtype("bfloat16") is torch.bfloat16 and torch_dtype(torch.float16) is torch.float16
    with pytest.raises(ValueError, match="--dtype"):
        torch_dtype("int8")


@pytest.mark.parametrize("direction", ["noising", "denoising"])
def test_bf16_edge_scores_follow_float32(tiny, tiny_bf16, direction):
    assert next(tiny_bf16.original_model.parameters()).dtype == torch.bfloat16
    task = tasks.get("capitals", tiny, n=8, n_eval=8)
    s32 = attribute(tiny, task.prompts, direction, "eap", batch_size=8, progress=False)
    s16 = attribute(tiny_bf16, task.prompts, direction, "eap", batch_size=8, progress=False)
    assert s16.dtype == s32.dtype and torch.isfinite(s16).all()
    assert (s16 - s32).abs().max() <= SCORE_TOLERANCE * s32.abs().max()
    pearson = torch.corrcoef(torch.stack([s32.flatten(), s16.flatten()]))[0, 1]
    assert pearson >= MIN_PEARSON
    assert not torch.equal(s16, s32)  # it really ran in bfloat16


def test_bf16_training_keeps_other_weights_and_float32_state(tiny_bf16, tmp_path):
    params = M.hf_parameters(tiny_bf16)
    start = {n: p.detach().clone() for n, p in params.items()}
    mask = M.mask_from_nodes(tiny_bf16, ["a0.h1", "m1"])
    U.unlearn(
        tiny_bf16, FORGET, RETAIN, mask, mask, loss="ga", epochs=(1, 1), lr=1e-2, batch_size=2,
        progress=False,
    )  # fmt: skip
    for name, before in start.items():
        after = params[name].detach()
        assert after.dtype == torch.bfloat16, name
        outside = ~mask[name] if name in mask else torch.ones_like(before, dtype=torch.bool)
        assert torch.equal(after[outside], before[outside]), name  # bit-identical
    assert any(not torch.equal(params[n].detach(), start[n]) for n in mask)
    # The masked optimizer's moments are float32 for masked elements only.
    name = next(n for n in mask if 0 < mask[n].sum() < mask[n].numel())
    opt = U.MaskedAdamW([(params[name], mask[name])], lr=1e-3)
    assert opt.state_numel() == int(mask[name].sum())
    assert {g["exp_avg"].dtype for g in opt.groups} == {torch.float32}
    # Export round trip: a bfloat16 checkpoint that reloads to the very same weights.
    out = U.export_hf(tiny_bf16, tmp_path / "model")
    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    state = dict(reloaded.named_parameters())
    for name, param in params.items():
        assert state[name].dtype == torch.bfloat16 and torch.equal(state[name], param), name


def test_gradient_checkpointing_gives_the_same_updates(restored_tiny, monkeypatch):
    import transformers.modeling_utils as hf_utils

    calls = []
    real = hf_utils.checkpoint
    monkeypatch.setattr(hf_utils, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    params = M.hf_parameters(restored_tiny)
    start = {n: p.detach().clone() for n, p in params.items()}
    mask = M.mask_from_nodes(restored_tiny, ["a0.h1", "m1", "a1.h0"])
    after = []
    for checkpointing in (False, True):
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(start[n])
        result = U.unlearn(
            restored_tiny, FORGET, RETAIN, mask, mask, loss="ga", epochs=(1, 1), lr=1e-2,
            batch_size=2, progress=False, checkpointing=checkpointing,
        )  # fmt: skip
        after.append(({n: p.detach().clone() for n, p in params.items()}, result.losses()))
    (plain, losses), (checkpointed, losses_ckpt) = after
    # One step per stage (2 sentences, batch 2); stage 2 also runs a retain batch: 3 forwards,
    # each through every checkpointed layer.
    assert len(losses) == 2 and len(calls) == 3 * restored_tiny.cfg.n_layers
    assert losses_ckpt == pytest.approx(losses, rel=1e-5)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(plain[n], start[n]) for n in mask)
    assert not restored_tiny.original_model.training  # handed back in eval mode


def test_run_with_the_options_of_the_paper_setting(tmp_path):
    """``clue-mi run`` with --dtype, --gradient-checkpointing, --gu-tasks and --data: each is
    recorded and used (bf16 weights exported, the named GU tasks, the local data set)."""
    import json
    from pathlib import Path

    from clue_mi.cli import main

    fixture = Path(__file__).parent / "fixtures" / "sst2.jsonl"
    out = tmp_path / "run"
    argv = ["run", "--quick", "--model", "tiny-llama", "--dtype", "bfloat16",
            "--gradient-checkpointing", "--gu-tasks", "clue_colors,clue_sizes",
            "--methods", "clue", "--retain", "ioi,sst2", "--data", f"sst2={fixture}",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["dtype"], cfg["checkpointing"]) == ("bfloat16", True)
    assert cfg["pipeline"]["data"] == {"sst2": str(fixture)}
    row = json.loads((out / "results" / "clue.json").read_text())
    assert set(row["gu_tasks"]) == {"clue_colors", "clue_sizes"}
    assert set(row["eval_sizes"]["ru"]) == {"ioi", "sst2"} and row["steps"] > 0
    exported = json.loads((out / "model" / "config.json").read_text())
    assert exported.get("dtype", exported.get("torch_dtype")) == "bfloat16"


def test_last_position_is_contiguous_in_half_precision_only():
    """bf16: a contiguous [b, 1, d] (one mm, no [b, d, V] copy of W_U); float32: the slice as
    it was, so float32 scores stay bit-identical to the reported runs."""
    from clue_mi.attribution import _last_position

    act = torch.randn(4, 7, 8)
    assert _last_position(act, None).data_ptr() == act[:, -1:].data_ptr()
    half = _last_position(act.bfloat16(), None)
    assert half.is_contiguous() and half.shape == (4, 1, 8)
    assert torch.equal(half, act.bfloat16()[:, -1:])
