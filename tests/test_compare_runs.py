"""benchmarks/compare_runs.py: cells beyond their spread are found, the rest pass."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "compare_runs.py"


def _load():
    spec = importlib.util.spec_from_file_location("compare_runs", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(folder: Path, fe: float, fe_ci: list[float], gu: float) -> Path:
    (folder / "results").mkdir(parents=True)
    row = {
        "method": "full",
        "fe": fe,
        "fe_phrasings": None,
        "ru": {"ioi": 1.0},
        "ci": {"fe": fe_ci, "ru": {"ioi": [1.0, 1.0]}},
        "gu": gu,
        "mia_auc": 0.5,
        "one_minus_rouge_l": 1.0,
    }
    (folder / "results" / "full.json").write_text(json.dumps(row))
    return folder


def test_overlapping_intervals_pass_and_disjoint_ones_fail(tmp_path, capsys):
    compare_runs = _load()
    a = _run(tmp_path / "a", 0.10, [0.0, 0.20], 0.66)
    near = _run(tmp_path / "near", 0.25, [0.15, 0.35], 0.60)  # outside a's interval, overlapping
    far = _run(tmp_path / "far", 0.60, [0.45, 0.75], 0.66)
    assert compare_runs.main([str(a), str(near)]) == 0
    printed = capsys.readouterr().out
    assert "moved" in printed and "diff -0.060" in printed
    assert compare_runs.main([str(a), str(far)]) == 1
    assert "1 accuracy cell(s) differ" in capsys.readouterr().out


def test_a_folder_without_results_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        _load().main([str(tmp_path), str(tmp_path)])
    assert info.value.code == 2
    assert "is not a run folder" in capsys.readouterr().err
