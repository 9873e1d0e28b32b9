"""The run report: a Markdown table in the shape of the paper's Table 1, Table 3, and figures."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # reports are written headless
import matplotlib.pyplot as plt  # noqa: E402

from clue_mi.stats import Interval, format_interval, separated  # noqa: E402

CATEGORIES = ("forget", "conflict", "retain", "safe")
KINDS = ("q", "k", "v", "head", "mlp")


def load_results(run: Path) -> list[dict[str, Any]]:
    """Every ``results/{method}.json`` of a run, original model first."""
    rows = [json.loads(p.read_text()) for p in sorted((run / "results").glob("*.json"))]
    order = ["original", "clue", "full", "wagle", "random", "entangled"]
    return sorted(rows, key=lambda r: order.index(r["method"]) if r["method"] in order else 99)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _pct_ci(x: float | None, ci: list[float] | None) -> str:
    """A percentage with its bootstrap 95% interval over prompts, where one was recorded."""
    if x is None or ci is None:
        return _pct(x)
    return format_interval(Interval(x, *ci))


def mia_interval(row: dict[str, Any]) -> Interval | None:
    """The row's MIA AUC with its bootstrap 95% interval, where one was recorded (and finite)."""
    ci = row.get("ci", {}).get("mia_auc")
    auc = row.get("mia_auc")
    if ci is None or auc is None or not all(math.isfinite(x) for x in (auc, *ci)):
        return None
    return Interval(auc, *ci)


def _mia_cell(row: dict[str, Any]) -> str:
    interval = mia_interval(row)
    if interval is None:
        return f"{row['mia_auc']:.3f}"
    return format_interval(interval, scale=1.0, digits=3)


def accuracy_intervals(row: dict[str, Any], retain: list[str]) -> dict[str, Interval]:
    """The row's accuracy-based metrics that carry an interval, by display name."""
    ci = row.get("ci", {})
    out = {}
    for key, name in (("fe", "FE"), ("fe_phrasings", "FE held-out phrasings")):
        if row.get(key) is not None and ci.get(key) is not None:
            out[name] = Interval(row[key], *ci[key])
    for t in retain:
        if row["ru"].get(t) is not None and t in ci.get("ru", {}):
            out[f"RU {t}"] = Interval(row["ru"][t], *ci["ru"][t])
    return out


def spread_note(rows: list[dict[str, Any]], retain: list[str]) -> str:
    """Which changes from the original model exceed their spread (disjoint 95% intervals).

    Everything not listed moved by less than its bootstrap interval over eval prompts: it is
    not a measured difference, whatever the point values say.
    """
    original = next((r for r in rows if r["method"] == "original"), None)
    if original is None:
        return ""
    base = accuracy_intervals(original, retain)
    mia_base = mia_interval(original)
    lines = []
    for r in rows:
        if r["method"] == "original":
            continue
        moved = [
            f"{name} {100 * iv.value:.1f} vs {100 * base[name].value:.1f}"
            for name, iv in accuracy_intervals(r, retain).items()
            if name in base and separated(iv, base[name])
        ]
        mia = mia_interval(r)
        if mia is not None and mia_base is not None and separated(mia, mia_base):
            moved.append(f"MIA AUC {mia.value:.3f} vs {mia_base.value:.3f}")
        lines.append(f"- {r['method']}: " + ("; ".join(moved) if moved else "none"))
    return "\n".join(lines)


def mia_ties_note(rows: list[dict[str, Any]]) -> str:
    """One sentence on MIA ties: the largest fraction of member / non-member pairs whose scores
    are within 1e-4 (float noise orders them), so a reader can tell whether the AUC is solid."""
    ties = [r["mia_ties"] for r in rows if r.get("mia_ties") is not None]
    ties = [x for x in ties if x == x]  # a broken model's NaN says nothing about ties
    if not ties:
        return ""
    return f"Tied MIA pairs (within 1e-4): at most {100 * max(ties):.1f}% in any row. "


def method_label(method: str, loss: str) -> str:
    from clue_mi.experiment import METHOD_LABELS

    return METHOD_LABELS.get(method, method).format(loss=loss.upper())


def results_table(rows: list[dict[str, Any]], retain: list[str], loss: str) -> str:
    """Table 1: method × unlearned-parameter %, steps, FE (trained and held-out phrasings), RU
    per retain set, GU, MIA, Rouge-L. A row whose model gave non-finite logits is marked."""
    head = ["Method", "Unlearned %", "Steps", "FE ↑", "FE held-out phrasings ↑"]
    head += [f"RU {t} ↑" for t in retain] + ["GU ↑", "MIA AUC", "1 − Rouge-L ↑"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        label = method_label(r["method"], loss)
        if r.get("finite") is False:
            label += " ⚠ broken (non-finite logits)"
        cells = [label, f"{100 * r['unlearned_ratio']:.2f}", str(r.get("steps", 0))]
        ci = r.get("ci", {})
        cells += [
            _pct_ci(r["fe"], ci.get("fe")),
            _pct_ci(r.get("fe_phrasings"), ci.get("fe_phrasings")),
        ]
        cells += [_pct_ci(r["ru"].get(t), ci.get("ru", {}).get(t)) for t in retain]
        cells += [_pct(r.get("gu")), _mia_cell(r), _pct(r["one_minus_rouge_l"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def step_budget_note(rows: list[dict[str, Any]]) -> str:
    """Whether every unlearning row trained the same number of optimizer steps, and why not."""
    trained = [r for r in rows if r["method"] != "original"]
    steps = {r.get("steps", 0) for r in trained}
    notes = [f"{r['method']}: {n}" for r in trained for n in r.get("notes", [])]
    if not trained:
        return ""
    if len(steps) == 1:
        text = f"Every method trained {steps.pop()} optimizer steps (equal step budget)."
    else:
        per = ", ".join(f"{r['method']} {r.get('steps', 0)}" for r in trained)
        text = f"**Unequal step budgets** ({per}): these rows are not comparable."
    return text + ("" if not notes else " " + "; ".join(notes) + ".")


def category_table(before: dict, after: dict | None) -> str:
    """Table 3: localized components per category and kind, before and after unlearning."""
    lines = ["| Kind | " + " | ".join(f"{c} (before / after)" for c in CATEGORIES) + " |"]
    lines.append("|" + "---|" * (len(CATEGORIES) + 1))
    for kind in KINDS:
        cells = []
        for cat in CATEGORIES:
            b = before.get(kind, {}).get(cat, 0)
            a = "–" if after is None else after.get(kind, {}).get(cat, 0)
            cells.append(f"{b} / {a}")
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def plot_methods(rows: list[dict[str, Any]], loss: str, path: Path) -> Path:
    """Grouped bars: forget efficacy, mean retain utility and GU of every method."""
    metrics = [("fe", "forget efficacy"), ("ru_mean", "retain utility (mean)"), ("gu", "GU")]
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(metrics)
    for j, (key, label) in enumerate(metrics):
        xs = [i + j * width for i in range(len(rows))]
        ax.bar(xs, [r.get(key) or 0.0 for r in rows], width, label=label)
    ax.set_xticks([i + width for i in range(len(rows))])
    ax.set_xticklabels([method_label(r["method"], loss) for r in rows], rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy-based score")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("Forgetting against keeping, per method")
    _save(fig, path)
    return path


def plot_categories(before: dict, after: dict | None, path: Path) -> Path:
    """Stacked bars of forget / conflict / retain components by kind, before and after."""
    panels = [("before unlearning", before)] + ([("after CLUE", after)] if after else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.5), squeeze=False)
    for ax, (title, counts) in zip(axes[0], panels, strict=True):
        bottom = [0] * len(KINDS)
        for cat in ("forget", "conflict", "retain"):
            vals = [counts.get(k, {}).get(cat, 0) for k in KINDS]
            ax.bar(KINDS, vals, bottom=bottom, label=cat)
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        ax.set_title(title)
        ax.set_ylabel("components")
    axes[0][0].legend(fontsize=8)
    _save(fig, path)
    return path


def _semantics_text(semantics: str) -> str:
    """One sentence on how the localization was posed (DESIGN §7)."""
    if semantics == "gates":
        return (
            "Semantics `gates` (paper Appendix B): every gate of the forget circuit switched "
            "off, every gate of each retain circuit kept on; fewest conflicts, then fewest edits."
        )
    return (
        f"Semantics `{semantics}`: only the forget output switched off and the retain outputs "
        "kept on; the optimum is a minimal cut (the smallest edit), not the paper's per-gate "
        "localization."
    )


def environment_lines(run: Path) -> list[str]:
    """What the table depends on beyond the seed (``environment.json``), and the limits of
    reproducing it (README, "Reproducibility")."""
    from clue_mi.rundir import ENVIRONMENT, environment_line

    path = run / ENVIRONMENT
    if not path.exists():
        return []
    env = json.loads(path.read_text())
    lines = ["", "## Environment", "", f"Created under: {environment_line(env['created'])}."]
    others = [e for e in env.get("resumed", []) if e != env["created"]]
    for other in others:
        lines += ["", f"**Resumed under a different environment:** {environment_line(other)}."]
    lines += [
        "",
        "The same seed and options reproduce this table byte for byte in this environment; on "
        "another CPU, torch build or thread count, float differences can flip near-ties "
        "(a prompt's accuracy, an AUC rank) and training amplifies them.",
    ]
    return lines


def timing_lines(run: Path) -> list[str]:
    """The "Time per stage" section, from ``timings.json`` (none if the run has no such file)."""
    path = run / "timings.json"
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    total = data["total_seconds"]
    lines = [
        "",
        "## Time per stage",
        "",
        "Wall time of this run's stages on this machine (not results: they vary between identical "
        "runs). Attribution and localization inside re-localization are counted in both."
        + (" This run was resumed: earlier attempts are not included." if data["resumed"] else ""),
        "",
        "| Stage | Seconds | Calls | Share of the run |",
        "|---|---|---|---|",
    ]
    for name, entry in data["stages"].items():
        share = 100 * entry["seconds"] / total if total else 0.0
        lines.append(f"| {name} | {entry['seconds']:.1f} | {entry['calls']} | {share:.0f}% |")
    lines.append(f"| whole run | {total:.1f} | 1 | 100% |")
    return lines


def eval_sizes_text(rows: list[dict[str, Any]], forget: str) -> str:
    """``"Eval prompts: capitals 123 (held-out phrasings 123), ioi 128, ..."`` from the first
    row that recorded its eval split sizes; ``""`` when none did."""
    sizes = next((r["eval_sizes"] for r in rows if r.get("eval_sizes")), None)
    if sizes is None:
        return ""
    phrasings = sizes.get("fe_phrasings")
    held = f" (held-out phrasings {phrasings})" if phrasings else ""
    parts = [f"{forget} {sizes['fe']}{held}"]
    parts += [f"{name} {n}" for name, n in sizes["ru"].items()]
    return "Eval prompts per task: " + ", ".join(parts) + "."


def write_report(run: str | Path, cfg, seconds: float | None = None) -> Path:
    """Write ``report.md`` and its figures into the run folder ``run``."""
    from clue_mi.localization import Localization

    run = Path(run)
    rows = load_results(run)
    retain = list(cfg.pipeline.retain)
    before = Localization.load(run / "localization.json")
    after_path = run / "localization_after.json"
    after = Localization.load(after_path) if after_path.exists() else None
    counts_before = before.counts_by_kind()
    counts_after = after.counts_by_kind() if after else None
    plot_methods(rows, cfg.loss, run / "methods.png")
    plot_categories(counts_before, counts_after, run / "categories.png")
    p = cfg.pipeline
    text = [
        "# CLUE run report",
        "",
        f"Model: `{cfg.model or 'SmolLM2-135M-Instruct (embedded)'}`. Forget set: `{p.forget}`. "
        f"Retain sets: {', '.join(f'`{t}`' for t in retain)}. Loss: {cfg.loss.upper()}, "
        f"lr {cfg.lr:g}, epochs {cfg.epochs[0]} + {cfg.epochs[1]}, λ {cfg.lam:g}. Circuits: "
        f"{p.method}, sparsity {p.sparsity}, {p.n} attribution prompts per task. "
        + eval_sizes_text(rows, p.forget)
        + (" **Quick smoke run: numbers are not meaningful.**" if cfg.quick else ""),
        "",
        "## Results (shape of the paper's Table 1)",
        "",
        results_table(rows, retain, cfg.loss),
        "",
        step_budget_note(rows),
        "",
        "FE = 1 − accuracy on the forget task's held-out prompts; FE held-out phrasings = the same "
        "facts asked in templates that training never used (– where the forget task has none); "
        "RU = accuracy on each retain task's held-out prompts; GU = mean accuracy over the "
        "lm-evaluation-harness tasks. Accuracies fail closed: a non-finite or tied top choice "
        "is wrong, and the correct choice sits at a seeded random position. "
        "All in %. MIA: ROC-AUC of Min-20% Prob scores over each sentence's answer tokens "
        "(the capital after the template), forget text = members (label 1) against held-out "
        "text in the same templates (label 0); above 0.5 the forget answers look more familiar "
        "than unseen ones, below 0.5 less; compare with the original model's row, not with 0.5. "
        f"{mia_ties_note(rows)}"
        "Rouge-L: recall of greedy continuations against the forget answers. "
        "Brackets: bootstrap 95% interval over the eval prompts (2,000 resamples, seeded).",
        "",
        "Changes from the original model larger than their spread (disjoint 95% intervals); "
        "every other difference in the table is within the prompt-sampling noise:",
        "",
        spread_note(rows, retain),
        "",
        "![methods](methods.png)",
        "",
        "## Localization (paper Table 3: before and after unlearning)",
        "",
        _semantics_text(before.semantics),
        "",
        f"Before: {before.summary()}",
        "",
        f"After CLUE: {after.summary() if after else 'not re-localized'}",
        "",
        category_table(counts_before, counts_after),
        "",
        "![categories](categories.png)",
    ]
    for node in sorted(before.conflict)[:3]:
        if node in before.explanations:
            why = before.explain(node)
            text += ["", f"### Why `{node}` is a conflict node", "", "```", why, "```"]
    text += environment_lines(run)
    if seconds is not None:
        text += ["", f"Wall time: {seconds / 60:.1f} min."]
    text += timing_lines(run)
    path = run / "report.md"
    tmp = run / ".report.md.tmp"
    tmp.write_text("\n".join(text) + "\n")
    os.replace(tmp, path)
    return path
