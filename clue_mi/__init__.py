"""clue_mi: CLUE (Conflict-guided Localization for LLM Unlearning) on TransformerLens.

The pipeline reads in the module names:
``models`` -> ``tasks`` -> ``graph`` / ``attribution`` -> ``gates`` -> ``cnf`` -> ``masks``
-> ``unlearn`` -> ``evaluate`` -> ``plots`` / ``report``.
"""

from clue_mi.models import load_model

__all__ = ["load_model"]
__version__ = "0.1.0"
