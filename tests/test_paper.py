"""The paper preset (``clue-mi paper``, DESIGN §11): every row and figure present in quick mode,
seeds aggregated as by hand, and each verdict rule decided both ways on made-up results."""

from __future__ import annotations

import json
import math
import shutil

import pytest
from run_helpers import run_shell, subprocess_env

from clue_mi import claims as C
from clue_mi import masks as M
from clue_mi.cli import main
from clue_mi.experiment import RunConfig
from clue_mi.options import OptionError
from clue_mi.paper import (
    STAGE_LOSSES,
    TABLE1,
    PaperConfig,
    clue_at_size,
    node_ranking,
)
from clue_mi.stats import Interval

QUICK_PAPER = "clue-mi paper --quick --model tiny-llama"  # the README's smoke run, as written


@pytest.fixture(scope="module")
def quick_paper(tmp_path_factory):
    """The README's ``clue-mi paper --quick --model tiny-llama`` exactly as written, in a fresh
    process (from an empty folder, so its default ``runs/paper-DATE-TIME`` lands there)."""
    where = tmp_path_factory.mktemp("paper")
    done = run_shell(QUICK_PAPER, subprocess_env(where / "cache"), cwd=where, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "report: runs/paper-" in done.stdout
    (out,) = (where / "runs").glob("paper-*")
    return out


def test_quick_paper_has_every_row_and_figure(quick_paper):
    out = quick_paper
    summary = json.loads((out / "paper.json").read_text())
    # Table 1: the original model and all ten rows, each over both seeds.
    assert set(summary["table1"]) == {"original", *TABLE1}
    assert all(s["seeds"] == 2 for s in summary["table1"].values())
    assert len(summary["table1"]["clue"]["fe"]["values"]) == 2
    # Table 2: the three mask ablations and the six stage-loss pairs.
    names = [r["ablation"] for r in summary["ablations"]]
    assert names[:3] == ["-M_f (stage 2 only)", "-M_c (full mask in stage 2)", "M_c before M_f"]
    assert names[3:] == [f"{a.upper()}+{b.upper()}" for a, b in STAGE_LOSSES]
    # Every training row kept CLUE's step budget.
    clue_steps = summary["clue_first_seed"]["steps"]
    assert {r["steps"] for r in summary["ablations"]} == {clue_steps}
    # Figure 6: three methods at every ratio, with (close to) the asked-for mask size.
    ratios = summary["ratios"]
    assert {(r["ratio"], r["method"]) for r in ratios} == {
        (x, m) for x in (0.1, 0.2, 0.5, 0.8, 0.9) for m in ("clue", "wagle", "random")
    }
    for r in ratios:
        assert r["element_share"] >= r["ratio"] - 1e-6 or r["method"] == "clue"
        if r["method"] != "clue":
            assert r["element_share"] == pytest.approx(r["ratio"], abs=1e-4)
    # Figure 3a: every subset of the 4 retain tasks, CLUE trained with the first 1..4.
    assert len(summary["retain_tasks"]["subsets"]) == 15
    assert [r["k"] for r in summary["retain_tasks"]["trained"]] == [1, 2, 3, 4]
    assert [r["sparsity"] for r in summary["sparsity"]] == [0.3, 0.5, 0.7]
    sources = [c["source"] for c in summary["claims"]]
    for source in ("Table 1", "Table 2", "Table 3", "Figure 3a", "Figure 4", "Figure 6",
                   "Figure 7"):  # fmt: skip
        assert source in sources
    assert {c["verdict"] for c in summary["claims"]} <= {
        "reproduced", "not reproduced", "not separated", "not measured"
    }  # fmt: skip
    for name in ("report.md", "table1.png", "figure3a_retain_tasks.png", "figure6_ratios.png",
                 "figure7_neurons.png", "seed0/report.md", "seed1/report.md"):  # fmt: skip
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    assert "## Claims" in report and "## Table 2" in report and "Whole paper run" in report


def test_quick_paper_stage_loss_pair_equal_to_clue_reproduces_it(quick_paper):
    """GA+GA is CLUE's own run (the preset's loss is GA): the ablation trainer must give the
    Table 1 row of the first seed exactly (same stages, data, seed, separate process)."""
    summary = json.loads((quick_paper / "paper.json").read_text())
    same = next(r for r in summary["ablations"] if r["ablation"] == "GA+GA")
    clue = summary["clue_first_seed"]
    assert same["fe"] == clue["fe"] and same["ru"] == clue["ru"]


def test_quick_paper_seed_runs_are_independent_and_first_relocalizes(quick_paper):
    a = json.loads((quick_paper / "seed0/config.json").read_text())
    b = json.loads((quick_paper / "seed1/config.json").read_text())
    assert (a["pipeline"]["seed"], b["pipeline"]["seed"]) == (0, 1)
    assert (quick_paper / "seed0/localization_after.json").is_file()
    assert not (quick_paper / "seed1/localization_after.json").exists()


def test_finished_paper_is_not_resumed(quick_paper, capsys):
    assert main(["paper", "--resume", str(quick_paper)]) == 2
    assert "finished" in capsys.readouterr().err


def test_interrupted_paper_resumes_only_what_is_missing(quick_paper, tmp_path):
    """A paper folder without its report and one part: ``--resume`` computes that part alone
    (the others, and every seed run, are read back unchanged) and writes the report."""
    out = tmp_path / "paper"
    shutil.copytree(quick_paper, out)
    for name in ("report.md", "paper.json", "neurons.json"):
        (out / name).unlink()
    kept = {p: p.stat().st_mtime_ns for p in out.rglob("*.json")}
    assert main(["paper", "--resume", str(out)]) == 0
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())
    again = json.loads((out / "neurons.json").read_text())
    assert again == json.loads((quick_paper / "neurons.json").read_text())
    assert (out / "report.md").is_file() and not (out / "FAILED").exists()


# ----------------------------------------------------------------------------- aggregation


def test_aggregate_seeds_matches_hand_values():
    rows = {
        0: [{"method": "clue", "fe": 0.5, "ru": {"ioi": 1.0}, "ru_mean": 1.0, "gu": None}],
        1: [{"method": "clue", "fe": 0.75, "ru": {"ioi": 0.5}, "ru_mean": 0.5, "gu": 0.3}],
        2: [{"method": "clue", "fe": 1.0, "ru": {"ioi": 0.75}, "ru_mean": 0.75, "gu": 0.4}],
    }
    agg = C.aggregate_seeds(rows)["clue"]
    assert agg["seeds"] == 3
    assert agg["fe"]["mean"] == pytest.approx(0.75)
    # sample std of (0.5, 0.75, 1.0): sqrt(((-.25)^2 + 0 + .25^2) / 2) = 0.25
    assert agg["fe"]["std"] == pytest.approx(0.25)
    assert agg["ru.ioi"]["mean"] == pytest.approx(0.75)
    assert agg["ru.ioi"]["std"] == pytest.approx(0.25)
    assert agg["fe"]["values"] == [0.5, 0.75, 1.0]
    assert "gu" not in agg  # missing in one seed: not averaged over the other two


# ----------------------------------------------------------------------------- verdicts


def _agg(**means: tuple[float, float, float]) -> dict:
    """Made-up Table 1 aggregates: each metric's three seed values."""
    return {
        method: {
            key: {"mean": sum(v) / 3, "std": 0.0, "values": list(v)} for key, v in metrics.items()
        }
        for method, metrics in means.items()
    }


def test_table1_verdicts_both_ways():
    good = _agg(
        clue={"fe": (0.9, 0.92, 0.94), "ru_mean": (0.95, 0.96, 0.97), "gu": (0.3, 0.31, 0.32)},
        wagle={"fe": (0.2, 0.25, 0.3)}, random={"fe": (0.0, 0.05, 0.1)},
        entangled={"fe": (0.5, 0.55, 0.6)}, ga={"ru_mean": (0.2, 0.25, 0.3)},
        original={"gu": (0.31, 0.31, 0.31)},
    )  # fmt: skip
    first, second, third, fourth = C.table1_claims(good, "ga")
    assert first.verdict == "reproduced" and len(first.comparisons) == 3
    assert second.verdict == "reproduced"
    assert third.verdict == "not measured"  # no ga_retain row
    assert fourth.verdict == "reproduced"  # GU within the spread of the original's: no worse
    bad = _agg(clue={"fe": (0.1, 0.12, 0.14)}, wagle={"fe": (0.8, 0.85, 0.9)})
    assert C.table1_claims(bad, "ga")[0].verdict == "not reproduced"
    close = _agg(clue={"fe": (0.5, 0.7, 0.9)}, wagle={"fe": (0.4, 0.6, 0.8)})
    assert C.table1_claims(close, "ga")[0].verdict == "not separated"


def test_compare_and_verdict_rules():
    assert C.compare(Interval(0.9, 0.85, 0.95), Interval(0.5, 0.4, 0.6)) == "higher"
    assert C.compare(Interval(0.5, 0.4, 0.6), Interval(0.9, 0.85, 0.95)) == "lower"
    assert C.compare(Interval(0.5, 0.4, 0.6), Interval(0.55, 0.5, 0.7)) == "within spread"
    assert C.verdict(["higher", "higher"]) == "reproduced"
    assert C.verdict(["higher", "within spread"]) == "not separated"
    assert C.verdict(["higher", "lower"]) == "not reproduced"
    assert C.verdict(["within spread"], "no worse") == "reproduced"
    assert C.verdict(["lower"], "no worse") == "not reproduced"
    assert C.verdict([]) == "not measured"


def _row(fe, fe_ci, ru, ru_ci, **extra):
    return {"fe": fe, "ru_mean": ru, "ci": {"fe": fe_ci, "ru_mean": ru_ci}, **extra}


def test_table2_and_figure6_row_outcomes_both_ways():
    clue = _row(0.9, [0.8, 0.95], 0.9, [0.85, 0.95])
    worse = _row(0.3, [0.2, 0.4], 0.9, [0.85, 0.95], ablation="-M_f")
    better = _row(1.0, [1.0, 1.0], 1.0, [1.0, 1.0], ablation="-M_c")
    mixed = _row(1.0, [1.0, 1.0], 0.3, [0.2, 0.4], ablation="M_c before M_f")
    assert C.row_outcome(clue, worse)[0] == "higher"
    assert C.row_outcome(clue, better)[0] == "lower"
    assert C.row_outcome(clue, mixed) == ("within spread", {"fe": "lower", "ru_mean": "higher"})
    assert C.table2_claim(clue, [worse]).verdict == "reproduced"
    assert C.table2_claim(clue, [worse, better]).verdict == "not reproduced"
    rows = [{"ratio": 0.5, "method": "clue", **clue}, {"ratio": 0.5, "method": "wagle", **worse},
            {"ratio": 0.5, "method": "random", **worse}]  # fmt: skip
    assert C.figure6_claim(rows).verdict == "reproduced"
    rows[1] = {"ratio": 0.5, "method": "wagle", **better}
    assert C.figure6_claim(rows).verdict == "not reproduced"


def test_figure_claims_both_ways():
    grow = {"subsets": [{"k": 1, "conflict": 3}, {"k": 1, "conflict": 5}, {"k": 2, "conflict": 9}],
            "trained": [_row(0.9, [0.8, 1.0], 1, [1, 1], k=1),
                        _row(0.85, [0.75, 0.95], 1, [1, 1], k=2)]}  # fmt: skip
    conflicts, fe = C.figure3a_claims(grow)
    assert conflicts.verdict == "reproduced" and fe.verdict == "reproduced"
    shrink = {"subsets": [{"k": 1, "conflict": 9}, {"k": 2, "conflict": 4}],
              "trained": [_row(0.9, [0.8, 1.0], 1, [1, 1], k=1),
                          _row(0.1, [0.0, 0.2], 1, [1, 1], k=2)]}  # fmt: skip
    conflicts, fe = C.figure3a_claims(shrink)
    assert conflicts.verdict == "not reproduced" and fe.verdict == "not reproduced"
    rising = [{"sparsity": s, "kl_noising": kl, "kl_denoising": kl} for s, kl in
              ((0.8, 0.1), (0.9, 0.2), (0.95, 0.5))]  # fmt: skip
    assert C.figure4_claim(rising).verdict == "reproduced"
    rising[1]["kl_denoising"] = 0.9
    assert C.figure4_claim(rising).verdict == "not reproduced"
    same = {"q": [10, 10], "mlp_up": [5, 5]}
    data = {"counts": {"CLUE forget": same, "CLUE conflict": {}, "WAGLE": same}}
    assert C.figure7_claim(data).verdict == "not reproduced"
    data["counts"]["WAGLE"] = {"q": [0, 1], "mlp_up": [50, 50]}
    claim = C.figure7_claim(data)
    assert claim.verdict == "reproduced" and claim.comparisons[0]["distance"] > 0.5
    assert C.table3_claim({"forget": 15}, {"forget": 4}).verdict == "reproduced"
    assert C.table3_claim({"forget": 15}, {"forget": 19}).verdict == "not reproduced"


# ----------------------------------------------------------------------------- config, masks


def test_paper_config_checks_and_round_trips():
    cfg = PaperConfig(run=RunConfig(methods=TABLE1), seeds=(3, 4, 5))
    assert PaperConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.seed_config(4).pipeline.seed == 4 and not cfg.seed_config(4).relocalize
    assert cfg.seed_config(3).relocalize
    for bad in ({"seeds": ()}, {"seeds": (0, 0)}, {"seeds": (-1,)}, {"ratios": (0.0,)},
                {"sparsities": (1.0,)}, {"stage_losses": (("ga", "sgd"),)}):  # fmt: skip
        with pytest.raises(OptionError):
            PaperConfig(**bad)


def test_paper_cli_refuses_single_seed_option(capsys, tmp_path):
    assert main(["paper", "--quick", "--seed", "3", "--out", str(tmp_path / "p")]) == 2
    assert "--seeds" in capsys.readouterr().err and not (tmp_path / "p").exists()


class _Loc:
    def __init__(self, forget, conflict, retain, safe):
        self.forget, self.conflict, self.retain, self.safe = forget, conflict, retain, safe


def test_node_ranking_and_clue_at_size(tiny):
    loc = _Loc({"a0.h0", "m1"}, {"a1.h1", "m0"}, {"a0.h1"}, {"a0.h1", "a1.h0", "input"})
    scores = {"a0.h0": 1.0, "m1": 2.0, "m0": 0.5, "a1.h1": 0.7, "a1.h0": 3.0}
    ranking = node_ranking(loc, scores)
    assert ranking == ["m1", "a0.h0", "a1.h1", "m0", "a0.h1", "a1.h0"]

    class Ctx:
        model = tiny

    sizes = [M.mask_size(M.mask_from_nodes(tiny, [n])) for n in ranking]
    want = sizes[0] + 1  # needs the first two nodes
    f, c = clue_at_size(Ctx, ranking, set(loc.forget), want)
    assert M.mask_size(M.union(f, c)) == sizes[0] + sizes[1]
    assert M.mask_size(c) == 0  # both chosen nodes are forget nodes: stage 1 only
    f, c = clue_at_size(Ctx, ranking, set(loc.forget), sum(sizes[:3]))
    assert M.mask_size(c) == sizes[2] and not math.isnan(M.unlearned_ratio(tiny, f, c))
