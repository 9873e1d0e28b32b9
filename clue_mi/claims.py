"""The paper's claims against a paper folder (``clue_mi.paper``): tables, spreads, verdicts.

Every comparison is between intervals: mean ± one standard deviation over seeds for Table 1,
bootstrap 95% intervals over eval prompts elsewhere. A difference counts only when the two
intervals are disjoint (:func:`clue_mi.stats.separated`). A claim that CLUE is better is

* **reproduced** when every comparison it makes goes CLUE's way beyond the spread,
* **not reproduced** when at least one goes against CLUE beyond the spread,
* **not separated** otherwise (the spread is larger than the difference somewhere).

A "no worse" claim (e.g. general utility kept) is reproduced unless one comparison goes
against CLUE beyond the spread. Nothing here is tuned: the rules are fixed before the numbers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from clue_mi import rundir  # noqa: E402
from clue_mi.report import (  # noqa: E402
    _save,
    category_table,
    eval_sizes_text,
    load_results,
    method_label,
)
from clue_mi.stats import Interval, format_interval, mean_std, seed_interval, separated  # noqa: E402

Outcome = Literal["higher", "lower", "within spread"]
Verdict = Literal["reproduced", "not reproduced", "not separated", "not measured"]
# Table 1 metrics aggregated over seeds (``ru.TASK`` per retain task are added).
SEED_METRICS = ("unlearned_ratio", "steps", "fe", "fe_phrasings", "ru_mean", "gu", "mia_auc",
                "one_minus_rouge_l")  # fmt: skip
FIG7_DISTANCE = 0.1  # total-variation distance between per-kind shares that counts as "differs"


# ----------------------------------------------------------------------------- aggregation


def aggregate_seeds(rows_by_seed: Mapping[int, Sequence[Mapping[str, Any]]]) -> dict[str, dict]:
    """``{method: {metric: {"mean", "std", "values"}}}`` over the seeds that have the method.

    ``values`` are in seed order; a metric missing (None) in any seed is left out.
    """
    out: dict[str, dict] = {}
    methods = dict.fromkeys(r["method"] for rows in rows_by_seed.values() for r in rows)
    for method in methods:
        per_seed = [
            r for s in sorted(rows_by_seed) for r in rows_by_seed[s] if r["method"] == method
        ]
        keys = list(SEED_METRICS) + sorted({f"ru.{t}" for r in per_seed for t in r.get("ru", {})})
        stats: dict[str, Any] = {"seeds": len(per_seed)}
        for key in keys:
            got = [_get(r, key) for r in per_seed]
            values = [v for v in got if v is not None and math.isfinite(v)]
            if values and len(values) == len(got):
                mean, std = mean_std(values)
                stats[key] = {"mean": mean, "std": std, "values": values}
        out[method] = stats
    return out


def _get(row: Mapping[str, Any], key: str) -> float | None:
    if key.startswith("ru."):
        return row.get("ru", {}).get(key[3:])
    value = row.get(key)
    return None if value is None else float(value)


def seed_spread(stats: Mapping[str, Any], key: str) -> Interval | None:
    """Mean ± std over seeds of one aggregated metric, or None if it was not measured."""
    entry = stats.get(key)
    return None if entry is None else seed_interval(entry["values"])


def prompt_spread(row: Mapping[str, Any], key: str) -> Interval | None:
    """A metric of one row with its bootstrap interval (``ci``), or None."""
    value, ci = row.get(key), row.get("ci", {}).get(key)
    if value is None or ci is None:
        return None
    return Interval(value, min(ci[0], value), max(ci[1], value))


# ----------------------------------------------------------------------------- verdicts


def compare(clue: Interval, other: Interval) -> Outcome:
    """Whether CLUE's value is higher or lower than ``other`` beyond both spreads."""
    if not separated(clue, other):
        return "within spread"
    return "higher" if clue.value > other.value else "lower"


def verdict(outcomes: Sequence[Outcome], kind: Literal["better", "no worse"] = "better") -> Verdict:
    """The claim's verdict from its comparisons (see the module docstring)."""
    if not outcomes:
        return "not measured"
    if "lower" in outcomes:
        return "not reproduced"
    if kind == "no worse" or all(o == "higher" for o in outcomes):
        return "reproduced"
    return "not separated"


@dataclass
class Claim:
    """One claim of the paper, the comparisons that test it, and the verdict."""

    source: str
    text: str
    kind: Literal["better", "no worse"] = "better"
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    verdict: Verdict = "not measured"

    def add(self, against: str, metric: str, clue: Interval | None, other: Interval | None,
            scale: float = 100.0) -> None:  # fmt: skip
        if clue is None or other is None:
            return
        self.comparisons.append({
            "against": against, "metric": metric, "outcome": compare(clue, other),
            "clue": _fmt(clue, scale), "other": _fmt(other, scale),
        })  # fmt: skip

    def decide(self, outcomes: Sequence[Outcome] | None = None) -> Claim:
        got = outcomes if outcomes is not None else [c["outcome"] for c in self.comparisons]
        self.verdict = verdict(list(got), self.kind)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "claim": self.text, "kind": self.kind,
                "verdict": self.verdict, "comparisons": self.comparisons}  # fmt: skip


def _fmt(interval: Interval, scale: float) -> str:
    return format_interval(interval, scale=scale, digits=1 if scale == 100.0 else 3)


def table1_claims(agg: Mapping[str, dict], loss: str) -> list[Claim]:
    """Paper Table 1: CLUE forgets more than the localization baselines at its ratio, keeps
    more retain utility than the forget-loss-only rows, and keeps general utility."""
    clue = agg.get("clue")
    claims = [
        Claim("Table 1", "CLUE forgets more (FE) than WAGLE, random and forget-circuit masks"),
        Claim(
            "Table 1",
            "CLUE keeps more retain utility (mean RU) than GA, NPO and PO on all "
            "weights with the forget loss alone",
        ),  # fmt: skip
        Claim(
            "Table 1",
            f"CLUE forgets at least as much as {loss.upper()} on all weights with the retain loss",
            kind="no worse",
        ),  # fmt: skip
        Claim(
            "Table 1",
            "CLUE keeps general utility (GU no lower than the original model)",
            kind="no worse",
        ),
    ]
    if clue is None:
        return claims
    for other in ("wagle", "random", "entangled"):
        if other in agg:
            claims[0].add(other, "FE", seed_spread(clue, "fe"), seed_spread(agg[other], "fe"))
    for other in ("ga", "npo", "po"):
        if other in agg:
            claims[1].add(other, "RU mean", seed_spread(clue, "ru_mean"),
                          seed_spread(agg[other], "ru_mean"))  # fmt: skip
    if f"{loss}_retain" in agg:
        claims[2].add(f"{loss}_retain", "FE", seed_spread(clue, "fe"),
                      seed_spread(agg[f"{loss}_retain"], "fe"))  # fmt: skip
    if "original" in agg:
        claims[3].add("original", "GU", seed_spread(clue, "gu"), seed_spread(agg["original"], "gu"))
    return [c.decide() for c in claims]


def row_outcome(clue: Mapping[str, Any], other: Mapping[str, Any]) -> tuple[Outcome, dict]:
    """CLUE against one ablation or ratio row on FE and mean RU (bootstrap intervals):
    "higher" when CLUE wins on one and loses on neither beyond the spread, "lower" the
    reverse, "within spread" otherwise."""
    got = {}
    for key in ("fe", "ru_mean"):
        a, b = prompt_spread(clue, key), prompt_spread(other, key)
        got[key] = "within spread" if a is None or b is None else compare(a, b)
    values = set(got.values())
    if "higher" in values and "lower" not in values:
        return "higher", got
    if "lower" in values and "higher" not in values:
        return "lower", got
    return "within spread", got


def table2_claim(clue: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> Claim:
    claim = Claim("Table 2", "every ablation (−M_f, −M_c, M_c before M_f, other stage losses) "
                  "does worse than CLUE on FE or RU")  # fmt: skip
    outcomes = []
    for row in rows:
        outcome, parts = row_outcome(clue, row)
        outcomes.append(outcome)
        claim.comparisons.append({"against": row["ablation"], "outcome": outcome, **parts})
    return claim.decide(outcomes)


def table3_claim(before: Mapping[str, int], after: Mapping[str, int] | None) -> Claim:
    claim = Claim("Table 3", "after CLUE, the forget circuit keeps fewer forget components")
    if after is None:
        return claim
    outcome: Outcome = "higher" if after["forget"] < before["forget"] else "lower"
    claim.comparisons.append({"against": "before unlearning", "outcome": outcome,
                              "before": before["forget"], "after": after["forget"]})  # fmt: skip
    return claim.decide([outcome])


def conflicts_by_k(data: Mapping[str, Any]) -> dict[int, list[int]]:
    """Conflict counts of the retain subsets (Figure 3a), grouped by subset size."""
    per_k: dict[int, list[int]] = {}
    for subset in data["subsets"]:
        per_k.setdefault(subset["k"], []).append(subset["conflict"])
    return per_k


def figure3a_claims(data: Mapping[str, Any]) -> list[Claim]:
    grow = Claim("Figure 3a", "conflicts grow with the number of retain tasks")
    per_k = conflicts_by_k(data)
    means = [sum(v) / len(v) for _, v in sorted(per_k.items())]
    steps: list[Outcome] = ["higher" if b > a else "lower" if b < a else "within spread"
                            for a, b in zip(means, means[1:], strict=False)]  # fmt: skip
    grow.comparisons.append({"against": "fewer retain tasks", "mean conflicts": means})
    grow.decide(steps)
    keep = Claim("Figure 3a", "CLUE's FE holds as more retain tasks are protected", "no worse")
    trained = sorted(data["trained"], key=lambda r: r["k"])
    if len(trained) > 1:
        keep.add(f"{trained[0]['k']} retain task(s)", "FE", prompt_spread(trained[-1], "fe"),
                 prompt_spread(trained[0], "fe"))  # fmt: skip
    return [grow, keep.decide()]


def figure4_claim(rows: Sequence[Mapping[str, Any]]) -> Claim:
    claim = Claim("Figure 4", "sparser circuits are less faithful (KL grows with sparsity)")
    rows = sorted(rows, key=lambda r: r["sparsity"])
    outcomes: list[Outcome] = []
    for d in ("noising", "denoising"):
        kl = [r[f"kl_{d}"] for r in rows]
        outcomes += ["higher" if b >= a else "lower" for a, b in zip(kl, kl[1:], strict=False)]
        claim.comparisons.append({"against": f"{d} circuits", "kl by sparsity": kl})
    return claim.decide(outcomes)


def figure6_claim(rows: Sequence[Mapping[str, Any]]) -> Claim:
    claim = Claim("Figure 6", "CLUE beats WAGLE and random masks at every forget ratio "
                  "(FE or RU higher, neither lower)")  # fmt: skip
    outcomes = []
    for ratio in sorted({r["ratio"] for r in rows}):
        at = {r["method"]: r for r in rows if r["ratio"] == ratio}
        if "clue" not in at:
            continue
        for other in ("wagle", "random"):
            if other in at:
                outcome, parts = row_outcome(at["clue"], at[other])
                outcomes.append(outcome)
                claim.comparisons.append(
                    {"against": f"{other} at {ratio:g}", "outcome": outcome, **parts}
                )
    return claim.decide(outcomes)


def kind_shares(*counts: Mapping[str, Sequence[int]]) -> dict[str, float]:
    """Share of the masks' elements (``masks.mask_counts`` of each, added) in each matrix kind
    (q, k, v, o, gate, up, down)."""
    totals: dict[str, float] = {}
    for c in counts:
        for kind, per_layer in c.items():
            totals[kind] = totals.get(kind, 0.0) + float(sum(per_layer))
    whole = sum(totals.values())
    return {k: (t / whole if whole else 0.0) for k, t in totals.items()}


def figure7_claim(data: Mapping[str, Any]) -> Claim:
    claim = Claim("Figure 7", "CLUE's mask lies in other weights than WAGLE's (total-variation "
                  f"distance of the per-kind shares ≥ {FIG7_DISTANCE})")  # fmt: skip
    counts = data["counts"]
    a = kind_shares(counts["CLUE forget"], counts["CLUE conflict"])
    b = kind_shares(counts["WAGLE"])
    distance = 0.5 * sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in set(a) | set(b))
    outcome: Outcome = "higher" if distance >= FIG7_DISTANCE else "lower"
    claim.comparisons.append({"against": "WAGLE", "outcome": outcome,
                              "distance": round(distance, 3),
                              "clue shares": _round(a), "wagle shares": _round(b)})  # fmt: skip
    return claim.decide([outcome])


def _round(d: Mapping[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in d.items()}


# ----------------------------------------------------------------------------- the report


def _read(out: Path, name: str) -> Any:
    path = out / f"{name}.json"
    return rundir.read_json(path, name) if path.exists() else None


def summarize(out: Path, cfg) -> dict[str, Any]:
    """Every table of the paper folder and the verdict of every claim (→ ``paper.json``)."""
    from clue_mi.localization import Localization

    first = out / f"seed{cfg.seeds[0]}"
    rows_by_seed = {s: load_results(out / f"seed{s}") for s in cfg.seeds}
    agg = aggregate_seeds(rows_by_seed)
    clue0 = next(r for r in rows_by_seed[cfg.seeds[0]] if r["method"] == "clue")
    before = Localization.load(first / "localization.json")
    after_path = first / "localization_after.json"
    after = Localization.load(after_path) if after_path.exists() else None
    sizes = {c: len(getattr(before, c)) for c in ("forget", "conflict", "retain", "safe")}
    sizes_after = None if after is None else {
        c: len(getattr(after, c)) for c in ("forget", "conflict", "retain", "safe")
    }  # fmt: skip
    from clue_mi.paper import PARTS

    parts = {name: _read(out, name) for name in PARTS}
    claims = table1_claims(agg, cfg.run.loss)
    claims.append(table2_claim(clue0, parts["ablations"] or []))
    claims.append(table3_claim(sizes, sizes_after))
    if parts["retain_tasks"]:
        claims += figure3a_claims(parts["retain_tasks"])
    claims.append(figure4_claim([r for r in parts["sparsity"] or [] if "error" not in r]))
    claims.append(figure6_claim(parts["ratios"] or []))
    if parts["neurons"]:
        claims.append(figure7_claim(parts["neurons"]))
    return {
        "table1": agg,
        "clue_first_seed": clue0,
        "table3": {"before": sizes, "after": sizes_after,
                   "by_kind_before": before.counts_by_kind(),
                   "by_kind_after": None if after is None else after.counts_by_kind()},
        **parts,
        "claims": [c.to_dict() for c in claims],
    }  # fmt: skip


def _ms(stats: Mapping[str, Any], key: str, scale: float = 100.0, digits: int = 1) -> str:
    entry = stats.get(key)
    if entry is None:
        return "–"
    return f"{entry['mean'] * scale:.{digits}f} ± {entry['std'] * scale:.{digits}f}"


def table1_markdown(agg: Mapping[str, dict], retain: Sequence[str], loss: str) -> str:
    head = ["Method", "Unlearned %", "Steps", "FE ↑", "FE phrasings ↑"]
    head += [*(f"RU {t} ↑" for t in retain), "RU mean ↑", "GU ↑", "MIA AUC", "1 − Rouge-L ↑"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, s in agg.items():
        cells = [method_label(method, loss), _ms(s, "unlearned_ratio", digits=2),
                 _ms(s, "steps", 1.0, 0), _ms(s, "fe"), _ms(s, "fe_phrasings"),
                 *(_ms(s, f"ru.{t}") for t in retain), _ms(s, "ru_mean"), _ms(s, "gu"),
                 _ms(s, "mia_auc", 1.0, 3), _ms(s, "one_minus_rouge_l")]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ci(row: Mapping[str, Any], key: str) -> str:
    interval = prompt_spread(row, key)
    return "–" if interval is None else format_interval(interval)


def rows_markdown(rows: Sequence[Mapping[str, Any]], first: Sequence[str]) -> str:
    """Bootstrap-interval rows (ablations, ratios, retain tasks, sparsity)."""
    head = [*first, "Unlearned %", "Steps", "FE ↑", "FE phrasings ↑", "RU mean ↑"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:
            cells = [str(r.get(k, "")) for k in first] + [f"no circuit: {r['error']}"] + [""] * 4
        else:
            cells = [_cell(r.get(k)) for k in first] + [
                f"{100 * r['unlearned_ratio']:.2f}", str(r["steps"]), _ci(r, "fe"),
                _ci(r, "fe_phrasings"), _ci(r, "ru_mean"),
            ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value)


def claims_markdown(claims: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| Source | Claim | Verdict | Measured |", "|---|---|---|---|"]
    for c in claims:
        measured = "; ".join(_comparison_text(x) for x in c["comparisons"]) or "–"
        lines.append(f"| {c['source']} | {c['claim']} | **{c['verdict']}** | {measured} |")
    return "\n".join(lines)


def _comparison_text(x: Mapping[str, Any]) -> str:
    rest = {k: v for k, v in x.items() if k not in ("against", "outcome")}
    detail = ", ".join(f"{k} {_cell(v) if not isinstance(v, dict) else json.dumps(v)}"
                       for k, v in rest.items())  # fmt: skip
    outcome = x.get("outcome")
    return f"vs {x['against']}" + (f": {outcome}" if outcome else "") + f" ({detail})"


def plot_table1(agg: Mapping[str, dict], loss: str, path: Path) -> Path:
    """FE and mean RU of every Table 1 row: mean over seeds with ± std error bars."""
    methods = list(agg)
    fig, ax = plt.subplots(figsize=(11, 4))
    width = 0.4
    for j, (key, label) in enumerate((("fe", "forget efficacy"), ("ru_mean", "retain (mean)"))):
        means = [agg[m].get(key, {}).get("mean", math.nan) for m in methods]
        stds = [agg[m].get(key, {}).get("std", 0.0) for m in methods]
        xs = [i + j * width for i in range(len(methods))]
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=label)
    ax.set_xticks([i + width / 2 for i in range(len(methods))])
    ax.set_xticklabels([method_label(m, loss) for m in methods], rotation=25, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("mean over seeds (± std)")
    ax.legend(fontsize=8)
    ax.set_title("Table 1: forgetting against keeping")
    _save(fig, path)
    return path


def _errorbar(ax, xs, rows: Sequence[Mapping[str, Any]], key: str, label: str) -> None:
    ys = [r[key] for r in rows]
    lows = [r[key] - r["ci"][key][0] for r in rows]
    highs = [r["ci"][key][1] - r[key] for r in rows]
    ax.errorbar(xs, ys, yerr=[lows, highs], marker="o", capsize=3, label=label)


def plot_ratios(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Figure 6: FE and mean RU against the forget ratio, per method (95% intervals)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["ratio"])
        xs = [r["ratio"] for r in mine]
        _errorbar(axes[0], xs, mine, "fe", method)
        _errorbar(axes[1], xs, mine, "ru_mean", method)
    for ax, title in zip(axes, ("forget efficacy", "retain utility (mean)"), strict=True):
        ax.set_xlabel("forget ratio (share of attention / MLP weights)")
        ax.set_title(title)
        ax.set_ylim(-0.05, 1.05)
        ax.legend(fontsize=8)
    _save(fig, path)
    return path


def plot_retain_tasks(data: Mapping[str, Any], path: Path) -> Path:
    """Figure 3a: conflicts (mean, min–max over subsets) and CLUE's FE against k."""
    fig, (ax_c, ax_fe) = plt.subplots(1, 2, figsize=(10, 3.8))
    per_k = conflicts_by_k(data)
    ks = sorted(per_k)
    means = [sum(per_k[k]) / len(per_k[k]) for k in ks]
    ax_c.errorbar(ks, means, yerr=[[m - min(per_k[k]) for k, m in zip(ks, means, strict=True)],
                                   [max(per_k[k]) - m for k, m in zip(ks, means, strict=True)]],
                  marker="o", capsize=3)  # fmt: skip
    ax_c.set_xlabel("number of retain tasks")
    ax_c.set_ylabel("conflict components")
    ax_c.set_title("conflicts (mean, min–max over subsets)")
    trained = sorted(data["trained"], key=lambda r: r["k"])
    _errorbar(ax_fe, [r["k"] for r in trained], trained, "fe", "FE")
    _errorbar(ax_fe, [r["k"] for r in trained], trained, "ru_mean", "RU mean")
    ax_fe.set_xlabel("number of retain tasks (first k)")
    ax_fe.set_ylim(-0.05, 1.05)
    ax_fe.legend(fontsize=8)
    ax_fe.set_title("CLUE after unlearning (95% intervals)")
    _save(fig, path)
    return path


def write_paper_report(out: str | Path, cfg, seconds: float | None = None) -> Path:
    """``paper.json``, ``report.md`` and the figures of a finished paper folder."""
    from clue_mi import plots

    out = Path(out)
    summary = summarize(out, cfg)
    rundir.write_json(out / "paper.json", summary)
    run, retain = cfg.run, list(cfg.run.pipeline.retain)
    rows0 = load_results(out / f"seed{cfg.seeds[0]}")
    plot_table1(summary["table1"], run.loss, out / "table1.png")
    figures = {"table1": "table1.png"}
    if summary["ratios"]:
        figures["figure6"] = plot_ratios(summary["ratios"], out / "figure6_ratios.png").name
    if summary["retain_tasks"]:
        figures["figure3a"] = plot_retain_tasks(
            summary["retain_tasks"], out / "figure3a_retain_tasks.png"
        ).name
    good = [r for r in summary["sparsity"] or [] if "error" not in r]
    if good:
        fig = plots.plot_sparsity_faithfulness(good, kl_keys=["kl_noising", "kl_denoising"])
        figures["figure4"] = plots.save_figure(fig, out / "figure4_sparsity.png").name
    if summary["neurons"]:
        n = summary["neurons"]
        fig = plots.plot_neuron_distribution(n["counts"], n["sizes"])
        figures["figure7"] = plots.save_figure(fig, out / "figure7_neurons.png").name
    plt.close("all")
    p = run.pipeline
    verdicts = [c["verdict"] for c in summary["claims"]]
    text = [
        f"# CLUE: the paper's experiments on {run.model or 'the embedded model'}",
        "",
        f"Model `{run.model or 'SmolLM2-135M-Instruct (embedded)'}`; forget `{p.forget}`; retain "
        f"{', '.join(f'`{t}`' for t in retain)}; loss {run.loss.upper()}, lr {run.lr:g}, epochs "
        f"{run.epochs[0]} + {run.epochs[1]}, λ {run.lam:g}; circuits {p.method}, sparsity "
        f"{p.sparsity}, {p.n} attribution prompts per task; seeds "
        f"{', '.join(map(str, cfg.seeds))}. {eval_sizes_text(rows0, p.forget)}"
        + (" **Quick smoke run: numbers are not meaningful.**" if run.quick else ""),
        "",
        f"Verdicts: {verdicts.count('reproduced')} reproduced, "
        f"{verdicts.count('not reproduced')} not reproduced, "
        f"{verdicts.count('not separated')} not separated by the spread, "
        f"{verdicts.count('not measured')} not measured.",
        "",
        "## Claims",
        "",
        "A difference counts only where the two intervals are disjoint (Table 1: mean ± std over "
        "seeds; elsewhere bootstrap 95% intervals over the eval prompts). *Reproduced*: every "
        'comparison goes CLUE\'s way beyond the spread (for a "no worse" claim: none goes '
        "against it); *not reproduced*: one goes against it beyond the spread; *not "
        "separated*: otherwise.",
        "",
        claims_markdown(summary["claims"]),
        "",
        f"## Table 1 (mean ± std over {len(cfg.seeds)} seeds, in %)",
        "",
        table1_markdown(summary["table1"], retain, run.loss),
        "",
        "![Table 1](table1.png)",
        "",
        "Each seed draws its own prompts (so its own circuits, localization and masks) and "
        "training order. Per-seed reports, with bootstrap intervals: "
        + ", ".join(f"[seed {s}](seed{s}/report.md)" for s in cfg.seeds)
        + ".",
        "",
        f"## Table 2: ablations (seed {cfg.seeds[0]}, bootstrap 95% intervals, in %)",
        "",
        rows_markdown(
            [{"ablation": "CLUE", **summary["clue_first_seed"]}, *(summary["ablations"] or [])],
            ["ablation"],
        ),  # fmt: skip
        "",
        "## Table 3: components before and after CLUE",
        "",
        f"Before: {summary['table3']['before']}; after: {summary['table3']['after']}.",
        "",
        category_table(summary["table3"]["by_kind_before"], summary["table3"]["by_kind_after"]),
        "",
    ]
    if summary["retain_tasks"]:
        text += ["## Figure 3a: conflicts and FE against the number of retain tasks", "",
                 rows_markdown(summary["retain_tasks"]["trained"], ["k", "retain", "conflict"]),
                 "", f"![Figure 3a]({figures['figure3a']})", ""]  # fmt: skip
    if summary["sparsity"]:
        text += ["## Figure 4: circuit sparsity against faithfulness and ΔFE", "",
                 rows_markdown(summary["sparsity"], ["sparsity", "kl_noising", "kl_denoising",
                                                     "delta_fe"]), ""]  # fmt: skip
        if "figure4" in figures:
            text += [f"![Figure 4]({figures['figure4']})", ""]
    if summary["ratios"]:
        text += ["## Figure 6: forget-ratio sweep", "",
                 "CLUE at a ratio: nodes ranked forget, conflict, retain, then the rest (by "
                 "forget-circuit attribution within a category), the shortest prefix with at "
                 "least ratio × the attention / MLP elements; its forget nodes train in stage 1, "
                 "the rest in stage 2. WAGLE and random masks have exactly ratio × those elements.",
                 "", rows_markdown(summary["ratios"], ["ratio", "method"]), "",
                 f"![Figure 6]({figures['figure6']})", ""]  # fmt: skip
    if "figure7" in figures:
        text += ["## Figure 7: where the masks lie", "", f"![Figure 7]({figures['figure7']})", ""]
    if seconds is not None:
        text += ["## Time", "", f"Whole paper run: {seconds / 60:.1f} min on this machine.", ""]
    path = out / "report.md"
    tmp = path.with_name(".report.md.tmp")
    tmp.write_text("\n".join(text) + "\n")
    tmp.replace(path)
    return path
