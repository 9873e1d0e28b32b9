"""Predicted (``clue_mi.plan``) against measured peak memory of two stages, on the CPU.

Usage::

    python benchmarks/plan_vs_measured.py            # the embedded model (about a minute)
    python benchmarks/plan_vs_measured.py --quick    # tiny-llama (seconds; the tests)

Measured: the weights plus the peak of the tensor memory allocated during the stage, from the
torch profiler's CPU memory events (each op's own allocations, each free), so allocator slack
and the Python process are not counted, as the plan does not count them. Stages: one step of
``train: all weights`` (a forget and a retain batch of 8, dense AdamW) and ``attribution`` (both
directions of one task's prompts, one batch). Prints predicted, measured and their ratio.
"""

from __future__ import annotations

import argparse

from torch.profiler import ProfilerActivity, profile

from clue_mi import plan
from clue_mi import unlearn as U
from clue_mi.attribution import attribute_both
from clue_mi.models import load_model
from clue_mi.pipeline import PipelineConfig, load_tasks


def measured_peak(model, work) -> int:
    """Bytes: the weights plus the highest running sum of allocations minus frees in ``work``."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        work()
    events = sorted(
        (
            e.time_range.start,
            e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage,
        )
        for e in prof.events()
    )
    running = top = 0
    for _, change in events:
        running += change
        top = max(top, running)
    return sum(p.numel() * p.element_size() for p in model.original_model.parameters()) + top


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny-llama instead of the embedded model")
    args = ap.parse_args()
    name = "tiny-llama" if args.quick else None
    model = load_model(name, device="cpu")
    cfg = PipelineConfig(retain=("ioi",), n=16, n_eval=8)
    tasks = load_tasks(model, cfg)
    forget = U.forget_data(tasks["capitals"], "ga")[:8]
    retain = U.retain_data([tasks["ioi"]])[:8]
    tok = model.tokenizer
    seq_len = max(len(tok(t)["input_ids"]) for t in forget + retain)
    prompts = tasks["ioi"].prompts
    full = U.baseline_mask(model, "all")
    measured = {
        "train: all weights": measured_peak(model, lambda: U.unlearn_baseline(
            model, forget, retain, full, loss="ga", epochs=1, lr=0.0, batch_size=8,
            progress=False)),
        "attribution": measured_peak(model, lambda: attribute_both(
            model, prompts, "eap", 1, len(prompts))),
    }  # fmt: skip
    config = plan.resolve_config(name)[0]
    stages = plan.stage_memory(
        config, batch=8, seq_len=seq_len, attribution_batch=len(prompts),
        prompt_len=prompts.clean_tokens.shape[1], mask_ratio=1.0, forget_ratio=0.0,
        experiment=False,
    )  # fmt: skip
    print(f"model {name or 'smollm2'}; training batch 8 x {seq_len}; attribution batch "
          f"{len(prompts)} x {prompts.clean_tokens.shape[1]}")  # fmt: skip
    print("| stage | predicted GB | measured GB | predicted / measured |")
    print("|---|---|---|---|")
    for st in stages:
        key = next((k for k in measured if st.name.startswith(k)), None)
        if key is not None:
            got = measured[key]
            print(f"| {st.name} | {st.bytes / 1e9:.3f} | {got / 1e9:.3f} | {st.bytes / got:.2f} |")


if __name__ == "__main__":
    main()
