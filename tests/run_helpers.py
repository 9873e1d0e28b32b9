"""Helpers for tests that run ``clue-mi`` in fresh processes and compare run folders."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: clue-mi, python, pytest
# The README's one-minute smoke run, run exactly as written (tests/conftest.py::smoke_run).
SMOKE_COMMAND = "bash scripts/run.sh --quick --model tiny-llama"
# Keys of results/*.json that measure time, not the model; they differ between runs.
TIMING_KEY = re.compile(r"second|time|timing|_s$", re.IGNORECASE)


def subprocess_env(cache: Path, **extra: str) -> dict[str, str]:
    """The environment of a fresh ``clue-mi`` process: offline, its own circuit cache."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        CLUE_MI_CACHE=str(cache),
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    env.update(extra)
    return env


def run_shell(
    command: str, env: dict[str, str], cwd: Path = ROOT, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """Run a README-style command line with bash, capturing its output as text."""
    return subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def strip_timing(data: Any) -> Any:
    """``data`` without any key that measures time (recursively)."""
    if isinstance(data, dict):
        return {k: strip_timing(v) for k, v in data.items() if not TIMING_KEY.search(str(k))}
    if isinstance(data, list):
        return [strip_timing(v) for v in data]
    return data


def results(run: Path) -> dict[str, Any]:
    """``results/{method}.json`` of a run, timing fields removed."""
    return {
        p.stem: strip_timing(json.loads(p.read_text()))
        for p in sorted((run / "results").glob("*.json"))
    }


def table_rows(run: Path) -> dict[str, str]:
    """The rows of the report's results table (paper Table 1), keyed by method label."""
    lines = (run / "report.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| Method |"))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows[line.split("|")[1].strip()] = line
    return rows


def localization_lines(run: Path) -> list[str]:
    """The report's localization summary and category table (paper Table 3)."""
    lines = (run / "report.md").read_text().splitlines()
    return [
        line
        for line in lines
        if line.startswith(("Before:", "After CLUE:", "| q |", "| k |", "| v |", "| head |"))
        or line.startswith("| mlp |")
    ]


def assert_same_run(candidate: Path, reference: Path) -> None:
    """Everything the candidate run computed equals the reference byte for byte (timing fields
    aside). The candidate may have run a subset of the reference's methods: each method's
    row is independent of the others (every method starts from the original weights and seed).
    """
    got, want = results(candidate), results(reference)
    assert got, f"{candidate} has no results"
    for method, row in got.items():
        assert row == want[method], f"results/{method}.json differs"
    got_rows, want_rows = table_rows(candidate), table_rows(reference)
    for label, row in got_rows.items():
        assert row == want_rows[label], f"report row differs:\n{row}\n{want_rows[label]}"
    assert localization_lines(candidate) == localization_lines(reference)
    # Mask contents, not file bytes: safetensors writes its header's metadata entries in a
    # per-process random order (a Rust HashMap), so two equal mask files can differ in bytes.
    got_m, want_m = (load_file(str(r / "masks.safetensors")) for r in (candidate, reference))
    assert sorted(got_m) == sorted(want_m)
    assert all(torch.equal(got_m[k], want_m[k]) for k in got_m), "masks differ"
    for name in ("localization.json", "localization_after.json"):  # solver timings aside
        got_l = strip_timing(json.loads((candidate / name).read_text()))
        assert got_l == strip_timing(json.loads((reference / name).read_text())), name
    for path in sorted((reference / "circuits").glob("*.json")):
        got_c = strip_timing(json.loads((candidate / "circuits" / path.name).read_text()))
        want_c = strip_timing(json.loads(path.read_text()))
        assert _drop_cache_flags(got_c) == _drop_cache_flags(want_c), path.name


def _drop_cache_flags(data: Any) -> Any:
    """``cache_hit`` says where a circuit came from, not what it is."""
    if isinstance(data, dict):
        return {k: _drop_cache_flags(v) for k, v in data.items() if k != "cache_hit"}
    if isinstance(data, list):
        return [_drop_cache_flags(v) for v in data]
    return data
