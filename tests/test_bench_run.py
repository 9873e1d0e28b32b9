"""benchmarks/bench_run.py --quick: the stage breakdown and its floor, on the tiny model."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_run.py"


def test_bench_run_quick_prints_stages_and_floor(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_run", BENCH)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    result = bench.main(["--quick", "--methods", "clue", "--retain", "ioi", "--json", str(out)])
    printed = capsys.readouterr().out
    assert "| attribution |" in printed and "× floor" in printed
    assert json.loads(out.read_text())["total"] == result["total"]
    groups, floor = result["groups"], result["floor"]
    assert set(groups) == set(floor) == {"attribution", "faithfulness", "training", "evaluation"}
    assert all(v > 0 for v in floor.values()) and all(v > 0 for v in groups.values())
    # 2 tasks, one joint attribution each, before and after unlearning
    assert result["stages"]["attribution"]["calls"] == 4
    assert result["total"] >= sum(groups.values())
