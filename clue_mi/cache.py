"""``circuits_cache/``: keyed, atomic, verified storage of discovered circuits.

``discover(model, task, direction, method, ...)`` returns the circuit from the cache when a valid
entry exists and otherwise runs :func:`clue_mi.attribution.find_circuit` and stores the result.

* Key: sha256 over the weights fingerprint, the task name and the exact token tensors and
  choices of both the attribution prompts and the eval split (faithfulness is measured on it),
  direction, method, sparsity / top_n, steps, and the file format version. ``batch_size`` is
  not part of the key: it changes scores only by float rounding.
* Location: ``$CLUE_MI_CACHE`` (default ``circuits_cache/`` in the working directory), one file
  ``{task}-{direction}-{method}-{key[:16]}.json`` per entry.
* File: ``{"sha256": ..., "payload": {...}}`` where the checksum covers the canonical JSON of the
  payload. Written to a temporary file in the same folder and renamed into place (atomic).
* Never trusted blindly: an unreadable, truncated or edited file, a checksum mismatch or a key
  mismatch gives a warning, and the circuit is recomputed and the file overwritten.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import warnings
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from clue_mi.attribution import find_circuit
from clue_mi.graph import Circuit, circuit_from_dict, circuit_to_dict
from clue_mi.models import weights_fingerprint
from clue_mi.tasks.base import PromptSet, Task

__all__ = [
    "CACHE_FORMAT",
    "CacheWarning",
    "cache_dir",
    "cache_key",
    "cache_path",
    "circuit_summary",
    "discover",
    "model_fingerprint",
    "pinned_fingerprint",
]

CACHE_FORMAT = 1


class CacheWarning(UserWarning):
    """A cache entry was invalid and is being recomputed."""


def cache_dir() -> Path:
    return Path(os.environ.get("CLUE_MI_CACHE", "circuits_cache"))


# Hashing every weight takes a while on a real model (about 2 s for SmolLM2-135M); remember it
# per model object and recompute when any parameter was replaced (data_ptr), written in place by
# a torch op (its _version moves) or written behind autograd's back (``param.data[...] = x``
# does not move _version; the checksum sees it).
_FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _checksum(param: torch.Tensor) -> str:
    """A cheap content check of one parameter (a few float64 reductions, no hashing).

    Row sums (every element of a 1-D parameter is its own row), then their plain and
    position-weighted sums: any change of a single element and any exchange of two rows moves
    it. Only edits that cancel exactly within a row (e.g. swapping two elements of one row
    through ``.data``) escape it; ``discover(..., recompute=True)`` covers those.
    """
    x = param.detach()
    rows = x.reshape(x.shape[0], -1) if x.dim() > 1 else x.reshape(-1, 1)
    sums = rows.sum(1, dtype=torch.float64)
    weights = torch.arange(1, sums.numel() + 1, dtype=torch.float64, device=sums.device)
    return f"{float(sums.sum()).hex()}:{float((sums * weights).sum()).hex()}"


def _param_versions(model) -> tuple:
    """What must stay equal for the memoized fingerprint to hold, per parameter."""
    return tuple(
        (name, p.data_ptr(), p._version, _checksum(p))
        for name, p in model.original_model.named_parameters()
    )


def _storage_versions(model) -> tuple:
    """Each parameter's storage and ``_version``: what any torch write moves (cheap)."""
    return tuple(
        (name, p.data_ptr(), p._version) for name, p in model.original_model.named_parameters()
    )


# id(model) -> [depth, storage versions, fingerprint] while pinned_fingerprint is active.
_PINNED: dict[int, list] = {}


def model_fingerprint(model) -> str:
    """``weights_fingerprint(model)``, memoized while the weights stay unchanged.

    Every weight write of clue_mi (``MaskedAdamW``, ``WeightSnapshot.restore``) is an in-place
    torch op that moves ``_version``; writes through ``.data`` are caught by ``_checksum``
    (a float64 pass over every weight, about a second on SmolLM2-135M), except inside
    :func:`pinned_fingerprint`.
    """
    pinned = _PINNED.get(id(model))
    if pinned is not None and pinned[1] == _storage_versions(model):
        return pinned[2]
    versions = _param_versions(model)
    cached = _FINGERPRINTS.get(model)
    if cached is not None and cached[0] == versions:
        fingerprint = cached[1]
    else:
        fingerprint = weights_fingerprint(model)
        _FINGERPRINTS[model] = (versions, fingerprint)
    if pinned is not None:
        pinned[1:] = [_storage_versions(model), fingerprint]
    return fingerprint


@contextlib.contextmanager
def pinned_fingerprint(model) -> Iterator[str]:
    """Check the weights' content once, then trust storage and ``_version`` until the end.

    For a stretch of work that never writes the weights itself but asks for their
    fingerprint many times (a localization's discoveries, score-cache keys, faithfulness
    reference runs: 40-60 checks of a second each per run). Any torch write inside the
    block still moves ``_version`` and is seen; only a write through ``.data`` inside it
    would not be, and nothing in clue_mi writes that way. Blocks nest.
    """
    key = id(model)
    if key in _PINNED:
        _PINNED[key][0] += 1
    else:
        fingerprint = model_fingerprint(model)  # the full check
        _PINNED[key] = [1, _storage_versions(model), fingerprint]
    try:
        yield _PINNED[key][2]
    finally:
        _PINNED[key][0] -= 1
        if _PINNED[key][0] == 0:
            del _PINNED[key]


def _tensor_digest(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        t = t.detach().to("cpu").contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


def _prompt_digest(prompts: PromptSet) -> str:
    return _tensor_digest(
        prompts.clean_tokens, prompts.corrupted_tokens, prompts.choices, prompts.good
    )


def _key_material(
    model,
    task: Task | PromptSet,
    direction: str,
    method: str,
    sparsity: float | None,
    top_n: int | None,
    steps: int,
) -> dict[str, Any]:
    prompts = task.prompts if isinstance(task, Task) else task
    return {
        "format": CACHE_FORMAT,
        "weights": model_fingerprint(model),
        "model": str(getattr(model.cfg, "model_name", "")),
        "task": task.name if isinstance(task, Task) else None,
        "prompts": _prompt_digest(prompts),
        "eval": _prompt_digest(task.eval) if isinstance(task, Task) else None,
        "direction": direction,
        "method": method,
        "sparsity": None if top_n is not None else sparsity,
        "top_n": top_n,
        "steps": steps if method == "eap-ig" else None,
    }


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=True).encode()


def cache_key(
    model,
    task: Task | PromptSet,
    direction: str = "noising",
    method: str = "eap-ig",
    sparsity: float | None = 0.95,
    top_n: int | None = None,
    steps: int = 5,
) -> str:
    """The sha256 key of a discovery (see the module docstring for what it covers)."""
    material = _key_material(model, task, direction, method, sparsity, top_n, steps)
    return hashlib.sha256(_canonical(material)).hexdigest()


def cache_path(
    model,
    task: Task | PromptSet,
    direction: str = "noising",
    method: str = "eap-ig",
    sparsity: float | None = 0.95,
    top_n: int | None = None,
    steps: int = 5,
    directory: str | Path | None = None,
) -> Path:
    """Where :func:`discover` stores this circuit."""
    key = cache_key(model, task, direction, method, sparsity, top_n, steps)
    return _path_for(key, task, direction, method, directory)


def _path_for(
    key: str, task: Task | PromptSet, direction: str, method: str, directory: str | Path | None
) -> Path:
    name = task.name if isinstance(task, Task) else "prompts"
    folder = Path(directory) if directory is not None else cache_dir()
    return folder / f"{name}-{direction}-{method}-{key[:16]}.json"


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _store(path: Path, key: str, material: dict[str, Any], circuit: Circuit) -> None:
    payload = {"key": key, "key_material": material, "circuit": circuit_to_dict(circuit)}
    digest = hashlib.sha256(_canonical(payload)).hexdigest()
    _write_atomic(path, json.dumps({"sha256": digest, "payload": payload}).encode())


def _load(path: Path, key: str) -> Circuit | None:
    """The stored circuit, or None (with a warning) if the file cannot be trusted."""
    try:
        doc = json.loads(path.read_bytes())
        payload = doc["payload"]
        if hashlib.sha256(_canonical(payload)).hexdigest() != doc["sha256"]:
            raise ValueError("checksum mismatch (the file was edited or corrupted)")
        if payload["key"] != key:
            raise ValueError("the entry belongs to a different key")
        return circuit_from_dict(payload["circuit"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        # json.JSONDecodeError is a ValueError: truncated or garbled files land here too.
        warnings.warn(
            f"ignoring invalid circuit cache file {path}: {err}; recomputing",
            CacheWarning,
            stacklevel=3,
        )
        return None


def discover(
    model,
    task: Task | PromptSet,
    direction: str = "noising",
    method: str = "eap-ig",
    sparsity: float | None = 0.95,
    top_n: int | None = None,
    steps: int = 5,
    batch_size: int = 16,
    directory: str | Path | None = None,
    recompute: bool = False,
) -> Circuit:
    """The circuit of ``task`` (cached): attribute, select, measure faithfulness, store.

    Arguments are those of :func:`clue_mi.attribution.find_circuit`; ``top_n`` wins over
    ``sparsity``. ``recompute=True`` ignores (and overwrites) an existing entry. The graph
    attributes ``cache_key`` and ``cache_hit`` say where the circuit came from.
    """
    material = _key_material(model, task, direction, method, sparsity, top_n, steps)
    key = hashlib.sha256(_canonical(material)).hexdigest()
    path = _path_for(key, task, direction, method, directory)  # the key is hashed once
    if path.exists() and not recompute:
        circuit = _load(path, key)
        if circuit is not None:
            circuit.graph["cache_hit"] = True
            return circuit
    # Scores come from the score cache: another sparsity or the other direction of an
    # earlier discovery costs no new attribution (clue_mi.score_cache).
    from clue_mi.score_cache import attribution_scores

    scores = attribution_scores(
        model, task, direction, method, steps, batch_size, directory, recompute=recompute
    )
    circuit = find_circuit(
        model,
        task,
        direction,
        method,
        sparsity,
        top_n,
        steps=steps,
        batch_size=batch_size,
        scores=scores,
    )
    circuit.graph["cache_key"] = key
    _store(path, key, material, circuit)
    circuit.graph["cache_hit"] = False
    return circuit


def circuit_summary(circuit: Circuit) -> str:
    """A few lines for the CLI: what the circuit is, its size, and how faithful it is."""
    g = circuit.graph
    kinds: dict[str, int] = {}
    for _, kind in circuit.nodes(data="kind"):
        kinds[kind] = kinds.get(kind, 0) + 1
    order = ["input", "q", "k", "v", "head", "mlp", "logits"]
    by_kind = ", ".join(f"{kinds[k]} {k}" for k in order if k in kinds)
    n_graph = g.get("n_graph_edges")
    sparsity = g.get("sparsity")
    lines = [
        f"circuit: task={g.get('task')} direction={g.get('direction')} method={g.get('method')} "
        f"model={g.get('model')}",
        f"edges: {circuit.number_of_edges()}"
        + (f" of {n_graph}" if n_graph else "")
        + (f" (sparsity {sparsity:.4f})" if sparsity is not None else ""),
        f"nodes: {circuit.number_of_nodes()} ({by_kind})",
    ]
    faith = g.get("faithfulness")
    if faith:
        lines.append(
            f"faithfulness ({g.get('faithfulness_split', 'prompts')}): "
            f"KL {faith['kl']:.4f} (empty circuit {faith.get('kl_empty', float('nan')):.4f}), "
            f"recovery {faith['recovery']:.3f}"
        )
    else:
        lines.append("faithfulness: not measured")
    return "\n".join(lines)
