"""`clue-mi run --quick` end to end on the tiny model, the run folder, and the CLI's errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from clue_mi.cli import main
from clue_mi.localization import Localization

QUICK = ["--quick", "--model", "tiny-llama", "--sparsity", "0.5", "--methods", "clue,random"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "quick"
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLUE_MI_CACHE", str(cache))
        assert main(["run", *QUICK, "--retain", "ioi,gender", "--out", str(out)]) == 0
    return out


def test_run_folder_has_every_artifact(quick_run):
    for name in ["config.json", "localization.json", "localization_after.json",
                 "masks.safetensors", "report.md", "methods.png", "categories.png"]:  # fmt: skip
        assert (quick_run / name).is_file(), name
    assert sorted(p.stem for p in (quick_run / "circuits").glob("*.json")) == [
        "capitals", "gender", "ioi"
    ]  # fmt: skip
    assert sorted(p.stem for p in (quick_run / "results").glob("*.json")) == [
        "clue", "original", "random"
    ]  # fmt: skip
    assert (quick_run / "methods.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_results_are_consistent(quick_run):
    rows = {p.stem: json.loads(p.read_text()) for p in (quick_run / "results").glob("*.json")}
    for row in rows.values():
        assert 0.0 <= row["fe"] <= 1.0 and set(row["ru"]) == {"ioi", "gender"}
        assert 0.0 <= row["mia_auc"] <= 1.0 and 0.0 <= row["gu"] <= 1.0
    assert rows["original"]["unlearned_ratio"] == 0.0
    # the random baseline is sized like CLUE's mask (DESIGN §8)
    assert rows["random"]["mask_elements"] == rows["clue"]["mask_elements"] > 0
    report = (quick_run / "report.md").read_text()
    assert "| CLUE (forget + conflict mask) |" in report and "RU gender" in report
    # Equal step budgets and held-out-phrasing FE in every row (#16).
    assert rows["clue"]["steps"] == rows["random"]["steps"] > 0
    for row in rows.values():
        assert row["finite"] is True and 0.0 <= row["fe_phrasings"] <= 1.0
    assert "FE held-out phrasings" in report and "equal step budget" in report


def test_report_flags_unequal_steps_and_broken_models():
    from clue_mi.report import results_table, step_budget_note

    row = {"unlearned_ratio": 0.1, "fe": 1.0, "fe_phrasings": 0.5, "ru": {"ioi": 0.0}, "gu": 0.0,
           "mia_auc": float("nan"), "one_minus_rouge_l": 1.0}  # fmt: skip
    rows = [
        {**row, "method": "clue", "steps": 48, "finite": False,
         "notes": ["stage 2 mask is empty: its 5 epoch(s) go to stage 1"]},
        {**row, "method": "random", "steps": 40},
    ]  # fmt: skip
    table = results_table(rows, ["ioi"], "po")
    assert "broken (non-finite logits)" in table.splitlines()[2]
    assert "| 48 | 100.0 | 50.0 |" in table
    note = step_budget_note(rows)
    assert "Unequal step budgets" in note and "clue 48, random 40" in note
    assert "stage 2 mask is empty" in note
    rows[1]["steps"] = 48
    assert step_budget_note(rows).startswith("Every method trained 48 optimizer steps")


def test_masks_follow_the_localization(quick_run):
    loc = Localization.load(quick_run / "localization.json")
    masks = load_file(str(quick_run / "masks.safetensors"))
    has_forget = any(k.startswith("forget/") for k in masks)
    has_conflict = any(k.startswith("conflict/") for k in masks)
    assert has_forget == bool(loc.forget) and has_conflict == bool(loc.conflict)
    assert loc.forget or loc.conflict


def test_exported_model_reloads_offline(quick_run, tiny):
    model = AutoModelForCausalLM.from_pretrained(quick_run / "model")
    assert model.config.num_hidden_layers == 2 and model.config.num_key_value_heads == 2
    tokens = torch.tensor([[1, 504, 3575, 282]])
    assert model(tokens).logits.shape == (1, 4, model.config.vocab_size)


def test_finished_run_is_never_rewritten(quick_run, capsys):
    before = (quick_run / "report.md").read_bytes()
    assert main(["run", *QUICK, "--out", str(quick_run)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["run", *QUICK, "--resume", str(quick_run)]) == 2
    assert "finished run" in capsys.readouterr().err
    assert (quick_run / "report.md").read_bytes() == before


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "--forget", "nope", "--out", "X"], "unknown task(s) nope"),
        (["run", "--model", "/no/such/model", "--out", "X"], "does not exist"),
        (["run", "--forget", "ioi", "--retain", "ioi,gender", "--out", "X"], "both the forget"),
        (["run", "--methods", "clue,magic", "--out", "X"], "unknown method"),
        (["localize", "--retain", "", "--model", "tiny-llama"], "at least one retain task"),
    ],
)
def test_bad_input_gives_one_line_error(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "X").exists()


def test_tasks_and_models_commands(capsys):
    assert main(["tasks"]) == 0
    listing = capsys.readouterr().out
    assert all(t in listing for t in ["capitals", "ioi", "greater_than", "wmdp_cyber"])
    assert main(["models"]) == 0
    assert "smollm2" in capsys.readouterr().out


def test_stage_timings_are_recorded_apart_from_the_results(quick_run):
    timings = json.loads((quick_run / "timings.json").read_text())
    stages = timings["stages"]
    expected = ["model load", "attribution", "faithfulness", "localization", "re-localization"]
    expected += ["clue: training", "clue: evaluation", "original: evaluation", "export"]
    expected += ["random: mask", "random: training", "random: evaluation"]
    assert set(expected) <= set(stages), sorted(stages)
    assert all(entry["seconds"] >= 0 and entry["calls"] >= 1 for entry in stages.values())
    # 3 tasks: one (joint noising + denoising) attribution each, before and after unlearning
    assert stages["attribution"]["calls"] == 6
    # faithfulness only for the 6 circuits before unlearning (re-localization skips it)
    assert stages["faithfulness"]["calls"] == 6
    assert timings["total_seconds"] >= sum(
        stages[k]["seconds"] for k in ("model load", "faithfulness", "export")
    )
    report = (quick_run / "report.md").read_text()
    assert "## Time per stage" in report and "| attribution |" in report
    for row in (quick_run / "results").glob("*.json"):
        assert "stages" not in json.loads(row.read_text())


def test_report_shows_intervals_and_names_only_separated_changes():
    from clue_mi.report import results_table, spread_note

    base = {"unlearned_ratio": 0.0, "fe_phrasings": None, "gu": 0.5, "mia_auc": 0.5,
            "one_minus_rouge_l": 0.3, "steps": 0}  # fmt: skip
    original = {**base, "method": "original", "fe": 0.0, "ru": {"ioi": 1.0},
                "ci": {"fe": [0.0, 0.0], "ru": {"ioi": [1.0, 1.0]}}}  # fmt: skip
    # FE moved far beyond its interval; RU dipped, but its interval still reaches the original.
    clue = {**base, "method": "clue", "fe": 0.6, "ru": {"ioi": 0.9},
            "ci": {"fe": [0.45, 0.75], "ru": {"ioi": [0.8, 1.0]}}}  # fmt: skip
    table = results_table([original, clue], ["ioi"], "po")
    assert "| 60.0 [45.0, 75.0] |" in table and "| 90.0 [80.0, 100.0] |" in table
    note = spread_note([original, clue], ["ioi"])
    assert note == "- clue: FE 60.0 vs 0.0"
    clue["ci"]["ru"]["ioi"] = [0.85, 0.95]
    assert spread_note([original, clue], ["ioi"]) == "- clue: FE 60.0 vs 0.0; RU ioi 90.0 vs 100.0"


def test_report_states_the_largest_share_of_tied_mia_pairs():
    from clue_mi.report import mia_ties_note

    rows = [{"mia_ties": 0.0}, {"mia_ties": 0.25}, {"mia_ties": float("nan")}, {}]
    assert mia_ties_note(rows) == "Tied MIA pairs (within 1e-4): at most 25.0% in any row. "
    assert mia_ties_note([{}]) == ""


def test_mia_cell_shows_its_interval_and_separated_changes_are_listed():
    from clue_mi.report import results_table, spread_note

    def row(method, auc, low, high):
        return {"method": method, "unlearned_ratio": 0.0, "fe": 0.0, "fe_phrasings": None,
                "ru": {"ioi": 1.0}, "gu": 0.5, "mia_auc": auc, "one_minus_rouge_l": 0.0,
                "ci": {"mia_auc": [low, high]}}  # fmt: skip

    nan = float("nan")
    rows = [row("original", 0.735, 0.65, 0.82), row("clue", 0.378, 0.28, 0.47),
            row("wagle", 0.70, 0.60, 0.79), row("broken", nan, nan, nan)]  # fmt: skip
    table = results_table(rows, ["ioi"], "po")
    assert "0.378 [0.280, 0.470]" in table and "| nan |" in table
    note = spread_note(rows, ["ioi"])
    assert "- clue: MIA AUC 0.378 vs 0.735" in note and "- wagle: none" in note


def test_eval_sizes_text_names_every_split():
    from clue_mi.report import eval_sizes_text

    rows = [
        {"method": "original"},
        {"eval_sizes": {"fe": 123, "fe_phrasings": 123, "ru": {"ioi": 128, "gender": 68}}},
    ]
    assert eval_sizes_text(rows, "capitals") == (
        "Eval prompts per task: capitals 123 (held-out phrasings 123), ioi 128, gender 68."
    )
    assert eval_sizes_text([{"method": "original"}], "capitals") == ""
