"""Edge attribution (EAP, EAP-IG, exact patching), circuit runs, and faithfulness (DESIGN §5).

Scores are a float64 CPU tensor aligned with ``graph.edges`` (``graph = graph_for(model)``);
``graph.score_dict(scores)`` gives ``{(u, v): score}``. A score estimates the change of the
metric M (mean over prompts of ``tasks.logit_metric`` at the final position) when the edge alone
is patched:

* **noising** starts from the clean run x and patches the edge with the corrupted run x̃:
  ``score(u->v) ≈ M(x with u->v from x̃) - M(x) ≈ Σ (a_u(x̃) - a_u(x)) · ∂M/∂in_v |x``;
* **denoising** starts from x̃ and patches the edge with x:
  ``score(u->v) ≈ M(x̃ with u->v from x) - M(x̃) ≈ Σ (a_u(x) - a_u(x̃)) · ∂M/∂in_v |x̃``.

The sums run over prompts, positions and d_model. A negative noising score means the edge is
needed (corrupting it lowers M); a positive denoising score means the edge alone restores M.

Methods: ``"eap"`` (one gradient at the start run: 2 forwards + 1 backward per batch);
``"eap-ig"`` (gradients averaged over ``steps`` points ``e_start + (k/steps)(e_other - e_start)``,
k = 0..steps-1, of the input embeddings, i.e. a left Riemann sum of integrated gradients that
begins at the start run, as in Hanna et al. 2024; ``steps=1`` is EAP; the path is not symmetric,
so noising and denoising scores differ as they should); ``"exact"`` (patch one edge at a time and
re-run: the ground truth, one forward per edge and batch, for small models).

Internal edges ``q/k/v -> head`` carry the receiver's *whole* input: their score is the effect
of patching that q (or k, v) input as a whole, estimated as ``Σ (in(other) - in(start)) · ∂M/∂in``
(the sum of the scores of all edges into that receiver) or, with ``"exact"``, measured by patching
it. A key/value input is shared by the query heads of its KV group, so ``a{L}.g{G}.k -> a{L}.h{H}``
has the same score for every H of the group.

Circuit run: see :func:`circuit_run`. All computation happens on the model's device; weights are
frozen during attribution (no parameter gradients are computed or left behind).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from clue_mi.graph import (
    EMBED_HOOK,
    Circuit,
    ComputationGraph,
    HookSlot,
    graph_for,
    select_circuit,
)
from clue_mi.tasks.base import PromptSet, Task, logit_metric
from clue_mi.timing import stage

__all__ = [
    "DIRECTIONS",
    "METHODS",
    "attribute",
    "attribute_both",
    "circuit_run",
    "clear_reference_runs",
    "faithfulness",
    "find_circuit",
]

DIRECTIONS = ("noising", "denoising")
METHODS = ("eap", "eap-ig", "exact")
FAITHFULNESS_PROMPTS = 32  # held-out pairs a circuit's faithfulness is measured on

UNEMBED_IN = "unembed.hook_in"

SenderFn = Callable[[HookSlot, Tensor], None]
ReceiverFn = Callable[[HookSlot, Tensor], Tensor | None]


# -- plumbing ------------------------------------------------------------------------------------


def _device(model) -> torch.device:
    return next(model.original_model.parameters()).device


def _prompts(task_or_prompts: Task | PromptSet) -> PromptSet:
    return task_or_prompts.prompts if isinstance(task_or_prompts, Task) else task_or_prompts


def _check(direction: str, method: str, steps: int) -> None:
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")


@contextmanager
def _frozen(model) -> Iterator[None]:
    """Switch off parameter gradients: attribution needs gradients w.r.t. activations only."""
    params = {id(p): p for p in [*model.parameters(), *model.original_model.parameters()]}
    saved = [(p, p.requires_grad) for p in params.values()]
    try:
        for p, _ in saved:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def _as4(act: Tensor, slot: HookSlot) -> Tensor:
    """View an activation as ``[batch, pos, count, d_model]``."""
    return act if slot.per_head else act.unsqueeze(2)


def _from4(act4: Tensor, slot: HookSlot) -> Tensor:
    return act4 if slot.per_head else act4.squeeze(2)


def _last_position(act: Float[Tensor, "b p d"], hook: Any) -> Float[Tensor, "b 1 d"]:
    """The final position, the only one the metric reads. A strided slice goes to bmm with W_U
    expanded per prompt, which half precision on the CPU copies (``[b, d, V]``: 6x the
    attribution's own memory on tiny-llama); made contiguous, matmul folds it into one mm. In
    float32 the slice stays as it was: mm rounds differently from bmm (1e-7 of the largest
    score), and float32 scores stay bit-identical to the runs reported in the README."""
    last = act[:, -1:]
    return last if act.dtype == torch.float32 else last.contiguous()


def _forward(
    model,
    graph: ComputationGraph,
    tokens: Int[Tensor, "batch pos"],
    on_sender: SenderFn | None = None,
    on_receiver: ReceiverFn | None = None,
    embed: Callable[[Tensor], Tensor] | None = None,
    receiver_slots: list[HookSlot] | None = None,
    last_only: bool = False,
) -> Float[Tensor, "batch pos vocab"]:
    """One forward pass with sender reads, receiver edits, and an optional embedding override.

    ``embed(e)`` returns the input node's output to use instead of ``e``; ``on_sender`` sees each
    sender slot's ``[b, p, count, d]`` activation after that; ``on_receiver`` may return a new
    ``[b, p, count, d]`` input for a receiver slot. ``last_only`` unembeds the final position
    only (logits ``[b, 1, vocab]``): the metric needs no more, and the unembedding is the
    costliest matmul of a small model with a large vocabulary.
    """
    hooks: list[tuple[str, Callable]] = []
    if last_only:
        hooks.append((UNEMBED_IN, _last_position))
    for slot in graph.sender_slots:
        if on_sender is None and not (embed is not None and slot.hook == EMBED_HOOK):
            continue

        def read(act: Tensor, hook: Any, slot: HookSlot = slot) -> Tensor | None:
            new = embed(act) if embed is not None and slot.hook == EMBED_HOOK else None
            if on_sender is not None:
                on_sender(slot, _as4(act if new is None else new, slot))
            return new

        hooks.append((slot.hook, read))
    if on_receiver is not None:
        for slot in graph.receiver_slots if receiver_slots is None else receiver_slots:

            def edit(act: Tensor, hook: Any, slot: HookSlot = slot) -> Tensor | None:
                assert on_receiver is not None
                new = on_receiver(slot, _as4(act, slot))
                return None if new is None else _from4(new, slot)

            hooks.append((slot.hook, edit))
    with model.hooks(fwd_hooks=hooks):
        return model(tokens)


def _metric_sum(
    logits: Float[Tensor, "batch pos vocab"], choices: Tensor, good: Tensor
) -> Float[Tensor, ""]:
    return logit_metric(logits[:, -1], choices, good).sum()


def _record_senders(buffer: Tensor, sign: float) -> SenderFn:
    def record(slot: HookSlot, act: Tensor) -> None:
        buffer[:, :, slot.start : slot.stop] += sign * act.detach()

    return record


def _cache_run(
    model, graph: ComputationGraph, tokens: Tensor, last_only: bool = False
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sender outputs ``[b,p,S,d]``, receiver inputs ``[b,p,R,d]``, embeddings, and logits."""
    b, p = tokens.shape
    dev = tokens.device
    senders = torch.zeros(b, p, graph.n_senders, graph.d_model, device=dev)
    receivers = torch.zeros(b, p, graph.n_receivers, graph.d_model, device=dev)
    embeds: list[Tensor] = []

    def on_sender(slot: HookSlot, act: Tensor) -> None:
        senders[:, :, slot.start : slot.stop] = act
        if slot.hook == EMBED_HOOK:
            embeds.append(act.squeeze(2))

    def on_receiver(slot: HookSlot, act: Tensor) -> None:
        receivers[:, :, slot.start : slot.stop] = act
        return None

    with torch.no_grad():
        logits = _forward(model, graph, tokens, on_sender, on_receiver, last_only=last_only)
    return senders, receivers, embeds[0], logits


# -- gradient-based attribution ----------------------------------------------------------------


def _gradient_recorder(
    grads: Float[Tensor, "batch pos n_receivers d_model"], steps: int
) -> ReceiverFn:
    """Receiver hook that adds each receiver input's gradient, over ``steps``, into ``grads``."""

    def on_receiver(slot: HookSlot, act: Tensor) -> Tensor:
        # A fresh tensor, so the gradient is that of this receiver's input alone (an identity
        # hook output can be the residual-stream tensor itself, e.g. at hook_mlp_in).
        act = act.clone()

        def add(g: Tensor, s: HookSlot = slot) -> None:
            # Returns None: a returned tensor would replace the gradient flowing upstream.
            # Accumulated in the buffer's float32 whatever the model's dtype.
            grads[:, :, s.start : s.stop].add_(g.to(grads.dtype), alpha=1.0 / steps)

        act.register_hook(add)
        return act

    return on_receiver


def _eap_batch(
    model,
    graph: ComputationGraph,
    start: Int[Tensor, "batch pos"],
    other: Int[Tensor, "batch pos"],
    choices: Tensor,
    good: Tensor,
    n_total: int,
    steps: int,
) -> Float[Tensor, "n_senders n_receivers"]:
    """``Σ_{b,p,d} (a_s(other) - a_s(start)) · mean_k ∂M/∂in_r`` for every sender/receiver pair.

    The ``other`` run and the ``k = 0`` step (the start run itself) fill the sender-difference
    buffer; each step's backward pass adds its receiver-input gradients to the gradient buffer;
    one contraction gives all pairs. EAP is ``steps = 1``: 2 forwards + 1 backward.
    """
    b, p = start.shape
    dev = start.device
    diff = torch.zeros(b, p, graph.n_senders, graph.d_model, device=dev)
    grads = torch.zeros(b, p, graph.n_receivers, graph.d_model, device=dev)
    other_embed: list[Tensor] = []

    def keep_embed(e: Tensor) -> Tensor:
        other_embed.append(e.detach())
        return e

    with torch.no_grad():
        _forward(model, graph, other, _record_senders(diff, +1.0), embed=keep_embed, last_only=True)
    e_other = other_embed[0]
    start_embed: list[Tensor] = []

    on_receiver = _gradient_recorder(grads, steps)
    for k in range(steps):
        alpha = k / steps

        def interpolate(e: Tensor, alpha: float = alpha) -> Tensor:
            if not start_embed:
                start_embed.append(e.detach())
            e_start = start_embed[0]
            return (e_start + alpha * (e_other - e_start)).detach().requires_grad_(True)

        record = _record_senders(diff, -1.0) if k == 0 else None
        logits = _forward(
            model, graph, start, record, on_receiver, embed=interpolate, last_only=True
        )
        (_metric_sum(logits, choices, good) / n_total).backward()
    return torch.einsum("bpsd,bprd->sr", diff, grads)


def _joint_eap_batch(
    model,
    graph: ComputationGraph,
    clean: Int[Tensor, "batch pos"],
    corrupted: Int[Tensor, "batch pos"],
    choices: Tensor,
    good: Tensor,
    n_total: int,
    steps: int,
) -> dict[str, Float[Tensor, "n_senders n_receivers"]]:
    """:func:`_eap_batch` of both directions at once, sharing the clean and corrupted passes.

    Noising's ``other`` run (no gradient) is the corrupted run and denoising's is the clean run;
    both are also the ``k = 0`` step of the other direction. So each is run once, with the
    gradient on, and serves as both. EAP: 2 forwards + 2 backwards instead of 4 + 2. Every
    buffer is filled with the same operations in the same order as in :func:`_eap_batch`, so
    the scores are the same (``tests/test_score_cache.py`` checks equality).
    """
    b, p = clean.shape
    dev = clean.device
    diff = torch.zeros(b, p, graph.n_senders, graph.d_model, device=dev)  # a(x~) - a(x)
    grads = {d: torch.zeros(b, p, graph.n_receivers, graph.d_model, device=dev) for d in DIRECTIONS}
    embeds: dict[str, Tensor] = {}
    runs = {"noising": (clean, corrupted, -1.0), "denoising": (corrupted, clean, +1.0)}
    recorders = {d: _gradient_recorder(grads[d], steps) for d in DIRECTIONS}

    def step(direction: str, k: int) -> None:
        start, _, sign = runs[direction]
        other_dir = "denoising" if direction == "noising" else "noising"
        alpha = k / steps

        def interpolate(e: Tensor) -> Tensor:
            if k == 0:
                embeds[direction] = e.detach()
            e_start, e_other = embeds[direction], embeds[other_dir]
            return (e_start + alpha * (e_other - e_start)).detach().requires_grad_(True)

        def keep_start(e: Tensor) -> Tensor:  # k = 0: the other embedding is not known yet
            embeds[direction] = e.detach()
            return e.detach().requires_grad_(True)

        record = _record_senders(diff, sign) if k == 0 else None
        embed = keep_start if k == 0 else interpolate
        logits = _forward(
            model, graph, start, record, recorders[direction], embed=embed, last_only=True
        )
        (_metric_sum(logits, choices, good) / n_total).backward()

    for direction in DIRECTIONS:
        step(direction, 0)
    for direction in DIRECTIONS:
        for k in range(1, steps):
            step(direction, k)
    # Denoising's difference is -diff: negating the [S, R] result instead of the buffer is
    # exact (rounding is symmetric in sign) and spares a [b, p, S, d] copy.
    return {
        "noising": torch.einsum("bpsd,bprd->sr", diff, grads["noising"]),
        "denoising": -torch.einsum("bpsd,bprd->sr", diff, grads["denoising"]),
    }


def _pair_scores_to_edges(
    graph: ComputationGraph, pairs: Float[Tensor, "n_senders n_receivers"]
) -> Float[Tensor, " n_edges"]:
    pairs = pairs.double().cpu()
    external = pairs[graph.edge_sender, graph.edge_receiver]
    # An internal edge carries its q/k/v receiver's whole input: the sum over its senders.
    whole_input = (pairs * graph.adjacency).sum(0)[graph.edge_receiver]
    return torch.where(graph.internal, whole_input, external)


# -- exact patching ------------------------------------------------------------------------------


def _slot_of(graph: ComputationGraph, receiver: int) -> HookSlot:
    for slot in graph.receiver_slots:
        if slot.start <= receiver < slot.stop:
            return slot
    raise IndexError(receiver)


def _chunk_patch(b: int, receivers: list[int], deltas: list[Tensor]) -> ReceiverFn:
    """Receiver edit for a repeated batch: copy ``i`` gets ``deltas[i]`` at ``receivers[i]``."""

    def patch(slot: HookSlot, act: Tensor) -> Tensor:
        act = act.clone()
        copies = act.view(len(receivers), b, *act.shape[1:])
        for i, (r, delta) in enumerate(zip(receivers, deltas, strict=True)):
            if slot.start <= r < slot.stop:
                copies[i, :, :, r - slot.start] += delta
        return act

    return patch


def _exact_batch(
    model,
    graph: ComputationGraph,
    start: Int[Tensor, "batch pos"],
    other: Int[Tensor, "batch pos"],
    choices: Tensor,
    good: Tensor,
    n_total: int,
    bar: Any,
    chunk: int = 16,
) -> Float[Tensor, " n_edges"]:
    """``M(start with one edge patched) - M(start)`` for every edge.

    ``chunk`` edges share one forward pass: the batch is repeated once per edge and copy ``i``
    gets edge ``i`` patched (an external edge adds its sender's difference to the receiver's
    input; an internal edge adds the receiver's whole input difference).
    """
    s_other, r_other, _, _ = _cache_run(model, graph, other, last_only=True)
    s_start, r_start, _, logits = _cache_run(model, graph, start, last_only=True)
    base = logit_metric(logits[:, -1], choices, good)
    s_diff, r_diff = s_other - s_start, r_other - r_start
    b = start.shape[0]
    out = torch.zeros(graph.n_edges, dtype=torch.float64)
    for first in range(0, graph.n_edges, chunk):
        ids = list(range(first, min(first + chunk, graph.n_edges)))
        receivers = [int(graph.edge_receiver[e]) for e in ids]
        deltas = [
            r_diff[:, :, r] if graph.internal[e] else s_diff[:, :, int(graph.edge_sender[e])]
            for e, r in zip(ids, receivers, strict=True)
        ]
        slots = list({_slot_of(graph, r) for r in receivers})

        patch = _chunk_patch(b, receivers, deltas)
        tokens = start.repeat(len(ids), 1)
        with torch.no_grad():
            patched = _forward(
                model, graph, tokens, on_receiver=patch, receiver_slots=slots, last_only=True
            )
        metric = logit_metric(patched[:, -1], choices.repeat(len(ids), 1), good.repeat(len(ids), 1))
        effect = (metric.view(len(ids), b) - base).double().sum(1) / n_total
        out[ids] = effect.cpu()
        bar.update(len(ids))
    return out


# -- public API ----------------------------------------------------------------------------------


def attribute(
    model,
    task_or_prompts: Task | PromptSet,
    direction: str = "noising",
    method: str = "eap-ig",
    steps: int = 5,
    batch_size: int = 16,
    progress: bool | None = None,
) -> Float[Tensor, " n_edges"]:
    """Score every edge of ``graph_for(model)`` (see the module docstring for the meaning).

    Args:
        model: a TransformerBridge with edge hooks on (Llama family incl. GQA, or GPT-2).
        task_or_prompts: a ``Task`` (its attribution prompts are used) or a ``PromptSet``.
        direction: ``"noising"`` or ``"denoising"``.
        method: ``"eap"``, ``"eap-ig"`` or ``"exact"``.
        steps: interpolation steps of EAP-IG (ignored otherwise).
        batch_size: prompts per forward pass (a speed/memory knob; results agree up to rounding).
        progress: show a progress bar (default: only for ``"exact"``).

    Returns:
        float64 CPU tensor ``[n_edges]`` aligned with ``graph_for(model).edges``.
    """
    _check(direction, method, steps)
    graph = graph_for(model)
    prompts = _prompts(task_or_prompts).to(_device(model))
    n = len(prompts)
    if n == 0:
        raise ValueError("no prompts to attribute")
    batches = list(prompts.batches(batch_size))
    show = method == "exact" if progress is None else progress
    pairs = torch.zeros(graph.n_senders, graph.n_receivers, dtype=torch.float64)
    exact = torch.zeros(graph.n_edges, dtype=torch.float64)
    total = graph.n_edges * len(batches) if method == "exact" else len(batches)
    unit = "edge" if method == "exact" else "batch"
    with (
        _frozen(model),
        tqdm(total=total, disable=not show, desc=f"{method} {direction}", unit=unit) as bar,
    ):
        for clean, corrupted, choices, good in batches:
            start, other = (clean, corrupted) if direction == "noising" else (corrupted, clean)
            if method == "exact":
                exact += _exact_batch(model, graph, start, other, choices, good, n, bar)
                continue
            k = 1 if method == "eap" else steps
            pairs += _eap_batch(model, graph, start, other, choices, good, n, k).double().cpu()
            bar.update(1)
    return exact if method == "exact" else _pair_scores_to_edges(graph, pairs)


def attribute_both(
    model,
    task_or_prompts: Task | PromptSet,
    method: str = "eap-ig",
    steps: int = 5,
    batch_size: int = 16,
    progress: bool | None = None,
) -> dict[str, Float[Tensor, " n_edges"]]:
    """``{"noising": scores, "denoising": scores}``, each equal to what :func:`attribute` gives.

    For ``"eap"`` and ``"eap-ig"`` the two directions share their clean and corrupted passes
    (:func:`_joint_eap_batch`): EAP costs 2 forwards + 2 backwards per batch instead of 4 + 2.
    ``"exact"`` has nothing to share and runs :func:`attribute` twice.
    """
    _check("noising", method, steps)
    _REFERENCE.clear()  # a new attribution: free the previous task's faithfulness runs first
    if method == "exact":
        return {
            d: attribute(model, task_or_prompts, d, method, steps, batch_size, progress)
            for d in DIRECTIONS
        }
    graph = graph_for(model)
    prompts = _prompts(task_or_prompts).to(_device(model))
    n = len(prompts)
    if n == 0:
        raise ValueError("no prompts to attribute")
    batches = list(prompts.batches(batch_size))
    pairs = {
        d: torch.zeros(graph.n_senders, graph.n_receivers, dtype=torch.float64) for d in DIRECTIONS
    }
    k = 1 if method == "eap" else steps
    with (
        _frozen(model),
        tqdm(total=len(batches), disable=not progress, desc=f"{method} both", unit="batch") as bar,
    ):
        for clean, corrupted, choices, good in batches:
            batch = _joint_eap_batch(model, graph, clean, corrupted, choices, good, n, k)
            for d in DIRECTIONS:
                pairs[d] += batch[d].double().cpu()
            bar.update(1)
    return {d: _pair_scores_to_edges(graph, pairs[d]) for d in DIRECTIONS}


@dataclass
class _SlotPatch:
    """How a circuit run rewrites one receiver slot's input (see :func:`_circuit_patch`).

    ``from_corrupted`` False: ``act + Σ_{s in senders} delta_s · weights[s]`` (the excluded
    edges); True: ``in(x̃) - Σ_{s in senders} delta_s · weights[s]`` (the kept edges), where
    ``delta_s = a_s(x̃) - a_s(this run)``. Both equal ``act + Σ_{excluded} delta_s`` (a receiver's
    input is the sum of its senders' outputs); the one with fewer senders is used.
    """

    slot: HookSlot
    from_corrupted: bool
    senders: Tensor  # sender indices with a nonzero weight into this slot
    weights: Tensor  # [len(senders), slot.count] 0/1 float
    corrupt: Tensor  # [slot.count] bool: whole input from the corrupted run


def _circuit_patch(
    graph: ComputationGraph, keep: Bool[Tensor, " n_edges"], device: torch.device
) -> list[_SlotPatch]:
    """What a circuit run must patch, per receiver slot with an excluded edge or a corrupted
    q/k/v input; slots with every edge kept are not hooked (they run as they are)."""
    excluded = graph.adjacency.clone()
    ext = ~graph.internal & keep
    excluded[graph.edge_sender[ext], graph.edge_receiver[ext]] = False
    kept = graph.adjacency & ~excluded
    # A q/k/v input is corrupted when its internal edge is dropped; a KV group's k/v input is
    # shared by its heads, so it stays live while any head of the group keeps the edge.
    internal_kept = torch.zeros(graph.n_receivers, dtype=torch.bool)
    internal_kept[graph.edge_receiver[graph.internal & keep]] = True
    corrupt = torch.zeros(graph.n_receivers, dtype=torch.bool)
    corrupt[graph.edge_receiver[graph.internal]] = True
    corrupt &= ~internal_kept
    out = []
    for s in graph.receiver_slots:
        ex, kp = excluded[:, s.start : s.stop], kept[:, s.start : s.stop]
        if not ex.any() and not corrupt[s.start : s.stop].any():
            continue
        ex_senders, kp_senders = ex.any(1).nonzero()[:, 0], kp.any(1).nonzero()[:, 0]
        use_kept = len(kp_senders) < len(ex_senders)
        senders, weights = (kp_senders, kp) if use_kept else (ex_senders, ex)
        out.append(
            _SlotPatch(
                s,
                use_kept,
                senders.to(device),
                weights[senders].float().to(device),
                corrupt[s.start : s.stop].to(device),
            )
        )
    return out


@dataclass
class _Reference:
    """The runs a circuit run is compared with, per batch: clean last-position logits, and the
    corrupted run's sender outputs, receiver inputs and logits (last position)."""

    clean_last: list[Tensor]
    cor_senders: list[Tensor]
    cor_receivers: list[Tensor]
    cor_last: list[Tensor]


# One entry: the circuits of a task (both directions, every sparsity) are measured on the same
# prompts one after the other, so they share the clean and corrupted runs. Keyed by the weights
# fingerprint (any weight change misses) and the exact tokens.
_REFERENCE: dict[tuple, _Reference] = {}


def clear_reference_runs() -> None:
    """Free the clean/corrupted runs :func:`faithfulness` keeps for the next circuit."""
    _REFERENCE.clear()


def _reference_runs(
    model, graph: ComputationGraph, prompts: PromptSet, batch_size: int
) -> _Reference:
    """Clean and corrupted runs of ``prompts`` (memoized for the latest weights and prompts).

    The corrupted senders and receivers of every batch are kept in host memory (``4 n p d (S +
    R)`` bytes for ``n`` prompts: 88 GB for 32 prompts of 64 tokens on a 7B model); each
    circuit batch takes its own to the device."""
    from clue_mi.cache import _prompt_digest, model_fingerprint

    key = (id(model), model_fingerprint(model), _prompt_digest(prompts), batch_size)
    if key in _REFERENCE:
        return _REFERENCE[key]
    _REFERENCE.clear()
    ref = _Reference([], [], [], [])
    for clean, corrupted, _, _ in prompts.to(_device(model)).batches(batch_size):
        with torch.no_grad():
            ref.clean_last.append(_forward(model, graph, clean, last_only=True)[:, -1])
        s_cor, r_cor, _, cor_logits = _cache_run(model, graph, corrupted, last_only=True)
        ref.cor_senders.append(s_cor.cpu())
        ref.cor_receivers.append(r_cor.cpu())
        ref.cor_last.append(cor_logits[:, -1])
    _REFERENCE[key] = ref
    return ref


def _circuit_batch(
    model,
    graph: ComputationGraph,
    clean: Tensor,
    s_cor: Tensor,
    r_cor: Tensor,
    patch: list[_SlotPatch],
    last_only: bool = False,
) -> Tensor:
    """Circuit-run logits of one batch, given the corrupted run's senders and receivers."""
    delta = torch.zeros_like(s_cor)  # a_s(x~) - a_s(this run), filled as senders run

    def on_sender(slot: HookSlot, act: Tensor) -> None:
        delta[:, :, slot.start : slot.stop] = s_cor[:, :, slot.start : slot.stop] - act

    by_slot = {p.slot: p for p in patch}

    def on_receiver(slot: HookSlot, act: Tensor) -> Tensor:
        p = by_slot[slot]
        a, z = slot.start, slot.stop
        # In the float32 of the buffers, handed back in the model's dtype.
        terms = torch.einsum("bpsd,sn->bpnd", delta[:, :, p.senders], p.weights.to(delta.dtype))
        new = r_cor[:, :, a:z] - terms if p.from_corrupted else act + terms
        return torch.where(p.corrupt[None, None, :, None], r_cor[:, :, a:z], new).to(act.dtype)

    with torch.no_grad():
        return _forward(
            model,
            graph,
            clean,
            on_sender,
            on_receiver,
            receiver_slots=[p.slot for p in patch],
            last_only=last_only,
        )


def circuit_run(
    model,
    prompts: Task | PromptSet,
    circuit: Circuit | Any,
    batch_size: int = 16,
) -> Float[Tensor, "n pos vocab"]:
    """Logits of the circuit run (DESIGN §5), on CPU.

    Run on the clean input; at every receiver v, each edge (u, v) outside the circuit carries u's
    activation from the corrupted run: ``in_v += Σ_{(u,v)∉C} (a_u(x̃) - a_u(this run))``. A q
    input whose internal edge is outside C is the corrupted run's q input; a KV group's k (v)
    input is corrupted when no head of the group keeps its k (v) edge. With every edge kept this
    is the clean run, with none kept the corrupted run. Where a receiver keeps fewer edges than
    it excludes, its input is computed as ``in_v(x̃) - Σ_{(u,v)∈C} (a_u(x̃) - a_u(this run))``,
    the same sum with fewer terms.
    """
    prompts = _prompts(prompts)
    graph = graph_for(model)
    device = _device(model)
    patch = _circuit_patch(graph, graph.edge_mask(circuit), device)
    out = []
    for clean, corrupted, _, _ in prompts.to(device).batches(batch_size):
        s_cor, r_cor, _, _ = _cache_run(model, graph, corrupted)
        out.append(_circuit_batch(model, graph, clean, s_cor, r_cor, patch).cpu())
    return torch.cat(out)


def _kl(p_logits: Tensor, q_logits: Tensor) -> Tensor:
    """KL(p ‖ q) per row, in float64."""
    logp = p_logits.double().log_softmax(-1)
    logq = q_logits.double().log_softmax(-1)
    return (logp.exp() * (logp - logq)).sum(-1)


def faithfulness(
    model,
    prompts: Task | PromptSet,
    circuit: Circuit | Any,
    batch_size: int = 16,
) -> dict[str, float]:
    """How well the circuit run reproduces the model, at the final position.

    Returns ``kl`` = mean over prompts of KL(p_model(·|x) ‖ p_circuit) (lower is better),
    ``kl_empty`` = the same for the empty circuit (the corrupted run), ``recovery`` =
    (M_circuit - M(x̃)) / (M(x) - M(x̃)) with M the mean metric, and the three metric values.

    The clean and corrupted runs are shared by consecutive calls on the same prompts and
    weights (both directions of a task, every sparsity of a sweep); only the final position is
    unembedded.
    """
    prompts = _prompts(prompts)
    graph = graph_for(model)
    device = _device(model)
    patch = _circuit_patch(graph, graph.edge_mask(circuit), device)
    ref = _reference_runs(model, graph, prompts, batch_size)
    kl = kl_empty = m_clean = m_cor = m_circ = 0.0
    batches = prompts.to(device).batches(batch_size)
    for i, (clean, _, choices, good) in enumerate(batches):
        s_cor, r_cor = ref.cor_senders[i].to(device), ref.cor_receivers[i].to(device)
        circ_last = _circuit_batch(model, graph, clean, s_cor, r_cor, patch, last_only=True)
        circ_last = circ_last[:, -1]
        clean_last, cor_last = ref.clean_last[i], ref.cor_last[i]
        kl += float(_kl(clean_last, circ_last).sum())
        kl_empty += float(_kl(clean_last, cor_last).sum())
        m_clean += float(logit_metric(clean_last, choices, good).sum())
        m_cor += float(logit_metric(cor_last, choices, good).sum())
        m_circ += float(logit_metric(circ_last, choices, good).sum())
    n = len(prompts)
    gap = (m_clean - m_cor) / n
    return {
        "kl": kl / n,
        "kl_empty": kl_empty / n,
        "recovery": (m_circ / n - m_cor / n) / gap if gap != 0 else math.nan,
        "metric_clean": m_clean / n,
        "metric_corrupted": m_cor / n,
        "metric_circuit": m_circ / n,
    }


def find_circuit(
    model,
    task: Task | PromptSet,
    direction: str = "noising",
    method: str = "eap-ig",
    sparsity: float | None = 0.95,
    top_n: int | None = None,
    steps: int = 5,
    batch_size: int = 16,
    scores: Tensor | None = None,
) -> Circuit:
    """Attribute, select (``top_n`` wins over ``sparsity``), and record faithfulness.

    Faithfulness is measured on the first :data:`FAITHFULNESS_PROMPTS` prompts of the task's
    held-out eval split when ``task`` is a ``Task`` with one (the circuit was chosen on its
    attribution prompts), else on the given prompts; graph attribute ``faithfulness_split``
    says which. Pass precomputed ``scores`` to skip attribution.
    """
    _check(direction, method, steps)
    graph = graph_for(model)
    prompts = _prompts(task)
    if scores is None:
        with stage("attribution"):
            scores = attribute(model, prompts, direction, method, steps, batch_size)
    name = task.name if isinstance(task, Task) else None
    circuit = select_circuit(
        graph,
        scores,
        sparsity=None if top_n is not None else sparsity,
        top_n=top_n,
        model=graph.model_name,
        task=name,
        direction=direction,
        method=method,
        steps=steps if method == "eap-ig" else None,
        n_prompts=len(prompts),
    )
    held_out = isinstance(task, Task) and len(task.eval) > 0
    target = prompts
    if isinstance(task, Task) and held_out:
        # A circuit run per batch is the cost, and eval splits grow to 128 for accuracy.
        target = task.eval.head(FAITHFULNESS_PROMPTS)
    with stage("faithfulness"):
        circuit.graph["faithfulness"] = faithfulness(model, target, circuit, batch_size)
    circuit.graph["faithfulness_split"] = "eval" if held_out else "prompts"
    return circuit
