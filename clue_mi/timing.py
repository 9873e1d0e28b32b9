"""Wall-clock time per stage of a run (attribution, faithfulness, localization, training...).

Library code marks its stages with ``with stage("attribution"):``; that costs nothing unless a
caller is recording. A run records with::

    timings = Timings()
    with recording(timings):
        ...                       # every stage() inside adds its seconds to timings
    timings.as_dict()             # {"attribution": {"seconds": 12.3, "calls": 10}, ...}

Timings are kept out of the results files (they differ between identical runs); ``clue-mi run``
writes them to ``timings.json`` and a section of ``report.md``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

__all__ = ["Timings", "recording", "stage"]


@dataclass
class Timings:
    """Seconds and call counts per stage name, in the order stages first ran."""

    seconds: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.calls[name] = self.calls.get(name, 0) + 1

    def as_dict(self) -> dict[str, dict[str, float | int]]:
        return {
            name: {"seconds": round(s, 3), "calls": self.calls[name]}
            for name, s in self.seconds.items()
        }


_ACTIVE: ContextVar[Timings | None] = ContextVar("clue_mi_timings", default=None)


@contextmanager
def recording(timings: Timings) -> Iterator[Timings]:
    """Make ``timings`` collect every :func:`stage` run inside this block."""
    token = _ACTIVE.set(timings)
    try:
        yield timings
    finally:
        _ACTIVE.reset(token)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Add this block's wall time to the recording ``Timings`` under ``name`` (if any).

    Nested stages are each counted in full (a stage inside another is part of both).
    """
    timings = _ACTIVE.get()
    if timings is None:
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        timings.add(name, time.perf_counter() - start)
