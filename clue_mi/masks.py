"""From graph nodes to the exact Hugging Face weight elements they own, and back to numbers.

A *mask* maps a canonical HF parameter name (``model.layers.3.self_attn.q_proj.weight``
as in a saved checkpoint, never the ``._original_component`` names a TransformerBridge adds)
to a boolean tensor shaped like that parameter. Only parameters with at least one ``True`` appear.

Ownership (DESIGN.md §4), for layer ``L``, query head ``H``, KV group ``G`` and head size ``dh``:

==================  ======================================================================
node                elements it owns (Llama / Mistral / Qwen2)
==================  ======================================================================
``a{L}.h{H}.q``     ``q_proj.weight`` rows ``H*dh:(H+1)*dh`` (+ ``q_proj.bias`` entries)
``a{L}.g{G}.k``     ``k_proj.weight`` rows ``G*dh:(G+1)*dh`` (+ bias entries)
``a{L}.g{G}.v``     ``v_proj.weight`` rows ``G*dh:(G+1)*dh`` (+ bias entries)
``a{L}.h{H}``       ``o_proj.weight`` **columns** ``H*dh:(H+1)*dh``
``m{L}``            ``gate_proj``, ``up_proj``, ``down_proj`` (weights and biases, whole)
``input``/``logits`` nothing
==================  ======================================================================

GPT-2 stores its projections as ``Conv1D`` (weight ``[in, out]``, i.e. transposed): the fused
``c_attn.weight [d, 3d]`` owns q / k / v as **column** blocks at offsets ``0``, ``d`` and ``2d``
(bias entries alike), and ``attn.c_proj.weight [d, d]`` owns head ``H`` as **rows**
``H*dh:(H+1)*dh``. The MLP owns ``mlp.c_fc`` and ``mlp.c_proj`` whole. A bias of the output
projection (``o_proj.bias``, ``attn.c_proj.bias``) is shared by all heads, so no node owns it.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Bool
from torch import Tensor, nn

from clue_mi.models import hf_model, hf_parameters, resolve

Mask = dict[str, Bool[Tensor, "*dims"]]
"""Canonical HF parameter name -> boolean tensor shaped like the parameter, in host memory
whatever the model's device: CLUE's two masks and a baseline's are a byte per element of the
layer weights (14 GB for a 7B model); ``unlearn.MaskedAdamW`` takes to the device only what a
step needs (int32 positions, or a mask it cannot index)."""

MATRIX_KINDS = ("q", "k", "v", "o", "gate", "up", "down")
"""The per-layer matrices behind ``unlearned_ratio`` and ``mask_counts`` (GPT-2 has no gate)."""

LLAMA_LIKE = ("llama", "mistral", "qwen2")


class UnsupportedArchitectureError(ValueError):
    """clue_mi does not know which weights the components of this architecture own."""


@dataclass(frozen=True)
class WeightSlice:
    """The elements ``param[start:stop]`` along ``dim`` (0 rows, 1 columns) of one parameter."""

    param: str
    dim: int
    start: int
    stop: int

    def apply(self, mask: Tensor) -> None:
        """Set this slice of ``mask`` (shaped like the parameter) to True, in place."""
        if self.dim == 0:
            mask[self.start : self.stop] = True
        else:
            mask[:, self.start : self.stop] = True

    def numel(self, shape: torch.Size) -> int:
        other = 1
        for i, size in enumerate(shape):
            if i != self.dim:
                other *= size
        return (self.stop - self.start) * other


@dataclass(frozen=True)
class MatrixView:
    """One per-layer attention or MLP matrix (a whole parameter, or a block of a fused one)."""

    layer: int
    kind: str  # one of MATRIX_KINDS
    slice: WeightSlice


@dataclass(frozen=True)
class Geometry:
    model_type: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int
    gated_mlp: bool


# ----------------------------------------------------------------------------- model access


def get_parameter(model, name: str) -> nn.Parameter:
    """The parameter with canonical HF name ``name`` (works through a bridge)."""
    param = resolve(hf_model(model), name)
    if not isinstance(param, nn.Parameter):
        raise KeyError(f"{name} is not a parameter of this model")
    return param


def geometry(model) -> Geometry:
    """Layer / head sizes from the HF config; raises for an architecture we cannot map."""
    cfg: Any = hf_model(model).config
    model_type = getattr(cfg, "model_type", type(cfg).__name__)
    if model_type in LLAMA_LIKE:
        n_heads = cfg.num_attention_heads
        d_model = cfg.hidden_size
        return Geometry(
            model_type,
            cfg.num_hidden_layers,
            n_heads,
            getattr(cfg, "num_key_value_heads", None) or n_heads,
            getattr(cfg, "head_dim", None) or d_model // n_heads,
            d_model,
            True,
        )
    if model_type == "gpt2":
        return Geometry(
            model_type,
            cfg.n_layer,
            cfg.n_head,
            cfg.n_head,
            cfg.n_embd // cfg.n_head,
            cfg.n_embd,
            False,
        )
    archs = ", ".join(getattr(cfg, "architectures", None) or []) or model_type
    raise UnsupportedArchitectureError(
        f"Architecture '{archs}' (model_type '{model_type}') is not supported by clue_mi.masks; "
        f"supported model types: {', '.join((*LLAMA_LIKE, 'gpt2'))}"
    )


# ----------------------------------------------------------------------------- node -> slices

_Q = re.compile(r"a(\d+)\.h(\d+)\.q")
_KV = re.compile(r"a(\d+)\.g(\d+)\.([kv])")
_HEAD = re.compile(r"a(\d+)\.h(\d+)")
_MLP = re.compile(r"m(\d+)")


def _check(geo: Geometry, node: str, layer: int, index: int, limit: int, what: str) -> None:
    if not 0 <= layer < geo.n_layers:
        raise ValueError(f"node {node!r}: layer {layer} outside 0..{geo.n_layers - 1}")
    if not 0 <= index < limit:
        raise ValueError(f"node {node!r}: {what} {index} outside 0..{limit - 1}")


def _maybe_bias(names: set[str], weight: str, start: int, stop: int) -> list[WeightSlice]:
    """The bias entries that follow output features ``start:stop`` of ``weight``, if any."""
    bias = weight.removesuffix("weight") + "bias"
    return [WeightSlice(bias, 0, start, stop)] if bias in names else []


def node_slices(model, node: str) -> list[WeightSlice]:
    """The weight slices ``node`` owns (empty for ``input`` and ``logits``)."""
    geo = geometry(model)
    names = set(hf_parameters(model))
    if node in ("input", "logits"):
        return []
    dh, d = geo.d_head, geo.d_model
    if m := _Q.fullmatch(node):
        layer, head = int(m[1]), int(m[2])
        _check(geo, node, layer, head, geo.n_heads, "head")
        start, stop = head * dh, (head + 1) * dh
        if geo.model_type == "gpt2":
            w = f"transformer.h.{layer}.attn.c_attn.weight"
            return [WeightSlice(w, 1, start, stop), *_maybe_bias(names, w, start, stop)]
        w = f"model.layers.{layer}.self_attn.q_proj.weight"
        return [WeightSlice(w, 0, start, stop), *_maybe_bias(names, w, start, stop)]
    if m := _KV.fullmatch(node):
        layer, group, which = int(m[1]), int(m[2]), m[3]
        _check(geo, node, layer, group, geo.n_kv_heads, "KV group")
        start, stop = group * dh, (group + 1) * dh
        if geo.model_type == "gpt2":
            offset = d if which == "k" else 2 * d
            w = f"transformer.h.{layer}.attn.c_attn.weight"
            a, b = offset + start, offset + stop
            return [WeightSlice(w, 1, a, b), *_maybe_bias(names, w, a, b)]
        w = f"model.layers.{layer}.self_attn.{which}_proj.weight"
        return [WeightSlice(w, 0, start, stop), *_maybe_bias(names, w, start, stop)]
    if m := _HEAD.fullmatch(node):
        layer, head = int(m[1]), int(m[2])
        _check(geo, node, layer, head, geo.n_heads, "head")
        start, stop = head * dh, (head + 1) * dh
        # The output projection reads head H's d_head values: columns in nn.Linear, rows in
        # Conv1D. Its bias is added once for all heads, so it belongs to no head.
        if geo.model_type == "gpt2":
            return [WeightSlice(f"transformer.h.{layer}.attn.c_proj.weight", 0, start, stop)]
        return [WeightSlice(f"model.layers.{layer}.self_attn.o_proj.weight", 1, start, stop)]
    if m := _MLP.fullmatch(node):
        layer = int(m[1])
        _check(geo, node, layer, 0, 1, "index")
        if geo.model_type == "gpt2":
            prefix = f"transformer.h.{layer}.mlp"
            parts: tuple[str, ...] = ("c_fc", "c_proj")
        else:  # llama-like
            prefix, parts = f"model.layers.{layer}.mlp", ("gate_proj", "up_proj", "down_proj")
        out = []
        for part in parts:
            for leaf in ("weight", "bias"):
                name = f"{prefix}.{part}.{leaf}"
                if name in names:
                    size = get_parameter(model, name).shape[0]
                    out.append(WeightSlice(name, 0, 0, size))
        return out
    raise ValueError(
        f"unknown node name {node!r}; expected input, logits, a{{L}}.h{{H}}.q, a{{L}}.g{{G}}.k, "
        "a{L}.g{G}.v, a{L}.h{H} or m{L}"
    )


# ----------------------------------------------------------------------------- masks


def mask_from_nodes(model, nodes: Iterable[str]) -> Mask:
    """The mask of every element owned by any of ``nodes``."""
    mask: Mask = {}
    for node in sorted(set(nodes)):
        for sl in node_slices(model, node):
            if sl.param not in mask:
                param = get_parameter(model, sl.param)
                mask[sl.param] = torch.zeros(param.shape, dtype=torch.bool)  # host: see Mask
            sl.apply(mask[sl.param])
    return mask


def forget_mask(model, nodes: Iterable[str]) -> Mask:
    """Mask of the forget nodes' weights (updated in stage 1)."""
    return mask_from_nodes(model, nodes)


def conflict_mask(model, nodes: Iterable[str]) -> Mask:
    """Mask of the conflict nodes' weights (updated in stage 2, with the retain loss)."""
    return mask_from_nodes(model, nodes)


def masks_from_localization(model, loc) -> tuple[Mask, Mask]:
    """``(forget_mask, conflict_mask)`` from a :class:`clue_mi.localization.Localization`."""
    return forget_mask(model, loc.forget), conflict_mask(model, loc.conflict)


def full_mask(model) -> Mask:
    """Every element of every parameter (the full fine-tuning baseline)."""
    return {name: torch.ones(p.shape, dtype=torch.bool) for name, p in hf_parameters(model).items()}


def union(*masks: Mapping[str, Tensor]) -> Mask:
    """Element-wise OR of masks."""
    out: Mask = {}
    for mask in masks:
        for name, m in mask.items():
            out[name] = out[name] | m.bool() if name in out else m.bool().clone()
    return {n: m for n, m in out.items() if bool(m.any())}


def mask_size(mask: Mapping[str, Tensor]) -> int:
    """Number of masked elements."""
    return int(sum(int(m.sum()) for m in mask.values()))


def overlap(a: Mapping[str, Tensor], b: Mapping[str, Tensor]) -> int:
    """Number of elements masked in both ``a`` and ``b``."""
    return int(sum(int((a[n].bool() & b[n].bool()).sum()) for n in a.keys() & b.keys()))


# ----------------------------------------------------------------------------- statistics


def layer_matrices(model) -> list[MatrixView]:
    """The per-layer attention (q, k, v, o) and MLP (gate, up, down) weight matrices.

    Biases, norms, embeddings and the unembedding are not among them. GPT-2's fused ``c_attn``
    counts as three matrices (its q, k and v column blocks); its MLP has ``up`` (``c_fc``) and
    ``down`` (``mlp.c_proj``) only.
    """
    geo = geometry(model)
    views: list[MatrixView] = []
    for layer in range(geo.n_layers):
        if geo.model_type == "gpt2":
            attn, d = f"transformer.h.{layer}.attn", geo.d_model
            entries = [
                ("q", WeightSlice(f"{attn}.c_attn.weight", 1, 0, d)),
                ("k", WeightSlice(f"{attn}.c_attn.weight", 1, d, 2 * d)),
                ("v", WeightSlice(f"{attn}.c_attn.weight", 1, 2 * d, 3 * d)),
                ("o", WeightSlice(f"{attn}.c_proj.weight", 0, 0, d)),
                ("up", _whole(model, f"transformer.h.{layer}.mlp.c_fc.weight")),
                ("down", _whole(model, f"transformer.h.{layer}.mlp.c_proj.weight")),
            ]
        else:
            attn, mlp = f"model.layers.{layer}.self_attn", f"model.layers.{layer}.mlp"
            entries = [
                (kind, _whole(model, f"{attn}.{kind}_proj.weight")) for kind in ("q", "k", "v", "o")
            ] + [
                (kind, _whole(model, f"{mlp}.{kind}_proj.weight"))
                for kind in ("gate", "up", "down")
            ]
        views.extend(MatrixView(layer, kind, sl) for kind, sl in entries)
    return views


def _whole(model, name: str) -> WeightSlice:
    return WeightSlice(name, 0, 0, get_parameter(model, name).shape[0])


def _view_counts(model, mask: Mapping[str, Tensor]) -> list[tuple[MatrixView, int, int]]:
    out = []
    for view in layer_matrices(model):
        sl = view.slice
        shape = get_parameter(model, sl.param).shape
        total = sl.numel(shape)
        m = mask.get(sl.param)
        if m is None:
            masked = 0
        else:
            part = m[sl.start : sl.stop] if sl.dim == 0 else m[:, sl.start : sl.stop]
            masked = int(part.sum())
        out.append((view, masked, total))
    return out


def unlearned_ratio(model, *masks: Mapping[str, Tensor]) -> float:
    """Unlearned-parameter ratio (paper Table 1; DESIGN.md §8), in [0, 1].

    The unweighted mean, over every per-layer attention matrix (q, k, v, o) and MLP matrix
    (gate, up, down; see ``layer_matrices``), of the fraction of its elements that lie in the
    union of ``masks``. Biases, norms and embeddings are not in the mean, and a masked element
    outside these matrices (e.g. a bias) does not count.
    """
    merged = union(*masks)
    counts = _view_counts(model, merged)
    return float(sum(masked / total for _, masked, total in counts) / len(counts))


def mask_counts(model, *masks: Mapping[str, Tensor]) -> dict[str, list[int]]:
    """Masked elements per matrix kind and layer: ``{"q": [n_layer0, n_layer1, ...], ...}``.

    Covers the union of ``masks`` over the matrices of ``layer_matrices`` (for the
    neuron-distribution plots); kinds the architecture lacks (GPT-2 ``gate``) are absent.
    """
    geo = geometry(model)
    out: dict[str, list[int]] = {}
    for view, masked, _ in _view_counts(model, union(*masks)):
        out.setdefault(view.kind, [0] * geo.n_layers)[view.layer] += masked
    return out


def category_shares(model, loc, categories: Iterable[str] = ("forget", "conflict", "retain")):
    """Share of each matrix kind's weights owned by each category of a localization.

    Returns ``{category: {kind: fraction}}`` with kinds in ``layer_matrices`` order (q, k, v,
    o, gate, up, down for Llama) plus ``"all"``, the unweighted mean over every per-layer
    matrix (``unlearned_ratio``'s measure). ``loc`` is read by attribute (``loc.forget``...).
    """
    sizes = {kind: sum(per_layer) for kind, per_layer in matrix_sizes(model).items()}
    out: dict[str, dict[str, float]] = {}
    for category in categories:
        mask = mask_from_nodes(model, getattr(loc, category))
        counts = mask_counts(model, mask)
        row = {kind: sum(counts.get(kind, [])) / total for kind, total in sizes.items()}
        row["all"] = unlearned_ratio(model, mask)
        out[category] = row
    return out


def matrix_sizes(model) -> dict[str, list[int]]:
    """Total elements per matrix kind and layer, shaped like ``mask_counts``."""
    geo = geometry(model)
    out: dict[str, list[int]] = {}
    for view, _, total in _view_counts(model, {}):
        out.setdefault(view.kind, [0] * geo.n_layers)[view.layer] += total
    return out


# ----------------------------------------------------------------------------- files


def save_masks(
    path: str | Path,
    masks: Mapping[str, Mapping[str, Tensor]],
    overwrite: bool = False,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write named masks (e.g. ``{"forget": m1, "conflict": m2}``) to one safetensors file.

    Keys in the file are ``"{mask_name}/{param_name}"``. The write is atomic (a temporary file
    in the same folder, then a rename); an existing file is refused unless ``overwrite``.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    tensors = {}
    for mask_name, mask in masks.items():
        if "/" in mask_name:
            raise ValueError(f"mask name {mask_name!r} must not contain '/'")
        for param, m in mask.items():
            tensors[f"{mask_name}/{param}"] = m.bool().cpu().contiguous()
    meta = {"format": "clue_mi.masks", "names": ",".join(masks), **(metadata or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if another writer created path meanwhile: no clobbering
            os.unlink(tmp)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_masks(path: str | Path, model=None) -> dict[str, Mask]:
    """Read masks written by ``save_masks``; with ``model``, check every name and shape."""
    from safetensors import safe_open

    out: dict[str, Mask] = {}
    with safe_open(str(path), framework="pt") as f:
        names = (f.metadata() or {}).get("names", "")
        for mask_name in filter(None, names.split(",")):
            out[mask_name] = {}
        for key in f.keys():
            mask_name, _, param = key.partition("/")
            out.setdefault(mask_name, {})[param] = f.get_tensor(key).bool()
    if model is not None:
        params = hf_parameters(model)
        for mask in out.values():
            for param, m in mask.items():
                p = params.get(param)
                if p is None or p.shape != m.shape:
                    raise ValueError(f"{path}: mask for {param} does not fit this model")
                mask[param] = m
    return out


__all__ = [
    "MATRIX_KINDS",
    "Mask",
    "MatrixView",
    "UnsupportedArchitectureError",
    "WeightSlice",
    "category_shares",
    "conflict_mask",
    "forget_mask",
    "full_mask",
    "geometry",
    "get_parameter",
    "hf_model",
    "hf_parameters",
    "layer_matrices",
    "load_masks",
    "mask_counts",
    "mask_from_nodes",
    "mask_size",
    "masks_from_localization",
    "matrix_sizes",
    "node_slices",
    "overlap",
    "save_masks",
    "union",
    "unlearned_ratio",
]
