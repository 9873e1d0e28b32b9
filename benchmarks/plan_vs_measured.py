"""Predicted (``clue_mi.plan``) against measured peak memory of every pipeline stage, on the CPU.

Usage::

    python benchmarks/plan_vs_measured.py            # the embedded model (a few minutes)
    python benchmarks/plan_vs_measured.py --quick    # tiny-llama, run's shapes only (the tests)
    python benchmarks/plan_vs_measured.py --dtype bfloat16 --setting run   # bf16 weights

Measured: the weights plus the peak of the CPU allocator's running total while the stage runs
(the torch profiler's memory events, ``Total Allocated``), so allocator slack and the Python
process are not counted, as the plan does not count them. What exists before a stage starts
(weights, CLUE's masks) is outside that total, so the plan is asked with ``experiment=False``;
what the stage builds (a baseline's mask, WAGLE's scores) is inside it.

Two settings:

* **run**: the shapes ``clue-mi run`` uses (tasks' prompts, training batch 8, evaluation batch
  32), where the weights dominate every stage of the embedded model;
* **long** (not with ``--quick``): the same code on long sequences (texts repeated to about 256
  tokens, prompts prefixed to 64 or 128), where activations and buffers dominate, so the
  activation formulas are what is checked.

Each stage is given to the plan with the shapes it really ran (the longest padded batch seen by
a forward hook), so a ratio measures the formulas, not a guess of the data's lengths. Masks are
random (``unlearn.random_mask``) at CLUE's default-run sizes: what the optimizer keeps depends on
the number of masked elements and on whether matrices are whole, not on which elements.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
from collections.abc import Callable
from typing import Any

import torch
from torch.nn.modules.module import register_module_forward_hook
from torch.profiler import ProfilerActivity, profile

from clue_mi import plan
from clue_mi import unlearn as U
from clue_mi.attribution import attribute_both, clear_reference_runs, faithfulness
from clue_mi.evaluate import evaluate_model, mia
from clue_mi.graph import graph_for, select_circuit
from clue_mi.models import load_model, plain_hf_model
from clue_mi.pipeline import PipelineConfig, load_tasks

FORGET_RATIO, MASK_RATIO = 0.009, 0.746
"""The default run's forget-mask and unlearned-parameter ratios (README)."""


def allocated_peak(work: Callable[[], Any]) -> int:
    """Peak bytes the CPU allocator held for tensors allocated during ``work`` (the profiler's
    running ``Total Allocated``, which starts at 0 and ignores blocks allocated before)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        work()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    totals = [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"]
    return max(totals, default=0)


class Shapes:
    """Largest ``(batch, length)`` an HF causal LM's forward unembedded at every position
    while active (each stage builds its own plain HF model, so the hook is global); those
    forwards set the peak of training and evaluation, not the last-position-only ones."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int]] = []
        self.handle = register_module_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output) -> None:
        if not type(module).__name__.endswith("ForCausalLM"):
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        if isinstance(ids, torch.Tensor) and ids.dim() == 2 and output.logits.shape[1] > 1:
            self.seen.append((int(ids.shape[0]), int(ids.shape[1])))

    def largest(self) -> tuple[int, int]:
        self.handle.remove()
        return max(self.seen, key=lambda bp: bp[0] * bp[1])


def repeat_to(texts: list[str], tokenizer, length: int) -> list[str]:
    """Each text repeated as often as the longest one fits in about ``length`` tokens."""
    longest = max(len(tokenizer(t)["input_ids"]) for t in texts)
    return [" ".join([t] * max(1, length // longest)) for t in texts]


def longer_prompts(prompts, length: int):
    """The same prompts with a filler prefix, so that every one is ``length`` tokens long."""
    extra = length - prompts.clean_tokens.shape[1]
    prefix = prompts.clean_tokens[:, :1].repeat(1, extra)
    return dataclasses.replace(
        prompts,
        clean_tokens=torch.cat([prefix, prompts.clean_tokens], 1),
        corrupted_tokens=torch.cat([prefix, prompts.corrupted_tokens], 1),
    )


def measure(model, name: str, long: bool, dtype: str) -> list[tuple[str, str, int, int]]:
    """``(setting, stage, predicted, measured)`` for every stage measured in one setting."""
    cfg = PipelineConfig(retain=("ioi",), n=16, n_eval=32)
    tasks = load_tasks(model, cfg)
    forget = U.forget_data(tasks["capitals"], "ga")[:16]
    retain = U.retain_data([tasks["ioi"]])[:16]
    prompts = tasks["ioi"].prompts
    held_out = tasks["ioi"].eval.head(32)
    if long:
        forget, retain = (repeat_to(t, model.tokenizer, 256) for t in (forget, retain))
        prompts, held_out = longer_prompts(prompts.head(8), 128), longer_prompts(held_out, 64)
    config = plan.resolve_config(name)[0]
    weights = sum(p.numel() * p.element_size() for p in model.original_model.parameters())
    pool = sum(p.numel() for _, p in U._pool(model))
    f_mask = U.random_mask(model, round(FORGET_RATIO * pool), seed=1)
    c_mask = U.random_mask(model, round((MASK_RATIO - FORGET_RATIO) * pool), seed=2)
    net = plain_hf_model(model)
    setting = "long" if long else "run"
    rows = []

    def train(mask, lam, forget_only=False, checkpointing=False):
        def work():
            U.train_stages(
                model,
                [U.Stage(mask, "ga", forget, 1, lam)],
                None if forget_only else retain,
                lr=0.0,
                batch_size=8,
                progress=False,
                checkpointing=checkpointing,
            )

        return work  # fmt: skip

    def baseline(kind):
        def work():
            m = U.baseline_mask(model, kind, size=round(MASK_RATIO * pool), forget=forget,
                                retain=retain, loss="ga")  # fmt: skip
            if kind != "wagle":
                U.unlearn_baseline(model, forget, retain, m, loss="ga", epochs=1, lr=0.0,
                                   batch_size=8, progress=False)  # fmt: skip

        return work

    graph = graph_for(model)
    circuit_scores = attribute_both(model, held_out, "eap", 1, len(held_out))
    circuit = select_circuit(graph, circuit_scores["noising"], sparsity=0.95)

    def faith():
        clear_reference_runs()
        faithfulness(model, held_out, circuit, batch_size=16)
        clear_reference_runs()

    def evaluation():
        if long:
            # Three batches of 32 per side, as a real forget set has: the MIA holds the previous
            # batch's log-probs while it computes the next.
            mia(net, forget * 6, retain * 6, batch_size=32, tokenizer=model.tokenizer)
        else:
            evaluate_model(model, tasks["capitals"], [tasks["ioi"]], quick=True)

    # (stage name prefix in the plan, work, runs through a plain HF model, plan options)
    stages: list[tuple[str, Callable[[], Any], bool, dict[str, Any]]] = [
        ("attribution", lambda: attribute_both(model, prompts, "eap", 1, len(prompts)), False,
         {"attribution_batch": len(prompts), "prompt_len": prompts.clean_tokens.shape[1]}),
        ("faithfulness", faith, False, {"attribution_batch": 16, "n_prompts": len(held_out),
                                        "prompt_len": held_out.clean_tokens.shape[1]}),
        ("train stage 1", train(f_mask, 0.0, forget_only=True), True, {}),
        ("train stage 2", train(c_mask, 1.0), True, {}),
        ("mask: WAGLE", baseline("wagle"), True, {}),
        ("train: baseline mask", baseline("random"), True, {}),
        ("train: all weights", baseline("all"), True, {}),
        ("evaluation", evaluation, True, {}),
    ]  # fmt: skip
    if long:
        stages.insert(4, ("train stage 2", train(c_mask, 1.0, checkpointing=True), True,
                          {"checkpointing": True}))  # fmt: skip
    for key, work, hf, kw in stages:
        shapes = Shapes() if hf else None
        got = weights + allocated_peak(work)
        if shapes is not None:
            b, p = shapes.largest()
            kw = kw | ({"eval_batch": b, "eval_seq_len": p} if key == "evaluation"
                       else {"batch": b, "seq_len": p})  # fmt: skip
        estimate = next(
            st for st in plan.stage_memory(
                config, mask_ratio=MASK_RATIO, forget_ratio=FORGET_RATIO, experiment=False,
                device="cpu", dtype=dtype, **kw,
            ) if st.name.startswith(key)
        )  # fmt: skip
        shape = ", ".join(f"{k} {v}" for k, v in kw.items())
        rows.append((setting, f"{estimate.name} ({shape})", estimate.bytes, got))
        print(f"{setting:4s} {key:22s} predicted {estimate.bytes / 1e9:7.3f} GB measured "
              f"{got / 1e9:7.3f} GB ratio {estimate.bytes / got:5.2f}", flush=True)  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny-llama, run's shapes only")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--setting", choices=["run", "long", "both"], default="both")
    args = ap.parse_args()
    name = "tiny-llama" if args.quick else None
    model = load_model(name, device="cpu", dtype=args.dtype)
    settings = (
        ["run"]
        if args.quick
        else {"run": ["run"], "long": ["long"]}.get(args.setting, ["run", "long"])
    )
    rows = [row for s in settings for row in measure(model, name, s == "long", args.dtype)]
    print(f"\nmodel {name or 'smollm2'}, {args.dtype}, masks at forget {FORGET_RATIO} / unlearned "
          f"{MASK_RATIO}")  # fmt: skip
    print("| setting | stage (shape run) | predicted GB | measured GB | predicted / measured |")
    print("|---|---|---|---|---|")
    for setting, stage, predicted, got in rows:
        print(f"| {setting} | {stage} | {predicted / 1e9:.3f} | {got / 1e9:.3f} | "
              f"{predicted / got:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
