"""Attribution scores, cached apart from the circuits selected from them.

A circuit is a *selection* (sparsity or top-n, pruning) from one score vector plus a faithfulness
measurement; the expensive part is the score vector. :func:`attribution_scores` stores it once
per (weights, exact prompts, direction, method, steps), so re-selection at another sparsity, a
sparsity sweep (notebook 03, paper Figure 4) and the circuit cache of :mod:`clue_mi.cache` all
reuse one attribution.

* Key: sha256 over ``cache.model_fingerprint(model)`` (so any change of the weights makes a new
  key), the model name, the exact attribution prompt tokens, choices and ``good`` masks,
  direction, method, ``steps`` (EAP-IG only) and the format version. ``batch_size`` is not part
  of it (it changes scores only by float rounding).
* Location: ``$CLUE_MI_CACHE/scores/{name}-{direction}-{method}-{key[:16]}.safetensors``.
* File: safetensors holding ``scores`` (float64, aligned with ``graph_for(model).edges``); its
  metadata holds the key, the key material and a sha256 of the key and the tensor bytes. Written
  to a temporary file and renamed into place (atomic); an unreadable, truncated or edited file
  gives a ``CacheWarning`` and is recomputed.
* Both directions of EAP / EAP-IG are computed together (they share the clean and corrupted
  passes, :func:`clue_mi.attribution.attribute_both`) and stored as two entries. A file lock per
  (weights, prompts, method, steps) keeps two processes from computing the same entries: the
  second waits, then reads what the first stored.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from jaxtyping import Float
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor

from clue_mi import attribution
from clue_mi.cache import (
    CacheWarning,
    _canonical,
    _prompt_digest,
    _write_atomic,
    cache_dir,
    model_fingerprint,
)
from clue_mi.tasks.base import PromptSet, Task
from clue_mi.timing import stage

__all__ = ["SCORE_FORMAT", "attribution_scores", "score_key", "score_path"]

SCORE_FORMAT = 1


def _prompts(task: Task | PromptSet) -> PromptSet:
    return task.prompts if isinstance(task, Task) else task


def _name(task: Task | PromptSet) -> str:
    return task.name if isinstance(task, Task) else "prompts"


def _material(
    model, task: Task | PromptSet, direction: str | None, method: str, steps: int
) -> dict[str, Any]:
    """What the scores depend on; ``direction=None`` names the pair (the lock's key)."""
    return {
        "format": SCORE_FORMAT,
        "weights": model_fingerprint(model),
        "model": str(getattr(model.cfg, "model_name", "")),
        "prompts": _prompt_digest(_prompts(task)),
        "direction": direction,
        "method": method,
        "steps": steps if method == "eap-ig" else None,
    }


def _key(material: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical(material)).hexdigest()


def score_key(
    model, task: Task | PromptSet, direction: str, method: str = "eap-ig", steps: int = 5
) -> str:
    """The sha256 key of one score vector (see the module docstring for what it covers)."""
    return _key(_material(model, task, direction, method, steps))


def _folder(directory: str | Path | None) -> Path:
    return (Path(directory) if directory is not None else cache_dir()) / "scores"


def score_path(
    model,
    task: Task | PromptSet,
    direction: str,
    method: str = "eap-ig",
    steps: int = 5,
    directory: str | Path | None = None,
) -> Path:
    """Where :func:`attribution_scores` stores these scores."""
    key = score_key(model, task, direction, method, steps)
    return _folder(directory) / f"{_name(task)}-{direction}-{method}-{key[:16]}.safetensors"


def _digest(key: str, scores: Tensor) -> str:
    return hashlib.sha256(key.encode() + scores.contiguous().numpy().tobytes()).hexdigest()


def _store(path: Path, key: str, material: dict[str, Any], scores: Tensor) -> None:
    scores = scores.detach().to("cpu", torch.float64).contiguous()
    metadata = {"key": key, "material": json.dumps(material), "sha256": _digest(key, scores)}
    _write_atomic(path, st_save({"scores": scores}, metadata=metadata))


def _header(data: bytes) -> dict[str, Any]:
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + size])


def _load(path: Path, key: str) -> Tensor | None:
    """The stored scores, or None (with a warning) if the file cannot be trusted."""
    try:
        data = path.read_bytes()
        meta = _header(data)["__metadata__"]
        scores = st_load(data)["scores"]
        if meta["key"] != key:
            raise ValueError("the entry belongs to a different key")
        if _digest(key, scores) != meta["sha256"]:
            raise ValueError("checksum mismatch (the file was edited or corrupted)")
        return scores
    except Exception as err:  # noqa: BLE001 - any unreadable file is recomputed, never trusted
        warnings.warn(
            f"ignoring invalid score cache file {path}: {err}; recomputing",
            CacheWarning,
            stacklevel=3,
        )
        return None


def _compute(
    model, task: Task | PromptSet, direction: str, method: str, steps: int, batch_size: int
) -> dict[str, Float[Tensor, " n_edges"]]:
    """Scores of ``direction``, plus the other direction when it comes for free."""
    if method == "exact":  # nothing to share between the directions
        return {
            direction: attribution.attribute(
                model, _prompts(task), direction, method, steps, batch_size
            )
        }
    return attribution.attribute_both(model, _prompts(task), method, steps, batch_size)


def attribution_scores(
    model,
    task: Task | PromptSet,
    direction: str = "noising",
    method: str = "eap-ig",
    steps: int = 5,
    batch_size: int = 16,
    directory: str | Path | None = None,
    recompute: bool = False,
) -> Float[Tensor, " n_edges"]:
    """Edge scores of ``task``'s attribution prompts, from the score cache or computed.

    Same meaning and arguments as :func:`clue_mi.attribution.attribute`; the result is a float64
    CPU tensor aligned with ``graph_for(model).edges``. ``recompute=True`` ignores (and
    overwrites) stored entries.
    """
    attribution._check(direction, method, steps)
    folder = _folder(directory)
    pair = _material(model, task, None, method, steps)
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(folder / f"{_name(task)}-{method}-{_key(pair)[:16]}.lock"))
    path = score_path(model, task, direction, method, steps, directory)
    key = score_key(model, task, direction, method, steps)
    with lock:  # a second process waits here, then finds the entry the first one stored
        if path.exists() and not recompute:
            scores = _load(path, key)
            if scores is not None:
                return scores
        with stage("attribution"):
            computed = _compute(model, task, direction, method, steps, batch_size)
        for d, scores in computed.items():
            material = _material(model, task, d, method, steps)
            _store(
                score_path(model, task, d, method, steps, directory),
                _key(material),
                material,
                scores,
            )
    return computed[direction].to(torch.float64)
