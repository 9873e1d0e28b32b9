"""Checks of user options, shared by the config dataclasses and the ``clue-mi`` command.

Every check raises :class:`OptionError` (a ``ValueError``) with one line that names the option
(its Python name and its command-line flag) and the accepted range, so the Python API and the
CLI give the same message. Nothing here writes anything, except :func:`check_output_location`,
which probes (and removes at once) one empty temporary folder.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

MAX_SEED = 2**32  # numpy's and Python's generators all accept [0, 2**32)


class OptionError(ValueError):
    """A bad option value; the message names the option and what it accepts."""


def _label(name: str, flag: str | None) -> str:
    return f"{name} ({flag})" if flag else name


def check_int(value: Any, name: str, minimum: int, flag: str | None = None) -> int:
    """``value`` must be an integer (not a bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionError(f"{_label(name, flag)} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise OptionError(f"{_label(name, flag)} must be an integer >= {minimum}, got {value}")
    return value


def check_seed(value: Any, name: str = "seed", flag: str | None = "--seed") -> int:
    """A seed is an integer in ``[0, 2**32)`` (numpy refuses negative seeds)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < MAX_SEED:
        raise OptionError(f"{_label(name, flag)} must be an integer in [0, 2**32), got {value!r}")
    return value


def check_float(
    value: Any, name: str, flag: str | None, accepted: str, ok: Callable[[float], bool]
) -> float:
    """``value`` must be a finite number for which ``ok`` holds; ``accepted`` says which
    (``"> 0"``, ``"in [0, 1)"``) in the message."""
    message = f"{_label(name, flag)} must be a finite number {accepted}, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OptionError(message)
    x = float(value)
    if not math.isfinite(x) or not ok(x):
        raise OptionError(message)
    return x


def check_choice(value: Any, name: str, choices: Sequence[str], flag: str | None = None) -> str:
    if value not in choices:
        raise OptionError(
            f"{_label(name, flag)} must be one of {', '.join(choices)}; got {value!r}"
        )
    return value


def check_unique(values: Sequence[Any], name: str, flag: str | None = None) -> None:
    """No value may appear twice (a repeated task or method would be run or counted twice)."""
    repeated = sorted(v for v, count in Counter(values).items() if count > 1)
    if repeated:
        raise OptionError(
            f"{_label(name, flag)} lists {', '.join(map(str, repeated))} more than once"
        )


def check_device(device: str | None, flag: str = "--device") -> str | None:
    """``None``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, and available on this machine."""
    if device is None:
        return None
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise OptionError(
            f"device ({flag}) {device!r} is not a device name; use cpu or cuda"
        ) from err
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise OptionError(f"device ({flag}) {device!r}: CUDA is not available here; use cpu")
    if parsed.type == "cuda" and parsed.index is not None:
        if parsed.index >= torch.cuda.device_count():
            raise OptionError(
                f"device ({flag}) {device!r}: only {torch.cuda.device_count()} CUDA device(s)"
            )
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise OptionError(f"device ({flag}) {device!r}: MPS is not available here; use cpu")
    if parsed.type not in ("cpu", "cuda", "mps"):
        raise OptionError(f"device ({flag}) {device!r} is not supported; use cpu or cuda")
    return device


def check_output_location(path: str | Path, flag: str = "--out") -> Path:
    """Fail now, not after an hour of work, if ``path`` cannot be created.

    Walks up to the nearest existing ancestor, which must be a folder in which a folder can be
    made; this is probed by making and removing one empty temporary folder (file permissions
    alone do not tell: root ignores them, and ``/proc`` refuses new entries to everyone).
    """
    path = Path(path)
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OptionError(f"{flag} {path}: {ancestor} is a file, not a folder")
    try:
        probe = tempfile.mkdtemp(prefix=".clue_mi-probe-", dir=ancestor)
    except OSError as err:
        raise OptionError(
            f"{flag} {path}: cannot create anything under {ancestor} ({err.strerror or err}); "
            "choose a writable location"
        ) from err
    os.rmdir(probe)
    return path
