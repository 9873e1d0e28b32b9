"""The same seed gives the same table in a fresh process (DESIGN §10), on this machine.

The reference is the README's smoke run (``bash scripts/run.sh --quick --model tiny-llama``,
PYTHONHASHSEED=0); the second run is a separate process with another PYTHONHASHSEED and an
empty circuit cache, so every circuit, the localization, the masks, the training and the
evaluation are computed again. Across machines only a tolerance holds (README,
"Reproducibility"); ``environment.json`` records what a table depends on beyond the seed.
"""

from __future__ import annotations

import json

from run_helpers import assert_same_run, run_shell, subprocess_env


def test_same_seed_same_table_in_a_fresh_process(smoke_run, tmp_path):
    out = tmp_path / "again"
    env = subprocess_env(tmp_path / "cache", PYTHONHASHSEED="12345")
    # CLUE only (each method starts from the original weights and the seed, so its row does
    # not depend on which other methods run); the original model's row comes with it.
    done = run_shell(
        f"clue-mi run --quick --model tiny-llama --methods clue --out {out}", env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.stem for p in (out / "results").glob("*.json")) == ["clue", "original"]
    assert_same_run(out, smoke_run)
    # Both ran in the same environment, and both recorded it.
    envs = [json.loads((r / "environment.json").read_text()) for r in (out, smoke_run)]
    assert envs[0]["created"] == envs[1]["created"]
    assert {"torch", "torch_threads", "cpu_capability", "onednn"} <= set(envs[0]["created"])


def test_report_states_the_environment(smoke_run):
    report = (smoke_run / "report.md").read_text()
    env = json.loads((smoke_run / "environment.json").read_text())["created"]
    assert "## Environment" in report
    assert f"torch {env['torch']}" in report and f"CPU capability {env['cpu_capability']}" in report
    assert f"{env['torch_threads']} threads" in report
