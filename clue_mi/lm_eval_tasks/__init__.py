"""Offline lm-evaluation-harness tasks for general utility (YAML + JSONL, see ``make_data``)."""
