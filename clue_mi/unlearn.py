"""Masked two-stage unlearning (CLUE, paper Section 4), its baselines, and HF export.

* Losses: **GA** (gradient ascent, ``-NLL`` of forget text), **NPO** (negative preference
  optimization against reference NLLs computed once before training), **PO** (NLL of a refusal
  after each forget prompt, answer tokens only), and the retain NLL.
* ``unlearn``: stage 1 updates only forget-mask elements with the forget loss; stage 2 only
  conflict-mask elements with ``forget + lam * retain``. Both use ``MaskedAdamW``, whose state
  holds exactly the masked elements and which writes nothing else: every element outside the
  active mask stays bit-identical.
* ``unlearn_baseline`` + ``baseline_mask``: one stage, same step budget, on all weights, a
  WAGLE weight-attribution mask (``|(w - grad_r / gamma) * grad_f|``), a random mask, or the
  union of a node set.
* ``export_hf``: a standard HF checkpoint of the edited weights.

Training runs through a plain HF model that *shares* the parameter tensors of
``bridge.original_model`` (``plain_hf_model``): the bridge's per-head hooks make its forward
several times slower, and since the tensors are shared every update is seen by the bridge.
The model is kept in eval mode while training (no dropout), so runs are deterministic per seed.
"""

from __future__ import annotations

import logging
import math
import random
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn
from tqdm.auto import tqdm

from clue_mi.masks import (
    Mask,
    full_mask,
    get_parameter,
    hf_parameters,
    layer_matrices,
    mask_from_nodes,
)
from clue_mi.models import plain_hf_model

log = logging.getLogger(__name__)

LossName = Literal["po", "ga", "npo"]
LOSSES: tuple[str, ...] = ("po", "ga", "npo")

REFUSALS: tuple[str, ...] = (
    " I don't know.",
    " I'm not sure.",
    " I don't know the answer to that.",
    " Sorry, I can't help with that.",
)
"""Refusal answers for PO; prompt ``i`` gets ``REFUSALS[i % len(REFUSALS)]`` (deterministic)."""


# ----------------------------------------------------------------------------- data


@dataclass
class Batch:
    """Right-padded token ids; ``target`` marks the positions whose token is predicted."""

    input_ids: Int[Tensor, "b p"]
    attention_mask: Int[Tensor, "b p"]
    target: Bool[Tensor, "b p"]
    index: Int[Tensor, " b"]  # example indices in the data set (NPO reference lookup)

    def to(self, device: torch.device) -> Batch:
        return Batch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.target.to(device),
            self.index,
        )


@dataclass
class Encoded:
    """A tokenized data set: per example its ids and which of them the loss predicts."""

    ids: list[list[int]]
    target: list[list[bool]]
    pad_id: int

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, indices: Sequence[int]) -> Batch:
        width = max(len(self.ids[i]) for i in indices)
        ids = torch.full((len(indices), width), self.pad_id, dtype=torch.long)
        att = torch.zeros((len(indices), width), dtype=torch.long)
        tgt = torch.zeros((len(indices), width), dtype=torch.bool)
        for row, i in enumerate(indices):
            n = len(self.ids[i])
            ids[row, :n] = torch.tensor(self.ids[i])
            att[row, :n] = 1
            tgt[row, :n] = torch.tensor(self.target[i])
        return Batch(ids, att, tgt, torch.tensor(list(indices)))

    def batches(self, batch_size: int, order: Sequence[int] | None = None) -> Iterator[Batch]:
        order = list(range(len(self))) if order is None else list(order)
        for start in range(0, len(order), batch_size):
            yield self.batch(order[start : start + batch_size])


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id
    return int(pad if pad is not None else tokenizer.eos_token_id)


def encode_texts(tokenizer, texts: Sequence[str]) -> Encoded:
    """Full sentences: every token after the first is a target (the model's own BOS included)."""
    ids = [list(tokenizer(t)["input_ids"]) for t in texts]
    return Encoded(ids, [[False] + [True] * (len(x) - 1) for x in ids], _pad_id(tokenizer))


def refusal_for(i: int, refusals: Sequence[str] = REFUSALS) -> str:
    return refusals[i % len(refusals)]


def encode_prompt_answers(
    tokenizer, prompts: Sequence[str], answers: Sequence[str] | None = None
) -> Encoded:
    """Prompt + answer; only the answer tokens are targets. Default answers: ``REFUSALS``.

    Prompt and answer are tokenized separately (the answer without special tokens), so the
    targets are exactly the answer's tokens whatever the tokenizer does at the boundary.
    """
    if answers is None:
        answers = [refusal_for(i) for i in range(len(prompts))]
    if len(answers) != len(prompts):
        raise ValueError("one answer per prompt is needed")
    ids, target = [], []
    for prompt, answer in zip(prompts, answers, strict=True):
        p = list(tokenizer(prompt)["input_ids"])
        a = list(tokenizer(answer, add_special_tokens=False)["input_ids"])
        ids.append(p + a)
        target.append([False] * len(p) + [True] * len(a))
    return Encoded(ids, target, _pad_id(tokenizer))


def forget_data(task, loss: LossName) -> list[str]:
    """What ``unlearn`` forgets for a task: prompts for PO, full sentences for GA / NPO.

    Both the attribution and the eval split: the facts to remove are those eval asks about.
    """
    if loss == "po":
        return list(task.prompts.clean) + list(task.eval.clean)
    return list(task.train_text) + list(task.eval_text)


def retain_data(tasks: Sequence[Any]) -> list[str]:
    """Retain text: the attribution sentences of every retain task (eval stays unseen)."""
    return [s for task in tasks for s in task.train_text]


# ----------------------------------------------------------------------------- losses


def token_nll(model, batch: Batch) -> Float[Tensor, "b p"]:
    """NLL of each target token (0 elsewhere); position ``t`` is predicted from ``< t``."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    nll = -logp.gather(-1, batch.input_ids[:, 1:, None]).squeeze(-1)
    nll = nll * batch.target[:, 1:]
    return F.pad(nll, (1, 0))


def sequence_nll(model, batch: Batch) -> Float[Tensor, " b"]:
    """Summed NLL of each example's targets (``-log pi(y|x)``)."""
    return token_nll(model, batch).sum(1)


def mean_nll(model, batch: Batch) -> Float[Tensor, ""]:
    """NLL averaged over all target tokens of the batch."""
    return token_nll(model, batch).sum() / batch.target[:, 1:].sum().clamp(min=1)


def ga_loss(model, batch: Batch) -> Float[Tensor, ""]:
    """Gradient ascent: minimize ``-NLL`` of the forget text."""
    return -mean_nll(model, batch)


def npo_loss(
    model, batch: Batch, ref_nll: Float[Tensor, " b"], beta: float = 0.1
) -> Float[Tensor, ""]:
    """NPO: ``(2/beta) E[log(1 + (pi/pi_ref)^beta)] = -(2/beta) E[log sigma(beta(l - l_ref))]``.

    ``l`` is the summed NLL of an example under the model, ``l_ref`` under the reference model.
    """
    nll = sequence_nll(model, batch)
    return -(2.0 / beta) * F.logsigmoid(beta * (nll - ref_nll.to(nll.device))).mean()


def po_loss(model, batch: Batch) -> Float[Tensor, ""]:
    """Preference optimization: NLL of the refusal answer tokens after each forget prompt."""
    return mean_nll(model, batch)


def retain_loss(model, batch: Batch) -> Float[Tensor, ""]:
    return mean_nll(model, batch)


@torch.no_grad()
def reference_nll(model, data: Encoded, batch_size: int) -> Float[Tensor, " n"]:
    """Summed NLL of every example under the current weights (NPO's ``l_ref``), on CPU."""
    device = next(model.parameters()).device
    out = torch.zeros(len(data))
    for batch in data.batches(batch_size):
        out[batch.index] = sequence_nll(model, batch.to(device)).float().cpu()
    return out


# ----------------------------------------------------------------------------- optimizer


STEP_CHUNK = 1 << 24
"""Masked elements :class:`MaskedAdamW` updates per fused kernel call (16.8M: 134 MB of float32
copies of values and gradients at most, plus one parameter)."""


class MaskedAdamW:
    """AdamW over the masked elements of some parameters, and nothing else.

    For each parameter it keeps ``exp_avg`` / ``exp_avg_sq`` of exactly ``mask.sum()`` elements
    (the whole parameter, in its own layout, when the mask is full), in float32 whatever the
    weights' dtype (half-precision weights are updated in float32 and rounded back). ``step``
    gathers the masked gradient entries, and writes the updated values back in place under
    ``no_grad``; unmasked elements are never written, so they stay bit-identical (no weight
    decay or momentum leaks onto them).

    Every write is an in-place op on the parameter itself (``param.mul_``, ``param[mask] = v``),
    never on ``param.data``: it lands for any memory layout (a ``reshape`` of a non-contiguous
    parameter would be a copy) and it moves the parameter's ``_version``, which the circuit
    cache's fingerprint relies on.
    """

    def __init__(
        self,
        entries: Sequence[tuple[nn.Parameter, Bool[Tensor, "*dims"]]],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.t = 0
        self.groups: list[dict[str, Any]] = []
        for param, mask in entries:
            mask = mask.to(param.device)
            dense = bool(mask.all())
            # Dense: moments shaped (and strided) like the parameter; masked: one per element.
            # Always float32, whatever the weights' dtype: bf16 moments lose the small updates.
            like = param.detach() if dense else param.detach().new_empty(int(mask.sum()))
            like = like.float()
            index = None
            if not dense and param.is_contiguous() and param.numel() < 2**31:
                # Flat int32 positions of the masked elements, found once: gathering and
                # scattering by index is ~3.5x faster than boolean indexing, which searches the
                # whole mask on every step (benchmarks/bench_unlearn.py: 1.5 vs 5.6 ms for a
                # half-masked 576x1536 matrix).
                index = mask.reshape(-1).nonzero().squeeze(1).to(torch.int32)
            self.groups.append(
                {
                    "param": param,
                    "mask": None if dense or index is not None else mask,
                    "index": index,
                    "exp_avg": torch.zeros_like(like),
                    "exp_avg_sq": torch.zeros_like(like),
                }
            )

    def state_numel(self) -> int:
        """Elements covered by the state (= mask size); each has two moments."""
        return sum(g["exp_avg"].numel() for g in self.groups)

    def state_bytes(self) -> int:
        """Bytes of the two moments, plus the int32 positions of partially masked parameters."""
        return sum(
            g[k].numel() * g[k].element_size()
            for g in self.groups
            for k in ("exp_avg", "exp_avg_sq", "index")
            if g[k] is not None
        )

    @torch.no_grad()
    def step(self) -> None:
        """One AdamW step of every masked element, in fused kernels (``torch._fused_adamw_``:
        about 6x faster than the same update written as eight elementwise passes).

        Parameters go to the kernel in chunks of about :data:`STEP_CHUNK` elements, each
        gathered, updated and written back before the next is gathered: the float32 copies of
        gathered (or half-precision) values and gradients then cost a chunk, not the mask (on a
        7B model the whole mask's copies would be tens of GB)."""
        self.t += 1
        step = torch.tensor(float(self.t))
        chunk: list[dict[str, Any]] = []
        size = 0
        for g in self.groups:
            if g["param"].grad is None:
                continue
            chunk.append(g)
            size += g["exp_avg"].numel()
            if size >= STEP_CHUNK:
                self._update(chunk, step)
                chunk, size = [], 0
        if chunk:
            self._update(chunk, step)

    def _update(self, groups: list[dict[str, Any]], step: Tensor) -> None:
        """Gather, update in one fused kernel, and scatter back the masked elements of
        ``groups``."""
        work: list[tuple[dict[str, Any], Tensor, Tensor]] = []  # (group, values, gradient)
        for g in groups:
            param, mask, index = g["param"], g["mask"], g["index"]
            if index is not None:
                grad = param.grad.reshape(-1).index_select(0, index)
                values = param.view(-1).index_select(0, index)  # a gathered copy
            elif mask is not None:
                grad, values = param.grad[mask], param[mask]
            else:
                grad, values = param.grad, param
            # float32 whatever the weights' dtype; a dense contiguous float32 parameter is
            # updated in place (the same tensor), anything else through a copy written back.
            values = values.float()
            if values is param and not param.is_contiguous():
                values = values.contiguous()
            work.append((g, values, grad.float().contiguous()))
        torch._fused_adamw_(
            [w[1] for w in work],
            [w[2] for w in work],
            [w[0]["exp_avg"] for w in work],
            [w[0]["exp_avg_sq"] for w in work],
            [],
            [step] * len(work),
            lr=self.lr,
            beta1=self.betas[0],
            beta2=self.betas[1],
            weight_decay=self.weight_decay,
            eps=self.eps,
            amsgrad=False,
            maximize=False,
        )
        # Scatter: only masked elements are written, in place on the parameter (not .data):
        # any layout, and its _version moves.
        for g, values, _ in work:
            param = g["param"]
            if g["index"] is not None:
                param.view(-1).index_put_((g["index"],), values.to(param.dtype))
            elif g["mask"] is not None:
                param[g["mask"]] = values.to(param.dtype)
            elif values is not param:
                param.copy_(values)
            else:  # updated in place by the kernel, which leaves _version alone
                torch.autograd.graph.increment_version(param)

    def zero_grad(self) -> None:
        for g in self.groups:
            g["param"].grad = None


def _entries(model, mask: Mapping[str, Tensor]) -> list[tuple[nn.Parameter, Tensor]]:
    """(parameter, mask) pairs of a model; see ``_entries_from``."""
    return _entries_from({name: get_parameter(model, name) for name in mask}, mask)


def _entries_from(
    params: Mapping[str, nn.Parameter], mask: Mapping[str, Tensor]
) -> list[tuple[nn.Parameter, Tensor]]:
    """(parameter, mask) pairs; names of one tied tensor are merged (OR), empty masks dropped.

    Merging matters: two optimizer groups on one tied tensor would each keep their own moments
    and apply two updates per step.
    """
    merged: dict[int, tuple[nn.Parameter, Tensor]] = {}
    for name, m in mask.items():
        param = params[name]
        if m.shape != param.shape:
            raise ValueError(
                f"mask for {name} has shape {tuple(m.shape)}, not {tuple(param.shape)}"
            )
        prev = merged.get(id(param))
        m = m.bool()  # stays where it is (host): MaskedAdamW moves one at a time
        merged[id(param)] = (param, m if prev is None else prev[1] | m)
    return [(p, m) for p, m in merged.values() if bool(m.any())]


@contextmanager
def _only_grad_for(model, params: Sequence[nn.Parameter]):
    """Gradients for ``params`` only (saves backward work); restores ``requires_grad`` after."""
    all_params = list(hf_parameters(model).values())
    before = [p.requires_grad for p in all_params]
    active = {id(p) for p in params}
    try:
        for p in all_params:
            p.requires_grad_(id(p) in active)
            p.grad = None
        yield
    finally:
        for p, flag in zip(all_params, before, strict=True):
            p.requires_grad_(flag)
            p.grad = None


# ----------------------------------------------------------------------------- trainer


@dataclass
class UnlearnResult:
    """What a run did: per-step losses, NPO references, optimizer sizes and steps per stage.

    ``epochs`` are the epochs each stage really trained (after an empty stage's epochs moved to
    the other stage, see ``unlearn``); ``notes`` say why they differ from those asked for.
    """

    history: list[dict[str, float]] = field(default_factory=list)
    ref_nll: Tensor | None = None
    state_numel: dict[int, int] = field(default_factory=dict)
    state_bytes: dict[int, int] = field(default_factory=dict)
    steps: dict[int, int] = field(default_factory=dict)
    epochs: tuple[int, ...] = ()
    notes: list[str] = field(default_factory=list)

    def losses(self, stage: int | None = None) -> list[float]:
        return [h["loss"] for h in self.history if stage is None or h["stage"] == stage]


@dataclass(frozen=True)
class Stage:
    """One training stage: which elements move, under which forget loss, for how many epochs.

    ``forget`` holds prompts for ``loss="po"`` and sentences for ``"ga"`` / ``"npo"``
    (``forget_data``); ``lam`` weighs the retain loss (0: forget loss only).
    """

    mask: Mapping[str, Tensor]
    loss: LossName
    forget: Sequence[str]
    epochs: int
    lam: float = 0.0


@dataclass
class _Setup:
    """A stage's encoded forget data, loss and (NPO) reference NLLs."""

    net: Any
    forget: Encoded
    retain: Encoded | None
    loss: str
    beta: float
    ref_nll: Tensor | None
    batch_size: int
    seed: int
    progress: bool
    weight_decay: float
    bf16: bool = False  # bfloat16 autocast of the training forward/backward passes


def _prepare(
    model,
    forget: Sequence[str],
    retain: Encoded | None,
    loss: str,
    beta: float,
    batch_size: int,
    seed: int,
    progress: bool,
    weight_decay: float,
    tokenizer,
    refusals: Sequence[str] | None,
    bf16: bool,
    checkpointing: bool = False,
) -> _Setup:
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    if not forget:
        raise ValueError("the forget set is empty")
    net = plain_hf_model(model).eval()  # no dropout: deterministic per seed
    if checkpointing:
        _checkpoint_layers(net)
    if loss == "po":
        answers = [refusal_for(i, refusals or REFUSALS) for i in range(len(forget))]
        enc_f = encode_prompt_answers(tokenizer, forget, answers)
    else:
        enc_f = encode_texts(tokenizer, forget)
    # NPO's reference is the model before any update; computed once, no second model kept.
    ref = reference_nll(net, enc_f, batch_size) if loss == "npo" else None
    return _Setup(
        net, enc_f, retain, loss, beta, ref, batch_size, seed, progress, weight_decay, bf16
    )


def _checkpoint_layers(net) -> None:
    """Recompute each decoder layer's activations in the backward pass instead of keeping them
    (HF gradient checkpointing): activation memory of one layer instead of all, for about one
    more forward pass per step. HF checkpoints only in training mode, so the model is put in
    it with every dropout module left in eval mode: the results stay deterministic per seed."""
    if not getattr(net, "supports_gradient_checkpointing", False):
        raise ValueError(
            f"{type(net).__name__} does not support gradient checkpointing; drop "
            "--gradient-checkpointing"
        )
    net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    net.train()
    for module in net.modules():
        if isinstance(module, nn.Dropout):
            module.eval()


def _forget_loss(s: _Setup, batch: Batch) -> Tensor:
    if s.loss == "ga":
        return ga_loss(s.net, batch)
    if s.loss == "npo":
        assert s.ref_nll is not None
        return npo_loss(s.net, batch, s.ref_nll[batch.index], s.beta)
    return po_loss(s.net, batch)


EpochCallback = Callable[[int, int], None]
"""``on_epoch(stage, epoch)``: called after every epoch (stage from 1, epoch from 0)."""


def _run_stage(
    model,
    s: _Setup,
    stage: int,
    mask: Mapping[str, Tensor],
    epochs: int,
    lr: float,
    lam: float,
    result: UnlearnResult,
    on_epoch: EpochCallback | None = None,
) -> None:
    """Train the elements of ``mask`` for ``epochs`` epochs (loss: forget + lam * retain)."""
    entries = _entries(model, mask)
    if not entries or epochs <= 0:
        result.steps[stage], result.state_numel[stage], result.state_bytes[stage] = 0, 0, 0
        return
    use_retain = lam != 0 and s.retain is not None
    opt = MaskedAdamW(entries, lr=lr, weight_decay=s.weight_decay)
    result.state_numel[stage], result.state_bytes[stage] = opt.state_numel(), opt.state_bytes()
    rng = random.Random(f"{s.seed}:{stage}")
    device = next(s.net.parameters()).device
    retain_iter = _cycle(s.retain, s.batch_size, rng) if use_retain and s.retain else None
    n_steps = epochs * math.ceil(len(s.forget) / s.batch_size)
    bar = tqdm(total=n_steps, desc=f"unlearn stage {stage}", disable=not s.progress, leave=False)
    step = 0
    with _only_grad_for(model, [p for p, _ in entries]):
        for epoch in range(epochs):
            order = list(range(len(s.forget)))
            rng.shuffle(order)
            for batch in s.forget.batches(s.batch_size, order):
                # bf16 autocast: matmuls in bfloat16, weights, gradients, optimizer and the
                # log-softmax of the losses stay float32 (token_nll casts logits up).
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=s.bf16):
                    f_loss = _forget_loss(s, batch.to(device))
                    total, r_val = f_loss, float("nan")  # nan: no retain loss in this stage
                    if retain_iter is not None:
                        r_loss = retain_loss(s.net, next(retain_iter).to(device))
                        total, r_val = f_loss + lam * r_loss, r_loss.item()
                if not math.isfinite(total.item()) and not any(
                    "diverged" in n for n in result.notes
                ):
                    # Keep the step budget, but say so: the metrics of this model fail closed.
                    note = f"stage {stage} diverged: non-finite loss at step {step + 1}"
                    log.warning("unlearn: %s", note)
                    result.notes.append(note)
                total.backward()
                opt.step()
                opt.zero_grad()
                step += 1
                result.history.append(
                    {
                        "stage": stage,
                        "epoch": epoch,
                        "step": step,
                        "loss": total.item(),
                        "forget_loss": f_loss.item(),
                        "retain_loss": r_val,
                    }
                )
                bar.update(1)
                bar.set_postfix(loss=f"{total.item():.3f}")
            if on_epoch is not None:
                with torch.no_grad():
                    on_epoch(stage, epoch)
    bar.close()
    result.steps[stage] = step


def _cycle(data: Encoded, batch_size: int, rng: random.Random) -> Iterator[Batch]:
    while True:
        order = list(range(len(data)))
        rng.shuffle(order)
        yield from data.batches(batch_size, order)


def balanced_epochs(
    model,
    forget_mask: Mapping[str, Tensor],
    conflict_mask: Mapping[str, Tensor] | None,
    epochs: tuple[int, int],
) -> tuple[tuple[int, int], str | None]:
    """Epochs per stage so that CLUE trains its whole budget whatever its mask sizes.

    A stage whose mask is empty (no forget node, or no conflict: the satisfiable case) cannot
    train; its epochs move to the other stage, which then trains ``sum(epochs)`` epochs with its
    own loss, so CLUE takes as many optimizer steps as a one-stage baseline on the same budget.
    Returns the epochs and a note saying what moved (None when nothing did).
    """
    empty = [not _entries(model, forget_mask), not _entries(model, conflict_mask or {})]
    total = epochs[0] + epochs[1]
    for stage, other in ((1, 2), (2, 1)):
        if empty[stage - 1] and not empty[other - 1] and epochs[stage - 1] > 0:
            moved = (0, total) if stage == 1 else (total, 0)
            note = (
                f"stage {stage} mask is empty: its {epochs[stage - 1]} epoch(s) go to stage "
                f"{other}, which trains {total} epoch(s) (equal step budget)"
            )
            return moved, note
    return epochs, None


def train_stages(
    model,
    stages: Sequence[Stage],
    retain: Sequence[str] | None,
    lr: float = 1e-5,
    batch_size: int = 8,
    seed: int = 0,
    beta: float = 0.1,
    weight_decay: float = 0.0,
    progress: bool = True,
    tokenizer=None,
    refusals: Sequence[str] | None = None,
    bf16: bool = False,
    on_epoch: EpochCallback | None = None,
    result: UnlearnResult | None = None,
    checkpointing: bool = False,
) -> UnlearnResult:
    """Train ``stages`` in order (stage ``i`` is numbered ``i + 1``), each on its own mask with
    its own forget loss, on one shared retain set; the trainer behind ``unlearn`` (CLUE),
    ``unlearn_baseline`` and the ablations of paper Table 2 (other stage orders and losses).

    Every NPO reference is computed before the first update (the model before unlearning).
    ``checkpointing``: gradient checkpointing of the decoder layers (less activation memory,
    about one more forward pass per step; the same updates up to float rounding).
    """
    tokenizer = tokenizer if tokenizer is not None else model.tokenizer
    result = result if result is not None else UnlearnResult()
    enc_r = encode_texts(tokenizer, retain) if retain else None
    prepared: dict[tuple[str, tuple[str, ...]], _Setup] = {}
    setups = []
    for st in stages:
        key = (st.loss, tuple(st.forget))
        if key not in prepared:
            prepared[key] = _prepare(
                model, st.forget, enc_r, st.loss, beta, batch_size, seed, progress,
                weight_decay, tokenizer, refusals, bf16, checkpointing,
            )  # fmt: skip
        setups.append(prepared[key])
    refs = [s.ref_nll for s in setups if s.ref_nll is not None]
    result.ref_nll = refs[0] if refs else None
    torch.manual_seed(seed)
    try:
        for number, (st, s) in enumerate(zip(stages, setups, strict=True), start=1):
            _run_stage(model, s, number, st.mask, st.epochs, lr, st.lam, result, on_epoch)
    finally:
        if checkpointing:  # a plain HF model is the caller's own: hand it back as it came
            for s in setups:
                s.net.gradient_checkpointing_disable()
                s.net.eval()
    return result


def unlearn(
    model,
    forget: Sequence[str],
    retain: Sequence[str] | None,
    forget_mask: Mapping[str, Tensor],
    conflict_mask: Mapping[str, Tensor] | None = None,
    loss: LossName = "po",
    epochs: tuple[int, int] = (1, 5),
    lr: float = 1e-5,
    lam: float = 1.0,
    batch_size: int = 8,
    seed: int = 0,
    beta: float = 0.1,
    weight_decay: float = 0.0,
    progress: bool = True,
    tokenizer=None,
    refusals: Sequence[str] | None = None,
    rebalance: bool = True,
    bf16: bool = False,
    on_epoch: EpochCallback | None = None,
    checkpointing: bool = False,
) -> UnlearnResult:
    """CLUE's two-stage masked unlearning, written in place into ``bridge.original_model``.

    Args:
        model: a TransformerBridge (or an HF causal LM, then pass ``tokenizer``).
        forget: forget *prompts* for ``loss="po"`` (a refusal is appended to each), forget
            *sentences* for ``"ga"`` / ``"npo"``; see ``forget_data``.
        retain: retain sentences (stage 2's retain loss); ``None`` for none.
        forget_mask: elements stage 1 may change (forget loss only).
        conflict_mask: elements stage 2 may change (forget + ``lam`` * retain loss); an empty
            or ``None`` mask skips stage 2 (the satisfiable case).
        epochs: epochs of stage 1 and stage 2; one epoch = one pass over ``forget`` in batches
            of ``batch_size`` (stage 2 draws one retain batch per step, cycling).
        rebalance: when one stage's mask is empty, give its epochs to the other stage
            (``balanced_epochs``; logged as a warning and kept in ``result.notes``), so that
            every method trains the same number of steps. An explicit 0-epoch stage is never
            rebalanced.
        lr, weight_decay: AdamW hyper-parameters (decay touches masked elements only).
        bf16: run the training forward and backward passes under bfloat16 autocast (about
            1.4x faster on a CPU with AVX512-BF16; weights, gradients and optimizer state stay
            float32, so masked-out weights stay bit-identical). Changes the numbers slightly.
        beta: NPO temperature.
        checkpointing: gradient checkpointing (see :func:`train_stages`).
        on_epoch: called as ``on_epoch(stage, epoch)`` after every epoch, under ``no_grad``
            (e.g. to evaluate along the way, as the operating-point sweep does).
    """
    result = UnlearnResult()
    if rebalance:
        epochs, note = balanced_epochs(model, forget_mask, conflict_mask, epochs)
        if note:
            log.warning("unlearn: %s", note)
            result.notes.append(note)
    result.epochs = tuple(epochs)
    stages = [
        Stage(forget_mask, loss, forget, epochs[0], 0.0),
        Stage(conflict_mask or {}, loss, forget, epochs[1], lam),
    ]
    return train_stages(
        model, stages, retain, lr, batch_size, seed, beta, weight_decay, progress,
        tokenizer, refusals, bf16, on_epoch, result, checkpointing,
    )  # fmt: skip


def unlearn_baseline(
    model,
    forget: Sequence[str],
    retain: Sequence[str] | None,
    mask: Mapping[str, Tensor],
    loss: LossName = "po",
    epochs: int = 6,
    lr: float = 1e-5,
    lam: float = 1.0,
    batch_size: int = 8,
    seed: int = 0,
    beta: float = 0.1,
    weight_decay: float = 0.0,
    progress: bool = True,
    tokenizer=None,
    refusals: Sequence[str] | None = None,
    bf16: bool = False,
    on_epoch: EpochCallback | None = None,
    checkpointing: bool = False,
) -> UnlearnResult:
    """One stage on ``mask`` with forget + ``lam`` * retain loss, for ``epochs`` epochs.

    The default budget (6 epochs) is the step count of CLUE's default 1 + 5; use ``lam=0`` for
    a forget-loss-only baseline. With ``full_mask`` this is plain fine-tuning (dense AdamW
    state over every weight, weight decay 0 by default). ``bf16``, ``on_epoch`` and
    ``checkpointing`` as in :func:`unlearn`.
    """
    return train_stages(
        model, [Stage(mask, loss, forget, epochs, lam)], retain, lr, batch_size, seed, beta,
        weight_decay, progress, tokenizer, refusals, bf16, on_epoch,
        UnlearnResult(epochs=(epochs,)), checkpointing,
    )  # fmt: skip


# ----------------------------------------------------------------------------- baseline masks


def _pool(model) -> list[tuple[str, nn.Parameter]]:
    """Parameters eligible for random / WAGLE masks: the per-layer attention and MLP matrices."""
    names = dict.fromkeys(v.slice.param for v in layer_matrices(model))
    return [(n, get_parameter(model, n)) for n in names]


def random_mask(model, size: int, seed: int = 0) -> Mask:
    """``size`` elements drawn uniformly without replacement from the ``_pool`` matrices."""
    import numpy as np

    pool = _pool(model)
    numels = np.array([p.numel() for _, p in pool])
    if not 0 <= size <= numels.sum():
        raise ValueError(f"size {size} outside 0..{int(numels.sum())}")
    counts = np.random.default_rng(seed).multivariate_hypergeometric(numels, size)
    gen = torch.Generator().manual_seed(seed)
    mask: Mask = {}
    for (name, param), k in zip(pool, counts, strict=True):
        if k == 0:
            continue
        flat = torch.zeros(param.numel(), dtype=torch.bool)
        flat[torch.randperm(param.numel(), generator=gen)[: int(k)]] = True
        mask[name] = flat.view(param.shape)  # host memory, as every Mask
    return mask


WAGLE_GAMMA = 1e-6
"""WAGLE's ``mu`` (our ``gamma``) in its published unlearning configs (``mu: 1e-06``)."""


def _mean_gradients(
    model, s: _Setup, data: Encoded, loss_fn, pool: list[tuple[str, nn.Parameter]]
) -> dict[str, Tensor]:
    """Gradient of ``loss_fn`` averaged over the batches of ``data``, for the pool matrices."""
    device = next(s.net.parameters()).device
    n_batches = math.ceil(len(data) / s.batch_size)
    with _only_grad_for(model, [p for _, p in pool]):
        for batch in data.batches(s.batch_size):
            (loss_fn(batch.to(device)) / n_batches).backward()
        return {n: p.grad.detach().clone() for n, p in pool if p.grad is not None}


def wagle_scores(
    model,
    forget: Sequence[str],
    loss: LossName = "po",
    batch_size: int = 8,
    tokenizer=None,
    refusals: Sequence[str] | None = None,
    retain: Sequence[str] | None = None,
    gamma: float = WAGLE_GAMMA,
) -> dict[str, Tensor]:
    """WAGLE weight attribution (Jia et al., 2024) over the ``_pool`` matrices.

    ``score = |(w - grad_r / gamma) * grad_f|``, WAGLE's first-order score as its released code
    computes it (``snip_advanced``): the influence of a weight on the forget loss at the weights
    a retain step of size ``1 / gamma`` reaches (``w - grad_r / gamma``, the lower level of
    WAGLE's bi-level problem with its Hessian approximated by ``gamma * I``). The mask keeps the
    largest scores. ``grad_f`` / ``grad_r`` are the forget / retain loss gradients averaged
    over the data (WAGLE sums them, which rescales gamma only); for NPO at ``theta = theta_ref``
    the gradient is proportional to GA's, so GA's is used. ``gamma`` defaults to WAGLE's
    published ``mu`` (1e-6), where the retain term dominates ``w``.

    Without ``retain`` the retain term is zero and the score is the forget saliency
    ``|w * grad_f|`` (the estimated change of the forget loss when a weight is zeroed).
    """
    if gamma <= 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    tokenizer = tokenizer if tokenizer is not None else model.tokenizer
    enc_r = encode_texts(tokenizer, retain) if retain else None
    forget_loss = "ga" if loss == "npo" else loss
    s = _prepare(
        model, forget, enc_r, forget_loss, 0.1, batch_size, 0, False, 0.0, tokenizer, refusals,
        bf16=False,
    )  # fmt: skip
    pool = _pool(model)
    grad_f = _mean_gradients(model, s, s.forget, lambda b: _forget_loss(s, b), pool)
    grad_r: dict[str, Tensor] = {}
    if s.retain is not None:
        grad_r = _mean_gradients(model, s, s.retain, lambda b: retain_loss(s.net, b), pool)
    params = dict(pool)
    scores = {}
    for name, g_f in grad_f.items():
        w = params[name].detach()
        if name in grad_r:
            w = w - grad_r[name] / gamma
        scores[name] = (w * g_f).abs()
    return scores


def wagle_mask(model, size: int, forget: Sequence[str], loss: LossName = "po", **kw) -> Mask:
    """The ``size`` elements of largest ``wagle_scores`` (``retain=`` for the full WAGLE score)."""
    return top_mask(wagle_scores(model, forget, loss, **kw), size)


def top_mask(scores: Mapping[str, Tensor], size: int) -> Mask:
    """The ``size`` elements of largest score over all of ``scores`` (one global ranking), so
    one set of WAGLE scores gives the masks of every forget ratio (paper Figure 6)."""
    names = list(scores)
    flat = torch.cat([scores[n].reshape(-1).float().cpu() for n in names])
    if not 0 <= size <= flat.numel():
        raise ValueError(f"size {size} outside 0..{flat.numel()}")
    keep = torch.zeros(flat.numel(), dtype=torch.bool)
    keep[torch.topk(flat, size, sorted=False).indices] = True
    mask: Mask = {}
    offset = 0
    for n in names:
        numel = scores[n].numel()
        part = keep[offset : offset + numel].view(scores[n].shape)
        offset += numel
        if part.any():
            mask[n] = part  # host memory, as every Mask
    return mask


def baseline_mask(
    model,
    kind: Literal["all", "random", "wagle", "nodes"],
    size: int | None = None,
    *,
    forget: Sequence[str] | None = None,
    loss: LossName = "po",
    nodes: Sequence[str] | None = None,
    seed: int = 0,
    batch_size: int = 8,
    tokenizer=None,
    retain: Sequence[str] | None = None,
) -> Mask:
    """Masks of the baselines (DESIGN.md §8).

    * ``"all"``: every parameter (full fine-tuning);
    * ``"random"``: ``size`` uniformly random elements of the attention / MLP matrices;
    * ``"wagle"``: the ``size`` elements of largest WAGLE score (``wagle_scores``; needs
      ``forget`` and ``loss``, and ``retain`` for the retain term: without it the score is
      the forget saliency ``|w * grad_f|``);
    * ``"nodes"``: every element owned by ``nodes`` (pass the union of the forget circuit's
      nodes for the "entangled" localization).

    Use ``masks.mask_size(clue_mask)`` as ``size`` to match CLUE's mask.
    """
    if kind == "all":
        return full_mask(model)
    if kind == "nodes":
        if nodes is None:
            raise ValueError("baseline 'nodes' needs nodes=")
        return mask_from_nodes(model, nodes)
    if size is None:
        raise ValueError(f"baseline {kind!r} needs size= (e.g. masks.mask_size(clue_mask))")
    if kind == "random":
        return random_mask(model, size, seed)
    if kind == "wagle":
        if forget is None:
            raise ValueError("baseline 'wagle' needs forget= (the forget data)")
        return wagle_mask(
            model, size, forget, loss, batch_size=batch_size, tokenizer=tokenizer, retain=retain
        )
    raise ValueError(f"unknown baseline {kind!r}; choose all, random, wagle or nodes")


# ----------------------------------------------------------------------------- export


def original_tokenizer(model) -> Any:
    """The tokenizer the model was distributed with, not the bridge's BOS-adding copy.

    TransformerBridge replaces a tokenizer that does not add BOS by a reloaded one with
    ``add_bos_token=True`` (for SmolLM2 the BOS is ``<|im_start|>``). Saving that copy would
    change how the exported checkpoint tokenizes (and double the BOS under the chat template),
    so we reload the original from the same local folder. If that fails, the bridge's tokenizer
    is used, with a warning.
    """
    from transformers import AutoTokenizer

    tok = model.tokenizer
    kwargs = {
        k: v for k, v in tok.init_kwargs.items() if k not in ("name_or_path", "add_bos_token")
    }
    kwargs["local_files_only"] = True
    try:
        return AutoTokenizer.from_pretrained(tok.name_or_path, **kwargs)
    except (OSError, ValueError, TypeError) as err:
        warnings.warn(
            f"could not reload the original tokenizer from {tok.name_or_path!r} ({err}); "
            "exporting the bridge's BOS-adding tokenizer instead",
            stacklevel=2,
        )
        return tok


def export_hf(model, out_dir: str | Path, tokenizer=None) -> Path:
    """Write the (unlearned) model as a standard HF checkpoint in a new folder.

    Reload with ``AutoModelForCausalLM.from_pretrained(out_dir)``. Parameter names are the
    plain HF ones (the bridge's ``_original_component`` aliases are not written); the tokenizer
    is ``original_tokenizer(model)`` unless given. Refuses an existing ``out_dir``; the model
    files it was loaded from are never touched.
    """
    from clue_mi.models import save_hf_checkpoint

    if tokenizer is None:
        tokenizer = original_tokenizer(model)
    return save_hf_checkpoint(plain_hf_model(model), tokenizer, out_dir)


__all__ = [
    "Batch",
    "Encoded",
    "LOSSES",
    "MaskedAdamW",
    "REFUSALS",
    "WAGLE_GAMMA",
    "UnlearnResult",
    "balanced_epochs",
    "baseline_mask",
    "encode_prompt_answers",
    "encode_texts",
    "export_hf",
    "forget_data",
    "ga_loss",
    "mean_nll",
    "npo_loss",
    "original_tokenizer",
    "po_loss",
    "random_mask",
    "reference_nll",
    "retain_data",
    "retain_loss",
    "sequence_nll",
    "token_nll",
    "unlearn",
    "unlearn_baseline",
    "wagle_mask",
    "wagle_scores",
]
