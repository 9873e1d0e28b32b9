"""A memory plan you can check before you start: peak bytes of each pipeline stage from a
model's Hugging Face ``config.json`` alone.

Pure arithmetic: no weights are loaded or allocated (:func:`resolve_config` reads a config,
fetching only ``config.json`` from the hub for a hub id). :func:`param_counts` counts the
parameters, :func:`stage_memory` predicts the peak memory of every
stage as this package allocates it, :func:`largest_fit` finds the largest training batch and
sequence length under a budget, and :func:`format_plan` prints a Markdown table.
``clue_mi/configs/`` holds the configs of the embedded model and of two 7B models
(:func:`bundled_config`). ``clue-mi plan`` prints it all.

Modelling assumptions, shared by every stage (each stage function documents its formula):

* **Weights** in ``dtype``: ``s`` = 4 bytes per element for float32, 2 for bfloat16 / float16.
  A tied ``lm_head`` is the embedding and is counted once (``load_model(dtype=...)``,
  ``--dtype``). **Gradients** are in the weight dtype. ``MaskedAdamW`` keeps its two moments in
  float32 whatever the weight dtype: ``2 x 4`` bytes per masked element.
* **The peak moment of each stage.** What is alive is modelled moment by moment and the
  stage's peak is the largest moment (a training step: the start of backward, its end, the
  optimizer step; attribution: its runs, its contraction), never the sum of tensors that are
  not alive together. Checked against the CPU allocator's measured peak on the embedded model,
  every stage, short and long sequences: predicted / measured 1.00-1.09
  (``benchmarks/plan_vs_measured.py``, BENCHMARKS.md). Kept on the safe side where the data
  decide: in training every per-layer attention / MLP matrix is assumed trainable, so every
  linear input is counted, and every such matrix gets a dense gradient (``_only_grad_for``
  turns on every parameter that holds a masked element, and CLUE's masks touch nearly all of
  them); every masked element is assumed to sit in a partly masked matrix (a 4-byte int32
  position each) unless ``whole_share`` says otherwise. Allocator slack, the CUDA context, the
  Python process, the tokenizer, the data and lm-eval's own structures are not counted: leave
  10-20% headroom.
* **Batches** are padded to full length: ``T`` = tokens of a batch = batch x sequence length.
  Symbols: ``d`` hidden size, ``L`` layers, ``H`` query heads, ``G`` KV heads, ``hd`` head
  dim, ``q = H hd``, ``kv = G hd``, ``I`` MLP width, ``V`` vocabulary, ``S = 1 + L (H + 1)``
  senders and ``R = L (H + 2G + 1) + 1`` receivers of the edge graph (``clue_mi.graph``), ``P``
  the elements of the per-layer attention and MLP weight matrices (the pool masks are drawn
  from), ``N`` every parameter.
* **Experiment context** (``experiment=True``, what ``clue-mi run`` / ``paper`` do): a
  ``WeightSnapshot`` copy of every weight and CLUE's forget and conflict masks (``2 P`` bool
  bytes) are alive from the localization on, so in every stage but faithfulness (attribution
  counts them because re-localization runs after CLUE). On the CPU they count under weights and
  buffers; on an accelerator (``device``) they are in host memory (``StageEstimate.host``), as
  are every mask, faithfulness's reference runs and WAGLE's top-k.
* **Attention**: training and evaluation run through a plain HF model with
  ``attn_implementation="sdpa"`` (``models.plain_hf_model``): no ``[b, H, p, p]`` scores are
  kept (assumed: SDPA's flash / memory-efficient kernels; were the math fallback chosen, price
  it with ``attention="eager"``), only a bool padding mask ``[b, 1, p, p]``; with a
  padding mask and ``G < H`` transformers repeats k and v to every query head before SDPA
  (``repeat_kv``), so they count ``q`` each. ``attention="eager"`` adds the kept
  probabilities (``s H p`` per token and layer). Attribution always runs through the bridge,
  whose attention is eager (TransformerLens forces it).
* GPT-2 (``n_embd`` / ``n_layer`` / ``n_head``) is counted exactly by :func:`param_counts`;
  its activations use the same formulas with ``G = H``, LayerNorm kept in the weight dtype and
  ``I``-sized tensors per MLP counted from ``gelu_new``, which is written out in Python (5 in
  training, 4 with frozen weights).

Numbers printed in GB are 10^9 bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = [
    "GB",
    "Fit",
    "ModelShape",
    "StageEstimate",
    "bundled_config",
    "format_plan",
    "largest_fit",
    "model_shape",
    "param_counts",
    "peak",
    "resolve_config",
    "stage_memory",
]

GB = 10**9
DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}
BUFFER_BYTES = 4
"""Attribution buffers are ``torch.zeros(...)`` with the default dtype: float32 always."""
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "gpt2")
"""The model types ``clue_mi.models`` maps (``models.SUPPORTED_MODEL_TYPES``)."""
BRIDGE_SLOT_COPIES = 4
"""Copies of the widest per-head slot ``[b, p, H, d]`` (4 bytes each) one bridge layer holds while
it runs: ``einops.repeat(...).contiguous()``, our receiver hook's clone, the per-head RMSNorm's
float32 upcast and normalised value (or, later, the per-head results, the sender record's
temporary and their gradients)."""
CONFIG_DIR = Path(__file__).parent / "configs"
STEP_CHUNK = 1 << 24
"""``unlearn.STEP_CHUNK``: masked elements ``MaskedAdamW`` updates per fused call (kept here so
that planning imports no torch)."""


# ----------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class ModelShape:
    """The sizes a plan needs, read from an HF config (see :func:`model_shape`)."""

    model_type: str
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_mlp: int
    vocab: int
    tied: bool
    gated: bool  # gate/up/down MLP (Llama family); GPT-2 has up (c_fc) and down only
    n_positions: int  # learned positions (GPT-2) or max_position_embeddings
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def n_senders(self) -> int:
        """``input``, every head and every MLP (``graph.ComputationGraph.senders``)."""
        return 1 + self.n_layers * (self.n_heads + 1)

    @property
    def n_receivers(self) -> int:
        """Every q, every KV group's k and v, every MLP, and ``logits``."""
        return self.n_layers * (self.n_heads + 2 * self.n_kv_heads + 1) + 1


def _get(config: Mapping[str, Any], *keys: str, default: Any = None) -> Any:
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    return default


def model_shape(config: Mapping[str, Any]) -> ModelShape:
    """Read the sizes from an HF config dict (Llama, Mistral, Qwen2, or GPT-2 key names).

    Raises ``ValueError`` for a model type clue_mi's graph and mask code do not map.
    """
    model_type = str(config.get("model_type") or ("gpt2" if "n_embd" in config else "llama"))
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"model_type {model_type!r} is not supported by clue_mi (supported: "
            f"{', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    if model_type == "gpt2":
        d, heads = int(config["n_embd"]), int(config["n_head"])
        return ModelShape(
            model_type, d, int(config["n_layer"]), heads, heads, d // heads,
            int(_get(config, "n_inner", default=4 * d)), int(config["vocab_size"]),
            bool(_get(config, "tie_word_embeddings", default=True)), False,
            int(_get(config, "n_positions", default=1024)), True, True, True,
        )  # fmt: skip
    d, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    bias = bool(config.get("attention_bias", False))
    return ModelShape(
        model_type, d, int(config["num_hidden_layers"]), heads,
        int(_get(config, "num_key_value_heads", default=heads)),
        int(_get(config, "head_dim", default=d // heads)), int(config["intermediate_size"]),
        int(config["vocab_size"]), bool(config.get("tie_word_embeddings", False)), True,
        int(_get(config, "max_position_embeddings", default=4096)),
        bias or model_type == "qwen2", bias, bool(config.get("mlp_bias", False)),
    )  # fmt: skip


def param_counts(config: Mapping[str, Any]) -> dict[str, int]:
    """Parameter counts of the HF model a config describes, biases included where it has them.

    Keys: ``embedding`` (``V d``), ``position_embedding`` (GPT-2 only), ``q``, ``k``, ``v``,
    ``o``, ``gate``, ``up``, ``down`` (summed over layers; GPT-2's fused ``c_attn`` split into
    its q, k, v blocks, its ``gate`` 0), ``norms`` (every layer's and the final norm; LayerNorm
    has weight and bias), ``lm_head`` (0 when tied to the embedding), ``per_layer`` (one
    decoder layer), ``layer_matrices`` (``P``: the attention and MLP weight matrices without
    biases, the pool of ``masks.layer_matrices``, ``unlearn.random_mask`` and WAGLE) and
    ``total`` (every distinct parameter, ``N``).
    """
    m = model_shape(config)
    d, n, q, kv, i = m.d_model, m.n_layers, m.q_dim, m.kv_dim, m.d_mlp
    if m.model_type == "gpt2":
        kinds = {
            "q": d * d + d, "k": d * d + d, "v": d * d + d, "o": d * d + d,
            "gate": 0, "up": d * i + i, "down": i * d + d,
        }  # fmt: skip
        norms_layer, final_norm, positions = 4 * d, 2 * d, m.n_positions * d
    else:
        qkv_b, o_b, mlp_b = int(m.qkv_bias), int(m.o_bias), int(m.mlp_bias)
        kinds = {
            "q": d * q + q * qkv_b, "k": d * kv + kv * qkv_b, "v": d * kv + kv * qkv_b,
            "o": q * d + d * o_b, "gate": d * i + i * mlp_b, "up": d * i + i * mlp_b,
            "down": i * d + d * mlp_b,
        }  # fmt: skip
        norms_layer, final_norm, positions = 2 * d, d, 0
    per_layer = sum(kinds.values()) + norms_layer
    embedding = m.vocab * d
    lm_head = 0 if m.tied else m.vocab * d
    mlp_mats = (3 if m.gated else 2) * d * i
    matrices = n * (2 * d * q + 2 * d * kv + mlp_mats)
    out = {"embedding": embedding, "position_embedding": positions}
    out |= {kind: n * count for kind, count in kinds.items()}
    out |= {
        "norms": n * norms_layer + final_norm,
        "lm_head": lm_head,
        "per_layer": per_layer,
        "layer_matrices": matrices,
        "total": embedding + positions + n * per_layer + final_norm + lm_head,
    }
    return out


def _largest_matrix(m: ModelShape) -> int:
    return max(m.d_model * m.q_dim, m.d_model * m.d_mlp)


def bundled_config(name: str) -> dict[str, Any]:
    """A config shipped in ``clue_mi/configs`` (``"zephyr-7b-beta"``, ``"llama-2-7b"``)."""
    path = CONFIG_DIR / f"{name.removesuffix('.json')}.json"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))
        raise ValueError(f"no bundled config {name!r} (bundled: {known})")
    return json.loads(path.read_text())


def resolve_config(model: str | None) -> tuple[dict[str, Any], str]:
    """The ``config.json`` of ``model`` as ``clue-mi plan --model`` reads it, and a label.

    ``None`` / ``"smollm2"``: the embedded model's (shipped). ``"tiny-llama"``: the test model's.
    A local model folder (its ``config.json``) or a ``.json`` file. A shipped config by name
    (:func:`bundled_config`). Otherwise a hub id, whose ``config.json`` alone is fetched (never
    the weights) unless ``HF_HUB_OFFLINE`` is set. Raises ``ValueError`` with one line.
    """
    if model is None or model.lower() in ("smollm2", "smollm2-135m-instruct"):
        return bundled_config("smollm2-135m-instruct"), "SmolLM2-135M-Instruct (embedded)"
    if model == "tiny-llama":
        from clue_mi.models import tiny_hf_model

        return tiny_hf_model().config.to_dict(), model
    path = Path(model).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return json.loads((path / "config.json").read_text()), path.name
    if path.is_file() and path.suffix == ".json":
        return json.loads(path.read_text()), path.stem
    if (CONFIG_DIR / f"{model.removesuffix('.json')}.json").is_file():
        return bundled_config(model), f"{model} (shipped config)"
    shipped = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))
    if path.exists() or str(model).startswith((".", "/", "~")) or model.count("/") > 1:
        raise ValueError(f"--model {model}: neither a model folder with config.json nor a .json")
    import os

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise ValueError(
            f"--model {model}: not a local folder or shipped config ({shipped}), and the hub is "
            "off (HF_HUB_OFFLINE)"
        )
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(model, "config.json")).read_text()), model
    except Exception as err:  # offline, no such repo, gated: say which, in one line
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(
            f"--model {model}: not a local folder or shipped config ({shipped}), and the hub "
            f"did not serve its config.json ({detail})"
        ) from None


# ----------------------------------------------------------------------------- estimates


@dataclass(frozen=True)
class StageEstimate:
    """Predicted peak bytes of one stage on its device; ``bytes`` is the sum of ``breakdown``.

    ``breakdown`` keys: ``weights`` (model, plus the run's snapshot copy on the CPU),
    ``gradients``, ``optimizer`` (moments and int32 positions), ``activations`` (kept for
    backward, plus the largest transient), ``buffers`` (attribution buffers, masks, padding
    masks, temporaries). ``host``: bytes the stage keeps in host memory instead when the device
    is an accelerator (the snapshot, masks, faithfulness's reference runs, WAGLE's top-k).
    """

    name: str
    bytes: int
    breakdown: dict[str, int] = field(default_factory=dict)
    note: str = ""
    host: int = 0


PARTS = ("weights", "gradients", "optimizer", "activations", "buffers")


def _estimate(name: str, note: str, host: int = 0, **parts: int) -> StageEstimate:
    breakdown = {k: int(parts.get(k, 0)) for k in PARTS}
    return StageEstimate(name, sum(breakdown.values()), breakdown, note, int(host))


def _dtype_bytes(dtype: str) -> int:
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_BYTES)}, got {dtype!r}")
    return DTYPE_BYTES[dtype]


def _kv_seen(m: ModelShape) -> int:
    """Width of k (and of v) as attention sees it: repeated to every query head under GQA."""
    return m.q_dim if m.n_kv_heads < m.n_heads else m.kv_dim


def _norm_input_bytes(m: ModelShape, s: int) -> int:
    """RMSNorm keeps its input upcast to float32; GPT-2's LayerNorm keeps it as it is."""
    return s if m.model_type == "gpt2" else 4


def train_layer_bytes(m: ModelShape, s: int, seq_len: int, attention: str = "sdpa") -> int:
    """Bytes one decoder layer keeps for backward, per token, in training (HF model, no
    checkpointing, every linear weight of the layer trainable):

    ``2 n d`` (both norm inputs, ``n`` = 4 for RMSNorm's float32 upcast) + ``s (2d + q + 2 kv'
    + q)`` (both norm outputs, q after RoPE, k and v as SDPA sees them with ``kv' = q`` when
    ``G < H``, the SDPA output, which ``o_proj`` reads without a copy) + ``4 H`` (SDPA's float32
    log-sum-exp) + ``s 4 I`` (gate output, SiLU output, up output, their product; GPT-2:
    ``5 I``) + ``s p`` (the attention mask SDPA is handed in the weight dtype and keeps, ``s b
    p^2`` per layer), + ``s H p`` probabilities with ``attention="eager"``. Measured on the
    embedded model (``benchmarks/plan_vs_measured.py``): every term is an allocation the CPU
    kernels make and keep.
    """
    d, q = m.d_model, m.q_dim
    kept = 2 * _norm_input_bytes(m, s) * d + s * (2 * d + q + 2 * _kv_seen(m) + q)
    kept += 4 * m.n_heads + s * (4 if m.gated else 5) * m.d_mlp + s * seq_len
    if attention == "eager":
        kept += s * m.n_heads * seq_len
    return kept


def bridge_layer_bytes(m: ModelShape, s: int, seq_len: int) -> int:
    """Bytes one layer of the TransformerBridge keeps for backward, per token, in an attribution
    run with gradients (split q/k/v inputs, per-head results and ``hook_mlp_in`` on).

    The weights are frozen, so autograd keeps no linear layer's input (its only use would be the
    weight's gradient; PyTorch saves a tensor only for the gradients it will compute), and the
    per-head results ``[b, p, H, d]`` are not kept (a frozen projection, then a sum). Kept:
    ``4 (H + 2G) d`` (the float32 input of the per-head RMSNorm of every q/k/v fork: the norm
    re-normalises each head's copy of the pre-LN residual) + ``s (q + 2 kv')`` (q after RoPE;
    k and v repeated to every query head, as the bridge's eager attention does whenever
    ``G < H``) + ``(4 + s') H p`` (the float32 softmax probabilities, plus their weight-dtype copy,
    ``s' = s``, when ``s < 4``) + ``n d + s 3I`` (the MLP norm's input, ``n`` = 4 for RMSNorm;
    SiLU input, SiLU output, up output; GPT-2: ``4I``, ``gelu_new``'s kept terms).
    Read from TransformerLens 4.3 (``position_embeddings_attention.py``); measured on the
    embedded model, where the runs are the attribution peak at the default run's prompts.
    """
    d, h = m.d_model, m.n_heads
    norm_in = _norm_input_bytes(m, s)
    forks = norm_in * (h + 2 * m.n_kv_heads) * d
    attention = s * (m.q_dim + 2 * _kv_seen(m)) + (4 + (s if s < 4 else 0)) * h * seq_len
    mlp = norm_in * d + s * (3 if m.gated else 4) * m.d_mlp
    return forks + attention + mlp


def bridge_transient_bytes(m: ModelShape) -> int:
    """Bytes per token one bridge layer holds only while it runs (forward or backward):
    :data:`BRIDGE_SLOT_COPIES` x ``4 H d``."""
    return BRIDGE_SLOT_COPIES * 4 * m.n_heads * m.d_model


def _kept_bytes(
    m: ModelShape,
    s: int,
    batch: int,
    seq_len: int,
    checkpointing: bool,
    attention: str,
    all_weights: bool,
) -> int:
    """Bytes one batch's graph keeps from its forward until backward reaches it:
    ``T (L a + n d + 4V)`` with ``a`` = :func:`train_layer_bytes`, ``n d`` the final norm's
    input and ``4V`` the float32 log-softmax ``token_nll`` keeps
    (``logits[:, :-1].float().log_softmax(-1)``); with ``all_weights`` (norm weights and
    ``lm_head`` / the tied embedding trained too) also each norm's normalised value and the
    ``lm_head`` input, ``s (2L + 1) d``. With ``checkpointing`` a layer keeps only its input,
    ``s d``."""
    d = m.d_model
    per_layer = s * d if checkpointing else train_layer_bytes(m, s, seq_len, attention)
    tail = _norm_input_bytes(m, s) * d + 4 * m.vocab
    if all_weights:
        per_layer += 0 if checkpointing else 2 * s * d
        tail += s * d
    return batch * seq_len * (m.n_layers * per_layer + tail)


def _training_phases(
    m: ModelShape,
    s: int,
    batches: Sequence[tuple[int, int]],
    *,
    grads: int,
    step: int,
    checkpointing: bool,
    attention: str,
    all_weights: bool,
) -> dict[str, dict[str, int]]:
    """What is alive, beyond weights, optimizer state and masks, at the three moments where a
    training step can peak (per part of :data:`PARTS`):

    * **backward start**: every batch's kept graph (the loss sums ``batches``; stage 2 runs
      the forget and the retain forward before one backward), plus the loss head's backward,
      ``2 x 4 V T`` of the largest batch (gradients of the log-probs and of the logits), or one
      layer's backward working set ``T a`` if larger (with ``checkpointing`` the recomputed
      layer too), plus the ``lm_head`` gradient ``s V d`` when it trains;
    * **backward end**: every gradient, and the graphs of all batches but the last (autograd
      runs the last-built graph first and holds each shared parameter's gradient until every
      graph has given its part), one layer's working set, and with ``all_weights`` on a tied
      embedding two more ``s V d`` parts of its gradient waiting to be summed;
    * **optimizer step**: every gradient and the step's float32 copies (:func:`_step_transient`).

    Activations are freed as backward walks down the layers while gradients are allocated, so
    activations and gradients are not summed: the peak is the largest of the three. Measured on
    the embedded model within 20% (BENCHMARKS.md).
    """
    kept = [_kept_bytes(m, s, b, p, checkpointing, attention, all_weights) for b, p in batches]
    tokens = max(b * p for b, p in batches)
    layer = tokens * train_layer_bytes(m, s, max(p for _, p in batches), attention)
    work = max(2 * 4 * m.vocab * tokens, layer * (2 if checkpointing else 1))
    head_grad = s * m.vocab * m.d_model if all_weights else 0
    tied = 2 * s * m.vocab * m.d_model if all_weights and m.tied else 0
    return {
        "backward start": {"gradients": head_grad, "activations": sum(kept) + work},
        "backward end": {"gradients": grads + tied, "activations": sum(kept[:-1]) + layer},
        "optimizer step": {"gradients": grads, "buffers": step},
    }


def _padding_masks(batches: Sequence[tuple[int, int]], s: int, attention: str) -> int:
    """The 4D padding mask of each batch: bool for SDPA, weight dtype for eager."""
    per = 1 if attention == "sdpa" else s
    return sum(batch * seq_len * seq_len * per for batch, seq_len in batches)


def _optimizer_bytes(elements: int, positions: int) -> int:
    """``MaskedAdamW``: two float32 moments per masked element (whatever the weight dtype),
    plus an int32 position per masked element of a partly masked matrix (a whole one needs
    none)."""
    return 2 * 4 * elements + 4 * positions


def _step_transient(m: ModelShape, s: int, elements: int, positions: int, every: bool) -> int:
    """Float32 copies ``MaskedAdamW.step`` makes of one chunk (:data:`STEP_CHUNK` elements,
    plus one parameter): gathered values and gradients of partly masked matrices (8 bytes per
    element); for half-precision weights also of whole ones, and the rounded values written
    back (``s``, one parameter at a time). A whole float32 matrix is updated in place."""
    largest = max(_largest_matrix(m), m.vocab * m.d_model) if every else _largest_matrix(m)
    copied = elements if s < 4 else positions
    return 8 * min(copied, STEP_CHUNK + largest) + (s * min(elements, largest) if s < 4 else 0)


def _train_stage(
    name: str,
    note: str,
    m: ModelShape,
    s: int,
    *,
    elements: int,
    positions: int,
    grad_elements: int,
    batches: Sequence[tuple[int, int]],
    weights: int,
    masks: int,
    checkpointing: bool,
    attention: str,
    all_weights: bool = False,
) -> StageEstimate:
    """A ``MaskedAdamW`` stage: weights, the optimizer state of ``elements`` masked elements,
    masks and padding masks, plus the largest of :func:`_training_phases` (named in the note);
    dense gradients of every touched parameter (``grad_elements``)."""
    if elements == 0:  # ``_run_stage`` returns before building anything
        return _estimate(name, note + " (empty mask: trains nothing)", weights=weights,
                         buffers=masks)  # fmt: skip
    phases = _training_phases(
        m, s, batches, grads=s * grad_elements,
        step=_step_transient(m, s, elements, positions, all_weights),
        checkpointing=checkpointing, attention=attention, all_weights=all_weights,
    )  # fmt: skip
    when, alive = max(phases.items(), key=lambda kv: sum(kv[1].values()))
    return _estimate(
        name,
        f"{note}; peak at {when}",
        weights=weights,
        optimizer=_optimizer_bytes(elements, positions),
        gradients=alive.get("gradients", 0),
        activations=alive.get("activations", 0),
        buffers=masks + _padding_masks(batches, s, attention) + alive.get("buffers", 0),
    )


def _check_args(
    batch: int, seq_len: int, mask_ratio: float, forget_ratio: float, attention: str
) -> None:
    if batch < 1 or seq_len < 1:
        raise ValueError(f"batch and seq_len must be >= 1, got {batch} and {seq_len}")
    if not 0.0 <= forget_ratio <= mask_ratio <= 1.0:
        raise ValueError(
            f"need 0 <= forget_ratio <= mask_ratio <= 1, got {forget_ratio} and {mask_ratio}"
        )
    if attention not in ("sdpa", "eager"):
        raise ValueError(f"attention must be 'sdpa' or 'eager', got {attention!r}")


def stage_memory(
    config: Mapping[str, Any],
    *,
    dtype: str = "float32",
    batch: int = 8,
    seq_len: int = 32,
    mask_ratio: float = 0.746,
    forget_ratio: float = 0.009,
    whole_share: float = 0.0,
    retain: bool = True,
    attribution_batch: int = 16,
    prompt_len: int | None = None,
    n_prompts: int = 32,
    eval_batch: int = 32,
    eval_seq_len: int | None = None,
    checkpointing: bool = False,
    attention: str = "sdpa",
    experiment: bool = True,
    baselines: bool = True,
    device: str = "cuda",
) -> list[StageEstimate]:
    """Predicted peak memory of every stage of the pipeline, in pipeline order.

    Args:
        config: an HF ``config.json`` as a dict.
        dtype: the weight dtype (``float32``, ``bfloat16`` / ``bf16``, ``float16`` / ``fp16``).
        batch, seq_len: training batch (``--train-batch-size``, default 8) and the length every
            sequence is padded to (training text; also attribution prompts and evaluation text
            unless ``prompt_len`` / ``eval_seq_len`` say otherwise).
        mask_ratio: fraction of ``P`` in CLUE's forget ∪ conflict masks (the unlearned-parameter
            ratio; the default run's is 0.746, README) and the size of the baselines' masks.
        forget_ratio: fraction of ``P`` in the forget mask (stage 1; default run 0.009);
            the conflict mask (stage 2) holds ``mask_ratio - forget_ratio``.
        whole_share: share of the conflict mask's elements that lie in matrices it masks
            whole, which need no int32 positions. 0 (the default) is the upper bound; CLUE's
            conflict masks hold whole MLPs (29 of 30 on the embedded model, README), so the
            MLP share of ``P`` (``param_counts``) times that fraction is a closer value.
        retain: stage 2 and the baselines add a retain batch to every step (``lam != 0``).
        attribution_batch, prompt_len, n_prompts: attribution batch (``--batch-size``,
            default 16), prompt length, and the held-out prompts faithfulness keeps runs of.
        eval_batch, eval_seq_len: evaluation batch (``evaluate_model``: 32) and text length.
        checkpointing: price training with per-layer gradient checkpointing (what
            ``--gradient-checkpointing`` turns on).
        attention: ``"sdpa"`` (what training and evaluation use) or ``"eager"``.
        experiment: count the run's weight snapshot and CLUE masks (module docstring).
        baselines: add the WAGLE scoring and the two baseline training stages of the run.
        device: ``"cpu"`` counts every byte in the one memory there is; an accelerator
            (``"cuda"``, the default) keeps the snapshot, every mask, faithfulness's reference
            runs and WAGLE's top-k in host memory (``StageEstimate.host``), as the code does.

    Masked elements are ``round(ratio x P)``. Stages (each docstring of the helper functions
    states its formula): attribution, faithfulness, training stage 1 and 2, [WAGLE scores,
    baseline mask training, training all weights], evaluation.
    """
    _check_args(batch, seq_len, mask_ratio, forget_ratio, attention)
    if not 0.0 <= whole_share <= 1.0:
        raise ValueError(f"whole_share must be in [0, 1], got {whole_share}")
    m = model_shape(config)
    s = _dtype_bytes(dtype)
    counts = param_counts(config)
    pool, total = counts["layer_matrices"], counts["total"]
    weights = s * total
    accelerator = not device.startswith("cpu")

    def resident(nbytes: int) -> tuple[int, int]:
        """(device, host) bytes of what the run keeps in host memory on an accelerator: the
        snapshot (``WeightSnapshot``) and every mask (``Mask``)."""
        return (0, nbytes) if accelerator else (nbytes, 0)

    snapshot, snapshot_host = resident(weights if experiment else 0)
    clue_masks, clue_masks_host = resident(2 * pool if experiment else 0)
    p_len = prompt_len or seq_len
    e_len = eval_seq_len or seq_len
    f_elems = round(forget_ratio * pool)
    c_elems = round((mask_ratio - forget_ratio) * pool)
    u_elems = round(mask_ratio * pool)
    forget_only = [(batch, seq_len)]
    both = [(batch, seq_len)] * (2 if retain else 1)
    trained = weights + snapshot  # the snapshot lives from the localization on

    def train(name: str, note: str, elements: int, positions: int, **kw: Any) -> StageEstimate:
        defaults: dict[str, Any] = {"grad_elements": pool, "batches": both, "masks": clue_masks}
        kw = defaults | kw
        return _train_stage(
            name, note, m, s, elements=elements, positions=positions, weights=trained,
            checkpointing=checkpointing, attention=attention, **kw,
        )  # fmt: skip

    def partial(elements: int, ratio: float, whole: float = 0.0) -> int:
        """int32 positions: none when the whole pool is masked."""
        return 0 if ratio == 1.0 else round((1.0 - whole) * elements)

    def on_host(st: StageEstimate, own_masks: int = 0) -> StageEstimate:
        """Add the host memory of the snapshot, CLUE's masks and the stage's own mask."""
        host = snapshot_host + clue_masks_host + resident(own_masks)[1]
        return replace(st, host=st.host + host)

    stages = [
        on_host(_attribution(m, s, attribution_batch, p_len, trained, clue_masks)),
        _faithfulness(m, s, attribution_batch, p_len, n_prompts, weights, accelerator),
        on_host(train("train stage 1 (forget mask)", "forget loss; forget batch only", f_elems,
                      partial(f_elems, forget_ratio), batches=forget_only)),
        on_host(train("train stage 2 (conflict mask)", "forget + retain loss", c_elems,
                      partial(c_elems, mask_ratio - forget_ratio, whole_share))),
    ]  # fmt: skip
    if baselines:
        stages += [
            on_host(_wagle(m, s, batch, seq_len, pool, u_elems, trained, clue_masks,
                           accelerator)),
            on_host(train("train: baseline mask (random / WAGLE / nodes)", "same ratio as CLUE",
                          u_elems, partial(u_elems, mask_ratio),
                          masks=clue_masks + resident(pool)[0]), pool),
            on_host(train("train: all weights", "dense AdamW over every parameter", total, 0,
                          grad_elements=total, masks=clue_masks + resident(total)[0],
                          all_weights=True), total),
        ]  # fmt: skip
    stages.append(on_host(_evaluation(m, s, eval_batch, e_len, trained, clue_masks)))
    return stages


def _attribution(
    m: ModelShape, s: int, batch: int, seq_len: int, weights: int, masks: int
) -> StageEstimate:
    """EAP / EAP-IG of both directions (``attribution.attribute_both``), one batch at a time.

    The larger of two moments. **Runs**: the float32 buffers, the sender difference
    ``[b, p, S, d]`` and one receiver-gradient buffer ``[b, p, R, d]`` per direction,
    ``4 T d (S + 2R)``, plus one gradient-carrying bridge run (the other run has no gradient;
    EAP-IG's steps each free their graph): ``T (L b + 3 s d)`` with ``b`` =
    :func:`bridge_layer_bytes` and the kept embeddings, and the layer at work, ``T (b + t)``
    with ``t`` = :func:`bridge_transient_bytes`. **Contraction** (the runs are freed):
    ``einsum("bpsd,bprd->sr")`` on the buffers and the contiguous copies einsum makes of both
    operands, ``4 T d (2S + 3R)``. Both add the float64 pair accumulators of both directions,
    both float32 einsum results and one float64 copy, ``(2 x 8 + 2 x 4 + 8) S R``. ``"exact"``
    patching is not modelled (it repeats each batch 16 times, without gradients).
    """
    tokens = batch * seq_len
    pairs = (2 * 8 + 2 * 4 + 8) * m.n_senders * m.n_receivers
    buffers = BUFFER_BYTES * tokens * m.d_model * (m.n_senders + 2 * m.n_receivers)
    layer = bridge_layer_bytes(m, s, seq_len)
    at_work = layer + bridge_transient_bytes(m)
    runs = tokens * (m.n_layers * layer + 3 * s * m.d_model + at_work)
    contraction = BUFFER_BYTES * tokens * m.d_model * (2 * m.n_senders + 3 * m.n_receivers)
    name = "attribution (EAP / EAP-IG, both directions)"
    shape = f"batch {batch} x {seq_len} tokens"
    if buffers + runs >= contraction:
        return _estimate(name, f"{shape}; peak in the runs", weights=weights, activations=runs,
                         buffers=buffers + pairs + masks)  # fmt: skip
    return _estimate(name, f"{shape}; peak at the contraction", weights=weights,
                     buffers=contraction + pairs + masks)  # fmt: skip


FAITHFULNESS_PATCHED_SENDERS = 0.5
"""Senders one patched receiver slot gathers, as a fraction of ``S``: a circuit run sums the
smaller of the slot's kept and excluded sender sets (``attribution._circuit_patch``), at most
about half of them unless the slot's heads disagree on every sender."""


def _faithfulness(
    m: ModelShape,
    s: int,
    batch: int,
    seq_len: int,
    n_prompts: int,
    weights: int,
    accelerator: bool = False,
) -> StageEstimate:
    """Circuit runs on the held-out prompts (``attribution.faithfulness``), no gradients.

    ``_reference_runs`` keeps the corrupted run's senders and receivers of *every* batch,
    ``4 n p d (S + R)`` for ``n`` prompts, and the clean and corrupted final-position logits,
    ``2 x 4 n V``; the circuit batch's logits ``4 b V``. On top, the larger of the circuit run,
    a sender-difference buffer ``4 T S d``, per patched slot the gathered differences of
    ``k`` = :data:`FAITHFULNESS_PATCHED_SENDERS` ``S`` senders and einsum's contiguous copy,
    and the slot's terms, new input and patched input, ``4 T d (2k + 3H)``, and one bridge layer
    in flight (``T (b + t)``, no graph kept); and the KL in float64, five ``[b, V]`` tensors
    (``8 x 5 b V``). Runs before the snapshot exists. On an accelerator the reference runs
    are in host memory and only the batch at work's, ``4 b p d (S + R)``, is on the device.
    """
    tokens = batch * seq_len
    refs = BUFFER_BYTES * n_prompts * seq_len * m.d_model * (m.n_senders + m.n_receivers)
    host = refs if accelerator else 0
    if accelerator:
        refs = refs * min(batch, n_prompts) // n_prompts
    logits = 4 * m.vocab * (2 * n_prompts + batch)
    k = round(FAITHFULNESS_PATCHED_SENDERS * m.n_senders)
    run = BUFFER_BYTES * tokens * m.d_model * (m.n_senders + 2 * k + 3 * m.n_heads)
    run += tokens * (bridge_layer_bytes(m, s, seq_len) + bridge_transient_bytes(m))
    kl = 8 * 5 * batch * m.vocab
    return _estimate(
        "faithfulness (circuit runs)",
        f"{n_prompts} held-out prompts x {seq_len} tokens",
        host=host,
        weights=weights,
        activations=max(run, kl),
        buffers=refs + logits,
    )


def _wagle(
    m: ModelShape,
    s: int,
    batch: int,
    seq_len: int,
    pool: int,
    elements: int,
    weights: int,
    masks: int,
    accelerator: bool = False,
) -> StageEstimate:
    """WAGLE scores and their top-k (``unlearn.wagle_scores``, ``top_mask``).

    The largest of (a) the retain-gradient pass: ``grad_f`` kept and ``param.grad``
    accumulating, ``2 s P``, plus the start of one batch's backward (:func:`_training_phases`);
    (b) scoring: ``grad_f``, ``param.grad``'s clone ``grad_r`` and the scores, ``3 s P``, and
    two temporaries of the largest matrix; (c) ``top_mask``: the scores ``s P``, their float32
    concatenation ``4 P``, the bool keep vector ``P`` and ``topk``'s values and int64 indices
    ``12 k``, all but the scores in host memory on an accelerator.
    """
    start = _training_phases(m, s, [(batch, seq_len)], grads=0, step=0, checkpointing=False,
                             attention="sdpa", all_weights=False)["backward start"]  # fmt: skip
    note = "gradients of forget and retain loss, then top-k"
    topk = (4 + 1) * pool + 12 * elements  # float32 concatenation, keep vector, topk's output
    topk_device, host = (0, topk) if accelerator else (topk, 0)
    options = [
        {"gradients": 2 * s * pool, "activations": start["activations"]},
        {"gradients": 3 * s * pool, "buffers": 2 * s * _largest_matrix(m)},
        {"buffers": s * pool + topk_device},
    ]
    top = max(options, key=lambda parts: sum(parts.values()))
    return _estimate("mask: WAGLE scores", note, host=host, weights=weights,
                     **(top | {"buffers": masks + top.get("buffers", 0)}))  # fmt: skip


def _evaluation(
    m: ModelShape, s: int, batch: int, seq_len: int, weights: int, masks: int
) -> StageEstimate:
    """``evaluate_model``: forward passes only (``no_grad``), batch 32, plain HF model.

    Per token, the larger of one layer in flight, ``s (2d + max(3q + 2kv', 3I))`` (+ ``4d`` for
    a norm's float32 upcast when ``s < 4``), and the unembedding, where HF computes logits at
    every position: the MIA's ``token_logprobs`` holds the float32 logits (the weight-dtype
    ones are freed by then), their log-softmax and still the previous batch's log-softmax,
    ``12 V``; lm-eval, a log-softmax in the weight dtype, the logits and the previous batch's,
    ``3 s V``, no more. Plus the residual ``s d`` and the bool padding mask ``b p^2`` (MIA,
    Rouge-L and lm-eval pad). ``final_logits`` and greedy decoding unembed the last position
    only.
    """
    d = m.d_model
    upcast = 4 * d if s < 4 and m.model_type != "gpt2" else 0
    layer = s * (2 * d + max(3 * m.q_dim + 2 * _kv_seen(m), 3 * m.d_mlp)) + upcast
    head = 12 * m.vocab
    tokens = batch * seq_len
    return _estimate(
        "evaluation (FE, RU, MIA, Rouge-L, lm-eval)",
        f"batch {batch} x {seq_len} tokens, forward only",
        weights=weights,
        activations=tokens * (max(layer, head) + s * d),
        buffers=masks + _padding_masks([(batch, seq_len)], s, "sdpa"),
    )


# ----------------------------------------------------------------------------- fitting


def peak(stages: Sequence[StageEstimate]) -> StageEstimate:
    """The stage with the most bytes."""
    return max(stages, key=lambda st: st.bytes)


@dataclass(frozen=True)
class Fit:
    """What :func:`largest_fit` found: a batch and length, its peak and the stage at the peak."""

    batch: int
    seq_len: int
    peak_bytes: int
    stage: str


def _largest(lo: int, hi: int, ok: Callable[[int], bool]) -> int:
    """Largest ``x`` in ``[lo, hi]`` with ``ok(x)`` for ``ok`` true up to a point; ``lo - 1``
    when ``ok(lo)`` is false."""
    if not ok(lo):
        return lo - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid - 1)
    return lo


def largest_fit(
    config: Mapping[str, Any],
    budget_bytes: int,
    *,
    batch: int | None = None,
    seq_len: int | None = None,
    max_batch: int = 4096,
    max_seq_len: int | None = None,
    stages: Sequence[str] | None = None,
    **kwargs: Any,
) -> Fit | None:
    """The largest training batch and sequence length whose peak stays within ``budget_bytes``.

    Every estimate grows with batch and length, so each is found by bisection. With ``seq_len``
    given: the largest batch in ``[1, max_batch]``. With ``batch`` given: the longest sequence
    in ``[1, max_seq_len]`` (default: the config's ``max_position_embeddings`` /
    ``n_positions``). With neither: the longest sequence at batch 1, then the largest batch
    at that length. With both: that configuration if it fits. ``None`` when nothing fits (for
    instance when the weights alone, or a stage whose batch is fixed, exceed the budget).

    ``stages`` restricts the peak to stages whose names start with one of the strings given;
    ``kwargs`` go to :func:`stage_memory` (``dtype``, ``mask_ratio``, ...). The attribution and
    evaluation batches stay as given there: lower them (``attribution_batch``,
    ``eval_batch``) when those stages are the ones at the peak.
    """
    if max_seq_len is None:
        max_seq_len = model_shape(config).n_positions

    def worst(b: int, length: int) -> StageEstimate:
        found = stage_memory(config, batch=b, seq_len=length, **kwargs)
        if stages is not None:
            found = [st for st in found if st.name.startswith(tuple(stages))]
            if not found:
                raise ValueError(f"no stage name starts with any of {list(stages)}")
        return peak(found)

    def fits(b: int, length: int) -> bool:
        return worst(b, length).bytes <= budget_bytes

    if seq_len is None:
        b0 = batch or 1
        seq_len = _largest(1, max_seq_len, lambda length: fits(b0, length))
        if seq_len < 1:
            return None
    if batch is None:
        length = seq_len
        batch = _largest(1, max_batch, lambda b: fits(b, length))
        if batch < 1:
            return None
    if not fits(batch, seq_len):
        return None
    top = worst(batch, seq_len)
    return Fit(batch, seq_len, top.bytes, top.name)


# ----------------------------------------------------------------------------- report


def _gb(n: int) -> str:
    return f"{n / GB:.2f}"


def format_plan(
    stages: Sequence[StageEstimate], memory_gb: float | None = None, title: str | None = None
) -> str:
    """A Markdown table (stage | weights | grads | optimizer | activations | buffers | total, in
    GB of 10^9 bytes, and the host memory of each stage when some is off the device) and a line
    with the peak and, given ``memory_gb`` (``--memory GB``), whether it fits."""
    host = any(st.host for st in stages)
    lines = [f"### {title}", ""] if title else []
    lines += [
        "| stage | weights | grads | optimizer | activations | buffers | total GB |"
        + (" host GB |" if host else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if host else ""),
    ]
    for st in stages:
        cells = [_gb(st.breakdown.get(k, 0)) for k in PARTS]
        row = f"| {st.name} | {' | '.join(cells)} | **{_gb(st.bytes)}** |"
        lines.append(row + (f" {_gb(st.host)} |" if host else ""))
    top = peak(stages)
    line = f"Peak: {_gb(top.bytes)} GB ({top.name})"
    if memory_gb is not None:
        spare = memory_gb * GB - top.bytes
        verdict = "fits" if spare >= 0 else "does NOT fit"
        line += f"; {verdict} in --memory {memory_gb:g} GB ({spare / GB:+.2f} GB to spare)"
    return "\n".join([*lines, "", line + "."])
