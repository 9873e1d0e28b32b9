"""Compare two run folders cell by cell: are their tables the same within their spread?

Usage::

    python benchmarks/compare_runs.py runs/fp32 runs/bf16

For every method present in both runs it prints each metric of A and B. Accuracy cells (FE, FE
on held-out phrasings, RU per task) carry bootstrap 95% intervals over eval prompts; a pair is
marked ``DIFFERS`` when the two intervals are disjoint (the same rule as the report's "changes
larger than their spread"), ``moved`` when B's value lies outside A's interval but the intervals
overlap, and ``=`` otherwise. GU, MIA AUC and 1 − Rouge-L carry no interval here; their absolute
difference is printed. The last line counts the cells that differ beyond their spread; the exit
status is 1 when there are any, so the script can gate a change (bf16, a faster kernel).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clue_mi.report import accuracy_intervals, load_results
from clue_mi.stats import separated

UNBOUNDED = (("gu", "GU"), ("mia_auc", "MIA AUC"), ("one_minus_rouge_l", "1 - Rouge-L"))


def compare(run_a: Path, run_b: Path) -> tuple[list[str], int]:
    """Printable lines and the number of accuracy cells whose intervals are disjoint."""
    rows_a = {r["method"]: r for r in load_results(run_a)}
    rows_b = {r["method"]: r for r in load_results(run_b)}
    lines, differ = [], 0
    for method in [m for m in rows_a if m in rows_b]:
        a, b = rows_a[method], rows_b[method]
        retain = sorted(a["ru"])
        lines.append(f"{method}:")
        iv_a, iv_b = accuracy_intervals(a, retain), accuracy_intervals(b, retain)
        for name, ia in iv_a.items():
            ib = iv_b.get(name)
            if ib is None:
                continue
            if separated(ia, ib):
                mark, differ = "DIFFERS", differ + 1
            elif not ia.low <= ib.value <= ia.high:
                mark = "moved"
            else:
                mark = "="
            lines.append(
                f"  {name:28s} {100 * ia.value:6.1f} [{100 * ia.low:5.1f}, {100 * ia.high:5.1f}]"
                f"  {100 * ib.value:6.1f} [{100 * ib.low:5.1f}, {100 * ib.high:5.1f}]  {mark}"
            )
        for key, name in UNBOUNDED:
            va, vb = a.get(key), b.get(key)
            if va is None or vb is None:
                continue
            lines.append(f"  {name:28s} {va:8.3f}  {vb:8.3f}  diff {vb - va:+.3f}")
    lines.append(f"{differ} accuracy cell(s) differ beyond their 95% intervals")
    return lines, differ


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    args = parser.parse_args(argv)
    for run in (args.run_a, args.run_b):
        if not (run / "results").is_dir():
            parser.error(f"{run} is not a run folder (no results/); pass two `clue-mi run` folders")
    lines, differ = compare(args.run_a, args.run_b)
    print("\n".join(lines))
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
