"""The memory planner (``clue_mi.plan``): parameter counts against real modules, the optimizer
and buffer arithmetic against the code that allocates them, and the fit search."""

from __future__ import annotations

import pytest

from clue_mi import plan

# The embedded SmolLM2-135M-Instruct's config.json (as ``models`` caches it), architecture keys.
SMOLLM2 = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
    "attention_bias": False,
    "mlp_bias": False,
    "max_position_embeddings": 8192,
}
SMOLLM2_POOL = 30 * (2 * 576 * 576 + 2 * 576 * 192 + 3 * 576 * 1536)  # q, o, k, v, MLP


def _stage(stages: list[plan.StageEstimate], prefix: str) -> plan.StageEstimate:
    (found,) = [st for st in stages if st.name.startswith(prefix)]
    return found


def _meta_numel(config: dict) -> int:
    """Distinct parameters of the real HF module, built on the meta device (no memory)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    rest = {k: v for k, v in config.items() if k != "model_type"}
    hf_config = AutoConfig.for_model(config["model_type"], **rest)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- counts


def test_smollm2_parameter_count():
    counts = plan.param_counts(SMOLLM2)
    assert counts["total"] == 134_515_008  # = the 272 tensors of the cached safetensors file
    assert counts["embedding"] == 49152 * 576
    assert counts["lm_head"] == 0  # tied
    assert counts["layer_matrices"] == SMOLLM2_POOL == 106_168_320
    assert counts["per_layer"] == 3_540_096
    shape = plan.model_shape(SMOLLM2)
    # The edge graph's buffer widths (BENCHMARKS.md: [b, p, 301, 576] and [b, p, 481, 576]).
    assert (shape.n_senders, shape.n_receivers) == (301, 481)


def test_tiny_model_counts_match_its_parameters(tiny):
    from clue_mi.graph import graph_for
    from clue_mi.masks import matrix_sizes

    config = tiny.original_model.config.to_dict()
    counts = plan.param_counts(config)
    assert counts["total"] == sum(p.numel() for p in tiny.original_model.parameters())
    sizes = matrix_sizes(tiny)  # the pool of masks, per kind and layer
    assert counts["layer_matrices"] == sum(sum(v) for v in sizes.values())
    for kind, per_layer in sizes.items():
        assert counts[kind] == sum(per_layer), kind  # the tiny model has no biases
    graph = graph_for(tiny)
    shape = plan.model_shape(config)
    assert (shape.n_senders, shape.n_receivers) == (graph.n_senders, graph.n_receivers)


def test_7b_totals_and_the_real_modules():
    llama, zephyr = plan.bundled_config("llama-2-7b"), plan.bundled_config("zephyr-7b-beta")
    assert plan.param_counts(llama)["total"] == 6_738_415_616
    assert plan.param_counts(zephyr)["total"] == 7_241_732_096
    assert plan.param_counts(llama)["lm_head"] == 32000 * 4096  # untied
    assert _meta_numel(llama) == 6_738_415_616
    assert _meta_numel(zephyr) == 7_241_732_096


@pytest.mark.parametrize(
    "config",
    [
        # GPT-2 small (fused c_attn, biases, learned positions, tied head): 124,439,808.
        {"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12, "vocab_size": 50257},
        # Qwen2: q/k/v biases, no o bias, tied head.
        {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 160,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
         "vocab_size": 1000, "tie_word_embeddings": True},
        # Llama with every bias and an explicit head_dim.
        {"model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "head_dim": 32,
         "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 1,
         "vocab_size": 500, "attention_bias": True, "mlp_bias": True},
    ],
)  # fmt: skip
def test_counts_match_hf_modules(config):
    assert plan.param_counts(config)["total"] == _meta_numel(config)


def test_gpt2_small_total():
    gpt2 = {"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12, "vocab_size": 50257}
    assert plan.param_counts(gpt2)["total"] == 124_439_808


def test_supported_types_follow_models():
    from clue_mi.models import SUPPORTED_MODEL_TYPES

    assert plan.SUPPORTED_MODEL_TYPES == SUPPORTED_MODEL_TYPES


# ----------------------------------------------------------------------------- stages


def test_optimizer_bytes_scale_with_mask_ratio_exactly():
    def optimizer(prefix: str, **kw) -> int:
        return _stage(plan.stage_memory(SMOLLM2, **kw), prefix).breakdown["optimizer"]

    base = "train: baseline mask"
    quarter, half = optimizer(base, mask_ratio=0.25), optimizer(base, mask_ratio=0.5)
    assert half == 2 * quarter == 12 * (SMOLLM2_POOL // 2)  # 2 x 4 moments + int32 position
    # Stage 2 holds mask_ratio - forget_ratio; with no forget mask it equals the baseline.
    assert optimizer("train stage 2", mask_ratio=0.5, forget_ratio=0.0) == half
    assert optimizer("train stage 1", mask_ratio=0.5, forget_ratio=0.25) == quarter
    # A full pool is dense: no positions. The moments are float32 for bfloat16 weights too.
    assert optimizer(base, mask_ratio=1.0) == 8 * SMOLLM2_POOL
    assert optimizer(base, mask_ratio=0.5, dtype="bfloat16") == half
    assert optimizer("train: all weights") == 8 * 134_515_008
    # Conflict elements in whole matrices need no int32 position.
    whole = optimizer("train stage 2", mask_ratio=0.5, forget_ratio=0.0, whole_share=1.0)
    assert whole == 8 * (SMOLLM2_POOL // 2)
    some = optimizer("train stage 2", mask_ratio=0.5, forget_ratio=0.0, whole_share=0.5)
    assert some == 8 * (SMOLLM2_POOL // 2) + 4 * (SMOLLM2_POOL // 4)


def test_optimizer_bytes_match_masked_adamw(tiny):
    from clue_mi import masks as M
    from clue_mi import unlearn as U

    config = tiny.original_model.config.to_dict()
    pool = plan.param_counts(config)["layer_matrices"]
    size = pool // 10
    mask = U.random_mask(tiny, size, seed=0)
    state = U.MaskedAdamW(U._entries(tiny, mask), lr=1e-5).state_bytes()
    stages = plan.stage_memory(config, mask_ratio=size / pool)
    assert _stage(stages, "train: baseline mask").breakdown["optimizer"] == state
    full = U.MaskedAdamW(U._entries(tiny, M.full_mask(tiny)), lr=1e-5).state_bytes()
    assert _stage(stages, "train: all weights").breakdown["optimizer"] == full


def test_bf16_halves_weight_and_gradient_bytes():
    fp32 = plan.stage_memory(SMOLLM2, dtype="float32", batch=1, seq_len=4)
    bf16 = plan.stage_memory(SMOLLM2, dtype="bfloat16", batch=1, seq_len=4)
    for a, b in zip(fp32, bf16, strict=True):
        assert a.name == b.name
        assert a.breakdown["weights"] == 2 * b.breakdown["weights"] > 0
        if a.note == b.note:  # the same moment of a training step is at the peak
            assert a.breakdown["gradients"] == 2 * b.breakdown["gradients"]
    same = [a for a, b in zip(fp32, bf16, strict=True) if a.note == b.note and a.breakdown[
        "gradients"]]  # fmt: skip
    assert len(same) >= 3
    # Outside the experiment there is no snapshot: the weights are exactly s x N.
    alone = plan.stage_memory(SMOLLM2, dtype="bfloat16", experiment=False)
    assert _stage(alone, "evaluation").breakdown["weights"] == 2 * 134_515_008


def test_bytes_are_the_sum_of_the_breakdown():
    for st in plan.stage_memory(plan.bundled_config("zephyr-7b-beta"), dtype="bf16"):
        assert st.bytes == sum(st.breakdown.values())
        assert set(st.breakdown) == set(plan.PARTS)


def test_attribution_peaks_in_the_runs_or_at_the_contraction():
    """By hand, per token: in the runs the ``[b, p, S, d]`` sender differences, two
    ``[b, p, R, d]`` gradient buffers and one bridge run's graph; at the contraction the
    buffers and einsum's contiguous copies of both operands. The larger one is the peak."""
    shape = plan.model_shape(SMOLLM2)
    layer = plan.bridge_layer_bytes(shape, 4, 15)
    runs = 4 * 576 * (301 + 2 * 481) + 30 * layer + 3 * 4 * 576 + layer
    runs += plan.bridge_transient_bytes(shape)
    contraction = 4 * 576 * (2 * 301 + 3 * 481)
    pairs = (2 * 8 + 2 * 4 + 8) * 301 * 481
    for batch in (1, 8):
        stages = plan.stage_memory(SMOLLM2, attribution_batch=batch, prompt_len=15, device="cpu")
        st = _stage(stages, "attribution")
        masks = 2 * plan.param_counts(SMOLLM2)["layer_matrices"]
        extra = st.bytes - st.breakdown["weights"] - masks - pairs
        assert extra == batch * 15 * max(runs, contraction)
        assert ("runs" in st.note) == (runs >= contraction)


def test_training_layer_formula_by_hand():
    shape = plan.model_shape(SMOLLM2)
    # 2 float32 norm inputs + s (2d + q + 2 repeated kv + q) + 4H + s 4I + s p (the mask), s = 4.
    by_hand = 2 * 4 * 576 + 4 * (1152 + 576 + 1152 + 576) + 4 * 9 + 4 * 4 * 1536 + 4 * 32
    assert plan.train_layer_bytes(shape, 4, 32) == by_hand == 43_172
    assert plan.train_layer_bytes(shape, 4, 32, "eager") == by_hand + 4 * 9 * 32


def test_stage_two_holds_both_batches():
    """Long sequences: the peak is at the start of backward, with every batch's graph."""

    def train(prefix: str, **kw) -> plan.StageEstimate:
        return _stage(plan.stage_memory(SMOLLM2, seq_len=512, **kw), prefix)

    assert "backward start" in train("train stage 2").note
    assert train("train stage 2").breakdown["gradients"] == 0  # none allocated yet
    acts = {k: train(k).breakdown["activations"] for k in ("train stage 1", "train stage 2")}
    assert acts["train stage 2"] > acts["train stage 1"]
    assert train("train stage 2", retain=False).breakdown["activations"] == acts["train stage 1"]
    assert (
        train("train stage 1", checkpointing=True).breakdown["activations"] < acts["train stage 1"]
    )


def test_short_sequences_peak_after_the_activations_are_freed():
    """Activations are freed while the gradients are allocated, so the two are not summed. The
    default run's shapes: every gradient and the forget batch's graph, which waits while the
    retain graph runs backward first; one token: every gradient and one chunk of the step's
    float32 copies."""
    grads = 4 * plan.param_counts(SMOLLM2)["layer_matrices"]
    shape = plan.model_shape(SMOLLM2)

    def stage2(batch: int, seq_len: int) -> plan.StageEstimate:
        stages = plan.stage_memory(SMOLLM2, batch=batch, seq_len=seq_len, experiment=False)
        return _stage(stages, "train stage 2")

    st = stage2(8, 16)
    assert "backward end" in st.note and st.breakdown["gradients"] == grads
    forget_graph = 8 * 16 * (30 * plan.train_layer_bytes(shape, 4, 16) + 4 * 576 + 4 * 49152)
    assert st.breakdown["activations"] == forget_graph + 8 * 16 * plan.train_layer_bytes(
        shape, 4, 16
    )
    st = stage2(1, 1)
    assert "optimizer step" in st.note and st.breakdown["activations"] == 0
    assert st.breakdown["gradients"] == grads
    assert st.breakdown["buffers"] - 2 == 8 * (plan.STEP_CHUNK + 576 * 1536)  # 2: padding


def test_bad_inputs():
    with pytest.raises(ValueError, match="forget_ratio"):
        plan.stage_memory(SMOLLM2, mask_ratio=0.1, forget_ratio=0.2)
    with pytest.raises(ValueError, match="dtype"):
        plan.stage_memory(SMOLLM2, dtype="int8")
    with pytest.raises(ValueError, match="not supported"):
        plan.param_counts({"model_type": "bert", "hidden_size": 8})
    with pytest.raises(ValueError, match="bundled"):
        plan.bundled_config("nope")


# ----------------------------------------------------------------------------- fitting


def _peak(batch: int, seq_len: int, config=SMOLLM2, stages=("train",), **kw) -> int:
    found = plan.stage_memory(config, batch=batch, seq_len=seq_len, **kw)
    return plan.peak([st for st in found if st.name.startswith(stages)]).bytes


@pytest.mark.parametrize("fixed", ["seq_len", "batch", "neither"])
def test_largest_fit_is_within_budget_and_the_next_step_is_not(fixed):
    budget = 6 * plan.GB
    given = {"seq_len": {"seq_len": 64}, "batch": {"batch": 8}, "neither": {}}[fixed]
    fit = plan.largest_fit(SMOLLM2, budget, stages=("train",), **given)
    assert fit is not None
    assert fit.peak_bytes == _peak(fit.batch, fit.seq_len) <= budget
    if fixed != "batch":
        assert fit.batch < 4096 and _peak(fit.batch + 1, fit.seq_len) > budget
    if fixed != "seq_len":
        assert fit.seq_len < 8192 and _peak(given.get("batch", 1), fit.seq_len + 1) > budget
    assert fit.stage.startswith("train")


def test_nothing_fits_when_a_fixed_cost_does_not():
    llama = plan.bundled_config("llama-2-7b")
    assert plan.largest_fit(llama, 8 * plan.GB, dtype="bf16") is None  # 13.5 GB of weights
    # Dense AdamW over every weight: weights, gradients and float32 moments, 12 bytes per
    # parameter, exceed 64 GB at any length; so does WAGLE's 2 x 3 bytes per layer weight + weights.
    full = _stage(plan.stage_memory(llama, dtype="bf16", batch=1, seq_len=1), "train: all")
    assert full.bytes > 12 * 6_738_415_616 > 64 * plan.GB
    wagle = _stage(plan.stage_memory(llama, dtype="bf16", batch=1, seq_len=1), "mask: WAGLE")
    assert wagle.bytes > 13.4 * plan.GB + 6 * plan.param_counts(llama)["layer_matrices"]
    assert plan.largest_fit(llama, 64 * plan.GB, dtype="bf16", prompt_len=32) is None
    fit = plan.largest_fit(
        llama, 64 * plan.GB, dtype="bf16", seq_len=512, prompt_len=32, attribution_batch=4,
        baselines=False, mask_ratio=0.4,
    )  # fmt: skip
    assert fit is not None and fit.peak_bytes <= 64 * plan.GB


def test_an_accelerator_keeps_snapshot_masks_and_references_in_host_memory():
    """The same stages on the CPU and on an accelerator: the snapshot, the masks, the reference
    runs and WAGLE's top-k move from the device total to ``host``, nothing else changes."""
    kw = {"dtype": "bf16", "seq_len": 64, "prompt_len": 32}
    zephyr = plan.bundled_config("zephyr-7b-beta")
    cpu, gpu = plan.stage_memory(zephyr, device="cpu", **kw), plan.stage_memory(zephyr, **kw)
    counts = plan.param_counts(zephyr)
    snapshot_and_masks = 2 * counts["total"] + 2 * counts["layer_matrices"]
    for c, g in zip(cpu, gpu, strict=True):
        assert c.host == 0 and g.host > 0 and g.bytes < c.bytes
        if c.name.startswith(("train stage", "evaluation", "attribution")):
            assert c.bytes - g.bytes == g.host == snapshot_and_masks
    faith = _stage(gpu, "faithfulness")
    refs = 4 * 32 * 32 * 4096 * (1057 + 1569)  # 32 prompts x 32 tokens x d x (S + R)
    assert faith.host == refs
    assert _stage(cpu, "faithfulness").bytes - faith.bytes == refs - refs // 2  # batch 16 of 32


def test_format_plan():
    stages = plan.stage_memory(plan.bundled_config("llama-2-7b"), dtype="bfloat16")
    text = plan.format_plan(stages, memory_gb=80, title="Llama-2-7B, bf16")
    assert "| stage | weights | grads | optimizer | activations | buffers | total GB |" in text
    assert sum(line.startswith("| train") for line in text.splitlines()) == 4
    top = plan.peak(stages)
    assert f"Peak: {top.bytes / plan.GB:.2f} GB ({top.name})" in text
    assert ("does NOT fit" in text) == (top.bytes > 80 * plan.GB)
    assert "fits in --memory 1000 GB" in plan.format_plan(stages, memory_gb=1000)


def _outputs(text: str) -> list[str]:
    """The tables of several ``clue-mi plan`` calls printed one after the other."""
    return ["### " + part for part in text.split("### ")[1:]]


def _table_row(text: str, stage: str) -> dict[str, float]:
    row = next(line for line in text.splitlines() if line.startswith(f"| {stage}"))
    cells = [c.strip(" *") for c in row.strip("|").split("|")][1:]
    return dict(zip((*plan.PARTS, "total"), map(float, cells), strict=False))


def test_plan_command_prints_every_stage_and_a_fit(capsys, monkeypatch):
    from clue_mi.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # shipped configs never reach for the hub
    assert main(["plan", "--model", "zephyr-7b-beta", "--dtype", "bfloat16"]) == 0
    text = capsys.readouterr().out
    assert "zephyr-7b-beta (shipped config), bfloat16" in text
    for name in ("attribution", "faithfulness", "train stage 1", "train stage 2", "evaluation"):
        assert f"| {name}" in text
    config = plan.bundled_config("zephyr-7b-beta")
    want = plan.stage_memory(config, dtype="bfloat16", batch=8, seq_len=512, mask_ratio=0.58,
                             forget_ratio=0.01, attribution_batch=16, prompt_len=64)  # fmt: skip
    assert f"Peak: {plan.peak(want).bytes / plan.GB:.2f} GB" in text  # the CLI is the API
    assert "| total GB | host GB |" in text  # cuda by default: the snapshot etc. on the host
    assert (
        main(["plan", "--model", "zephyr-7b-beta", "--dtype", "bfloat16", "--device", "cpu"]) == 0
    )
    text = capsys.readouterr().out
    assert "bfloat16 on cpu" in text and "host GB" not in text
    want = plan.stage_memory(config, dtype="bfloat16", batch=8, seq_len=512, mask_ratio=0.58,
                             forget_ratio=0.01, attribution_batch=16, prompt_len=64,
                             device="cpu")  # fmt: skip
    assert f"Peak: {plan.peak(want).bytes / plan.GB:.2f} GB" in text
    # Conflict elements in whole matrices need no int32 positions: 4 bytes each fewer.
    argv = ["plan", "--model", "zephyr-7b-beta", "--dtype", "bfloat16", "--methods", "clue"]
    for share in ("0", "0.8"):
        assert main([*argv, "--whole-share", share]) == 0
    partial, whole = (_table_row(t, "train stage 2") for t in _outputs(capsys.readouterr().out))
    conflict = round(0.57 * plan.param_counts(config)["layer_matrices"])
    assert partial["optimizer"] - whole["optimizer"] == pytest.approx(
        4 * 0.8 * conflict / 1e9, abs=0.01
    )
    # A budget it misses: what fits at this length and at this batch, as the API finds it.
    assert main(["plan", "--model", "tiny-llama", "--seq-len", "256", "--memory", "2"]) == 0
    text = capsys.readouterr().out
    assert "does NOT fit in --memory 2 GB" in text
    tiny = plan.resolve_config("tiny-llama")[0]
    common = dict(mask_ratio=0.58, forget_ratio=0.01, attribution_batch=16, prompt_len=64)
    found = [
        (plan.largest_fit(tiny, 2 * plan.GB, seq_len=256, **common), "length"),
        (plan.largest_fit(tiny, 2 * plan.GB, batch=8, **common), "batch"),
    ]
    assert any(fit is not None for fit, _ in found)
    for fit, what in found:
        if fit is not None:
            assert (
                f"Fits at this {what}: --train-batch-size {fit.batch} --seq-len {fit.seq_len}"
                in text
            )
            assert fit.peak_bytes <= 2 * plan.GB


def test_plan_command_bad_input_is_one_line(capsys, monkeypatch, tmp_path):
    from clue_mi.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for argv, fragment in [
        (["--model", "no-such-org/no-such-model"], "the hub is off"),
        (["--model", str(tmp_path)], "neither a model folder"),
        (["--mask-ratio", "1.5"], "mask_ratio (--mask-ratio)"),
        (["--forget-ratio", "0.9", "--mask-ratio", "0.5"], "--forget-ratio"),
        (["--memory", "0"], "memory (--memory)"),
        (["--seq-len", "0"], "seq_len (--seq-len)"),
        (["--model", "tiny-llama", "--seq-len", "4096"], "256 positions"),
        (["--device", "tpu"], "--device tpu: plan for cpu, cuda"),
        (["--whole-share", "2"], "whole_share (--whole-share)"),
    ]:
        assert main(["plan", *argv]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("clue-mi plan: error:") and fragment in err and "\n" not in err


def test_resolve_config_reads_folders_files_and_shipped_names(tmp_path):
    config = plan.bundled_config("llama-2-7b")
    (tmp_path / "config.json").write_text(__import__("json").dumps(config))
    assert plan.resolve_config(str(tmp_path))[0] == config
    assert plan.resolve_config(str(tmp_path / "config.json"))[0] == config
    assert plan.resolve_config(None)[0]["hidden_size"] == 576  # the embedded SmolLM2
    assert plan.param_counts(plan.resolve_config("smollm2")[0])["total"] == 134_515_008


def test_plan_against_a_measured_peak_on_the_tiny_model(capsys, monkeypatch):
    """``benchmarks/plan_vs_measured.py --quick``: every stage measured and predicted within 20%
    on tiny-llama (measured 0.83 to 1.12; BENCHMARKS.md has the embedded model's numbers)."""
    import runpy
    import sys

    from run_helpers import ROOT

    monkeypatch.setattr(sys, "argv", ["plan_vs_measured.py", "--quick"])
    runpy.run_path(str(ROOT / "benchmarks" / "plan_vs_measured.py"), run_name="__main__")
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    # | setting | stage (shape) | predicted | measured | ratio |, after the header row
    ratios = {r.split(" | ")[1].split(" (")[0]: float(r.rstrip(" |").split(" | ")[-1])
              for r in rows[1:]}  # fmt: skip
    assert len(ratios) == len(plan.stage_memory(plan.resolve_config("tiny-llama")[0]))
    assert all(0.8 <= ratio <= 1.2 for ratio in ratios.values()), ratios
