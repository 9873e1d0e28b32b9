"""clue_mi: CLUE (Conflict-guided Localization for LLM Unlearning) on TransformerLens.

The pipeline reads in the module names:
``models`` -> ``tasks`` -> ``graph`` / ``attribution`` -> ``gates`` -> ``cnf`` ->
``localization`` -> ``masks`` -> ``unlearn`` -> ``evaluate`` -> ``plots`` / ``report``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["load_model"]

if TYPE_CHECKING:
    from clue_mi.models import load_model


def __getattr__(name: str) -> Any:
    # Lazy: importing torch and transformers takes seconds, and cnf/gates need neither.
    if name == "load_model":
        from clue_mi.models import load_model

        return load_model
    raise AttributeError(f"module 'clue_mi' has no attribute {name!r}")
