"""Masked vs full fine-tuning on the embedded SmolLM2-135M: optimizer memory and step time.

The masked run updates a CLUE-sized mask (random attention heads with their q / k / v / o
slices, plus a few whole MLPs); the full run updates every weight with a dense AdamW state.
Both run the same PO loss through the same trainer, batch 8. It also times one masked update
of a 576 x 1536 MLP matrix (half its elements masked) read and written by boolean indexing
against MaskedAdamW's int32 gather/scatter.

    python benchmarks/bench_unlearn.py [--heads 16 --mlps 2 --steps 6]
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from clue_mi import load_model, tasks
from clue_mi import masks as M
from clue_mi import unlearn as U


def clue_sized_nodes(model, n_heads: int, n_mlps: int, seed: int) -> list[str]:
    geo = M.geometry(model)
    rng = random.Random(seed)
    group = geo.n_heads // geo.n_kv_heads
    heads = rng.sample(
        [(layer, h) for layer in range(geo.n_layers) for h in range(geo.n_heads)], n_heads
    )
    nodes = set()
    for layer, h in heads:
        nodes |= {
            f"a{layer}.h{h}",
            f"a{layer}.h{h}.q",
            f"a{layer}.g{h // group}.k",
            f"a{layer}.g{h // group}.v",
        }
    nodes |= {f"m{layer}" for layer in rng.sample(range(geo.n_layers), n_mlps)}
    return sorted(nodes)


def timed_run(model, forget, mask, steps: int, batch_size: int) -> tuple[float, int, int]:
    """Mean seconds per step (first step excluded: warm-up), optimizer bytes and elements."""
    saved = {n: p.detach().clone() for n, p in M.hf_parameters(model).items()}
    stamps: list[float] = []
    real_step = U.MaskedAdamW.step

    def stamped(self):
        real_step(self)
        stamps.append(time.perf_counter())

    U.MaskedAdamW.step = stamped  # type: ignore[method-assign]
    try:
        data = forget[: steps * batch_size]
        start = time.perf_counter()
        result = U.unlearn_baseline(
            model,
            data,
            None,
            mask,
            loss="po",
            epochs=1,
            lr=1e-5,
            batch_size=batch_size,
            progress=False,
        )
    finally:
        U.MaskedAdamW.step = real_step  # type: ignore[method-assign]
        with torch.no_grad():
            for n, p in M.hf_parameters(model).items():
                p.copy_(saved[n])
    gaps = [b - a for a, b in zip([start, *stamps[:-1]], stamps, strict=True)][1:]
    return sum(gaps) / len(gaps), result.state_bytes[1], result.state_numel[1]


def masked_update_ms(shape=(576, 1536), repeats: int = 50) -> tuple[float, float]:
    """Milliseconds per read-modify-write of the masked half of one matrix: boolean indexing
    (``w[mask]``, ``w[mask] = v``) against int32 positions (``index_select`` / ``index_put_``),
    the form ``MaskedAdamW`` uses. Best of ``repeats``; both write the same values."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(shape, generator=gen)
    mask = torch.rand(shape, generator=gen) < 0.5
    index = mask.reshape(-1).nonzero().squeeze(1).to(torch.int32)

    def boolean() -> None:
        w[mask] = w[mask] * 0.999

    def gathered() -> None:
        flat = w.view(-1)
        flat.index_put_((index,), flat.index_select(0, index) * 0.999)

    times = {}
    for name, fn in (("boolean", boolean), ("int32", gathered)):
        fn()  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        times[name] = 1e3 * best
    return times["boolean"], times["int32"]


def chunked_step_ms(model, ratio: float = 0.746, repeats: int = 5) -> dict[int, float]:
    """Milliseconds of one ``MaskedAdamW.step`` over a random ``ratio`` mask of every layer
    matrix (the default run's random baseline), with the shipped ``STEP_CHUNK`` and with the
    whole mask in one fused call (the float32 copies of the whole mask alive at once)."""
    pool = sum(p.numel() for _, p in U._pool(model))
    entries = U._entries(model, U.random_mask(model, round(ratio * pool), seed=0))
    for param, _ in entries:
        param.grad = torch.randn_like(param)
    out = {}
    shipped = U.STEP_CHUNK
    for chunk in (shipped, 1 << 40):
        U.STEP_CHUNK = chunk
        opt = U.MaskedAdamW(entries, lr=0.0)
        opt.step()  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            opt.step()
        out[chunk] = 1000 * (time.perf_counter() - start) / repeats
    U.STEP_CHUNK = shipped
    for param, _ in entries:
        param.grad = None
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--mlps", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = load_model(device="cpu")
    task = tasks.get("capitals", model, n=args.steps * args.batch_size, n_eval=8, seed=0)
    forget = U.forget_data(task, "po")
    nodes = clue_sized_nodes(model, args.heads, args.mlps, seed=0)
    masked = M.mask_from_nodes(model, nodes)
    full = M.full_mask(model)
    print(f"threads={torch.get_num_threads()} batch={args.batch_size} steps={args.steps}")
    print(
        f"mask: {args.heads} heads (q/k/v/o) + {args.mlps} MLPs = {M.mask_size(masked):,} "
        f"elements, unlearned ratio {100 * M.unlearned_ratio(model, masked):.2f}%"
    )
    rows = {}
    for name, mask in (("masked", masked), ("full", full)):
        rows[name] = timed_run(model, forget, mask, args.steps, args.batch_size)
        sec, nbytes, numel = rows[name]
        print(f"{name:7s} state {nbytes / 2**20:8.1f} MiB ({numel:,} elements)  step {sec:.3f} s")
    (ms, mb, _), (fs, fb, _) = rows["masked"], rows["full"]
    print(f"ratio masked/full: optimizer state {mb / fb:.4f}, step time {ms / fs:.2f}")
    boolean_ms, int32_ms = masked_update_ms()
    print(
        f"masked update of one 576x1536 matrix (half masked): boolean indexing "
        f"{boolean_ms:.2f} ms, int32 gather/scatter {int32_ms:.2f} ms "
        f"({boolean_ms / int32_ms:.1f}x)"
    )
    (chunked, chunked_ms), (_, whole_ms) = chunked_step_ms(model).items()
    print(
        f"MaskedAdamW.step over a 74.6% random mask: chunks of {chunked:,} elements "
        f"{chunked_ms:.0f} ms, one fused call {whole_ms:.0f} ms ({chunked_ms / whole_ms:.2f}x)"
    )


if __name__ == "__main__":
    main()
