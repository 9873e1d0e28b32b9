"""The catalogue of bad inputs: each gives one line ``clue-mi CMD: error: ...`` naming the option
and what it accepts, exit status 2, and leaves no run folder (or output) behind. Then the
damaged-state cases: a corrupted circuit cache, a damaged run folder met on ``--resume``, and a
run killed with SIGKILL in the middle of training, resumed to the same table.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from run_helpers import BIN, assert_same_run, results, subprocess_env

from clue_mi.cli import main
from clue_mi.experiment import RunConfig
from clue_mi.pipeline import PipelineConfig

QUICK = ["run", "--quick", "--model", "tiny-llama"]

# (id, argv, fragments the one-line error must contain). Placeholders: {file} is a regular
# file, {existing} an existing folder, {finished} a finished run, {unfinished} an unfinished
# run recorded with --quick --model tiny-llama, {garbled} a run folder whose config.json is
# not JSON.
CASES = [
    # the cases of issue 13, first the README smoke run's old failure at sparsity 0.95
    ("empty-circuit", [*QUICK, "--sparsity", "0.95"],
     ["noising circuit of task 'capitals'", "sparsity 0.95", "lower --sparsity"]),
    ("lr-negative", [*QUICK, "--lr", "-1"], ["lr (--lr)", "> 0"]),
    ("epochs-zero", [*QUICK, "--epochs", "0", "0"], ["--epochs", ">= 0", "at least one epoch"]),
    ("n-zero", [*QUICK, "--n", "0"], ["n (--n)", ">= 1"]),
    # every other numeric option
    ("lr-zero", [*QUICK, "--lr", "0"], ["lr (--lr)", "> 0"]),
    ("lr-nan", [*QUICK, "--lr", "nan"], ["lr (--lr)", "finite"]),
    ("lr-inf", [*QUICK, "--lr", "inf"], ["lr (--lr)", "finite"]),
    ("epochs-negative", [*QUICK, "--epochs", "-1", "2"], ["--epochs", ">= 0"]),
    ("epochs-one-value", [*QUICK, "--epochs", "1"], ["--epochs", "expected 2 arguments"]),
    ("n-eval-zero", [*QUICK, "--n-eval", "0"], ["n_eval (--n-eval)", ">= 1"]),
    ("n-too-many", [*QUICK, "--n", "100000"], ["capitals", "n=100000", "ask for fewer"]),
    ("batch-size-zero", [*QUICK, "--batch-size", "0"], ["--batch-size", ">= 1"]),
    ("train-batch-size-zero", [*QUICK, "--train-batch-size", "0"],
     ["--train-batch-size", ">= 1"]),
    ("lam-negative", [*QUICK, "--lam", "-1"], ["lam (--lam)", ">= 0"]),
    ("steps-zero", [*QUICK, "--steps", "0"], ["steps (--steps)", ">= 1"]),
    ("sparsity-one", [*QUICK, "--sparsity", "1"], ["sparsity (--sparsity)", "[0, 1)"]),
    ("sparsity-negative", [*QUICK, "--sparsity", "-0.1"], ["sparsity (--sparsity)", "[0, 1)"]),
    ("seed-float", [*QUICK, "--seed", "1.5"], ["--seed", "invalid int value"]),
    ("seed-negative", [*QUICK, "--seed", "-1"], ["seed (--seed)", "[0, 2**32)"]),
    ("seed-too-big", [*QUICK, "--seed", str(2**32)], ["seed (--seed)", "[0, 2**32)"]),
    ("lr-not-a-number", [*QUICK, "--lr", "fast"], ["--lr", "invalid float value"]),
    # names and sets
    ("loss-unknown", [*QUICK, "--loss", "kl"], ["--loss", "invalid choice", "po"]),
    ("method-unknown", [*QUICK, "--method", "magic"], ["--method", "invalid choice", "eap"]),
    ("methods-empty", [*QUICK, "--methods", ","], ["--methods", "at least one method"]),
    ("methods-unknown", [*QUICK, "--methods", "clue,magic"], ["unknown method", "clue"]),
    ("methods-repeated", [*QUICK, "--methods", "clue,clue"], ["--methods", "clue more than once"]),
    ("forget-unknown", [*QUICK, "--forget", "nope"], ["unknown task(s) nope", "capitals"]),
    ("retain-empty", [*QUICK, "--retain", ""], ["at least one retain task"]),
    ("retain-repeated", [*QUICK, "--retain", "ioi,ioi"], ["--retain", "ioi more than once"]),
    ("forget-is-retained", [*QUICK, "--forget", "ioi", "--retain", "ioi,gender"],
     ["both the forget set and a retain set"]),
    ("model-missing", [*QUICK[:2], "--model", "/no/such/model"], ["does not exist"]),
    ("device-unknown", [*QUICK, "--device", "toaster"], ["--device", "use cpu or cuda"]),
    ("device-cuda-absent", [*QUICK, "--device", "cuda"], ["--device", "CUDA is not available"]),
    # the options of the paper's own setting (issue 14)
    ("dtype-unknown", [*QUICK, "--dtype", "int8"], ["--dtype", "invalid choice", "bfloat16"]),
    ("data-no-equals", [*QUICK, "--data", "wmdp_cyber"], ["--data", "NAME=PATH"]),
    ("data-builtin-task", [*QUICK, "--data", "capitals={file}"],
     ["--data capitals", "not a data set task", "wmdp_cyber"]),
    ("data-unused", [*QUICK, "--data", "sst2={file}"], ["--data sst2", "neither the forget"]),
    ("data-missing-path", [*QUICK, "--forget", "sst2", "--data", "sst2=/no/such/sst2"],
     ["--data sst2=/no/such/sst2", "no such file"]),
    ("data-twice", [*QUICK, "--data", "sst2={file}", "--data", "sst2={file}"], ["sst2 twice"]),
    ("gu-tasks-empty", [*QUICK, "--gu-tasks", ","], ["--gu-tasks", "at least one"]),
    ("gu-tasks-unknown", [*QUICK, "--gu-tasks", "no_such_benchmark"],
     ["--gu-tasks", "unknown lm-eval task(s) no_such_benchmark"]),
    # where the output goes
    ("out-under-proc", [*QUICK, "--out", "/proc/clue_run"], ["--out /proc/clue_run", "cannot"]),
    ("out-parent-is-file", [*QUICK, "--out", "{file}/run"], ["--out", "is a file, not a folder"]),
    ("out-exists", [*QUICK, "--out", "{existing}"], ["already exists", "--resume"]),
    ("resume-missing", ["run", "--resume", "{existing}/nothing"], ["no such run folder"]),
    ("resume-finished", ["run", "--resume", "{finished}"], ["finished run", "not rewritten"]),
    ("resume-other-options", ["run", "--resume", "{unfinished}", "--lr", "0.1"],
     ["other options", "lr: 0.1 given, 0.0001 recorded", "give only --resume"]),
    ("resume-and-out", ["run", "--resume", "{unfinished}", "--out", "{existing}/new"],
     ["not both"]),
    ("resume-garbled-config", ["run", "--resume", "{garbled}"], ["config.json", "unreadable"]),
    # the other commands
    ("discover-top-n-zero", ["discover", "--task", "ioi", "--model", "tiny-llama", "--top-n", "0"],
     ["top_n (--top-n)", ">= 1"]),
    ("discover-task-unknown", ["discover", "--task", "nope"], ["unknown task 'nope'", "ioi"]),
    ("discover-sparsity", ["discover", "--task", "ioi", "--sparsity", "2"],
     ["--sparsity", "[0, 1)"]),
    ("localize-out-under-proc", ["localize", "--model", "tiny-llama", "--out", "/proc/x/loc.json"],
     ["--out /proc/x/loc.json", "cannot"]),
    ("unlearn-out-parent-is-file", ["unlearn", "--quick", "--model", "tiny-llama", "--out",
                                    "{file}/model"], ["--out", "is a file"]),
    ("unlearn-epochs-zero", ["unlearn", "--quick", "--model", "tiny-llama", "--epochs", "0", "0",
                             "--out", "{existing}/model"], ["--epochs", "at least one epoch"]),
    ("no-command", [], ["required: command"]),
]  # fmt: skip


@pytest.fixture
def places(tmp_path, monkeypatch):
    """A clean working folder and the fixed places the placeholders name."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    fixed = tmp_path / "fixed"
    fixed.mkdir()
    (fixed / "file").write_text("a regular file, not a folder\n")
    (fixed / "existing").mkdir()
    finished = fixed / "finished"
    finished.mkdir()
    (finished / "report.md").write_text("# finished\n")
    cfg = RunConfig(
        pipeline=PipelineConfig(n=8, n_eval=8, steps=2, sparsity=0.5),
        model="tiny-llama",
        epochs=(1, 1),
        quick=True,
    )
    unfinished = fixed / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text(json.dumps(cfg.to_dict(), default=str))
    garbled = fixed / "garbled"
    garbled.mkdir()
    (garbled / "config.json").write_text('{"pipeline": {"forget": "capi')
    names = {"file": "file", "existing": "existing", "finished": "finished"}
    names |= {"unfinished": "unfinished", "garbled": "garbled"}
    return work, {k: str(fixed / v) for k, v in names.items()}, fixed


def _snapshot(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in sorted(folder.rglob("*"))}


def call(argv: list[str], capsys) -> tuple[int, str]:
    """``main(argv)`` as the shell would see it: exit status and stderr."""
    try:
        rc = main(argv)
    except SystemExit as stop:  # argparse errors
        rc = stop.code if isinstance(stop.code, int) else 1
    return rc, capsys.readouterr().err


def error_line(err: str, command: str) -> str:
    """The one error line; fails if there is none, several, or a traceback."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith(f"clue-mi{' ' + command if command else ''}: error: "), line
    assert err.rstrip().endswith(line), "the error is the last thing printed"
    return line


@pytest.mark.parametrize("case, argv, fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(case, argv, fragments, places, capsys):
    if case == "device-cuda-absent" and torch.cuda.is_available():
        pytest.skip("CUDA is available here, so --device cuda is not bad input")
    work, fill, fixed = places
    before = _snapshot(fixed)
    rc, err = call([a.format(**fill) for a in argv], capsys)
    assert rc == 2
    line = error_line(err, argv[0] if argv else "")
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} not in {line!r}"
    assert list(work.iterdir()) == [], "something was written into the working folder"
    assert _snapshot(fixed) == before, "an existing folder or run was changed"


def test_corrupted_cache_file_warns_and_recomputes(tmp_path, monkeypatch, capsys):
    from clue_mi.cache import cache_dir

    monkeypatch.chdir(tmp_path)
    argv = ["discover", "--task", "ioi", "--model", "tiny-llama", "--n", "8", "--n-eval", "8"]
    argv += ["--sparsity", "0.5", "--method", "eap"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    [entry] = [p for p in cache_dir().rglob("*.json")]
    for damage in (lambda b: b[: len(b) // 2], lambda b: b.replace(b"0", b"1", 3)):
        entry.write_bytes(damage(entry.read_bytes()))
        assert main(argv) == 0
        captured = capsys.readouterr()
        assert captured.out.replace(" (from cache)", "") == first  # the same circuit again
        warning = [line for line in captured.err.splitlines() if "warning:" in line]
        assert len(warning) == 1 and warning[0].startswith("clue-mi discover: warning: ")
        assert "recomput" in warning[0]
        assert json.loads(entry.read_text())  # rewritten whole


@pytest.fixture(scope="module")
def unfinished_run(tmp_path_factory):
    """A real quick run (CLUE only) made unfinished by removing its report: the state a run is
    in when it is interrupted after its last method."""
    out = tmp_path_factory.mktemp("unfinished") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLUE_MI_CACHE", str(tmp_path_factory.mktemp("cache")))
        assert main([*QUICK, "--methods", "clue", "--out", str(out)]) == 0
    (out / "report.md").unlink()
    return out


def _damage_json(path: Path) -> None:
    path.write_text(path.read_text()[:40])


def _damage_masks(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


@pytest.mark.parametrize(
    "name, damage",
    [
        ("localization.json", _damage_json),
        ("masks.safetensors", _damage_masks),
        ("circuits/capitals.json", _damage_json),
    ],
)
def test_damaged_setup_on_resume_is_one_line_error(name, damage, unfinished_run, tmp_path, capsys):
    """The finished methods were computed from the recorded setup, so a damaged setup file is
    not recomputed (nothing could prove the new one equal): one-line error, folder untouched."""
    run = tmp_path / "run"
    shutil.copytree(unfinished_run, run)
    damage(run / name)
    before = _snapshot(run)
    rc, err = call(["run", "--resume", str(run)], capsys)
    assert rc == 2
    line = error_line(err, "run")
    assert name in line and "damaged" in line and "start a new run" in line
    assert _snapshot(run) == before


def test_damaged_results_file_on_resume_runs_that_method_again(unfinished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(unfinished_run, run)
    want = results(unfinished_run)
    (run / "results" / "clue.json").write_text('{"method": "cl')
    assert main(["run", "--resume", str(run)]) == 0
    assert "results/clue.json is damaged; running clue again" in capsys.readouterr().out
    assert results(run) == want  # the same numbers, from the recorded setup and seed
    assert (run / "report.md").is_file() and not (run / "FAILED").exists()


def test_failed_run_is_marked_and_resumable(unfinished_run, tmp_path, monkeypatch, capsys):
    """An exception after the folder exists leaves it resumable with a FAILED note; resuming
    removes the note and finishes the run."""
    import clue_mi.experiment as experiment

    run = tmp_path / "run"
    shutil.copytree(unfinished_run, run)
    (run / "results" / "clue.json").unlink()

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(experiment, "unlearn", broken)
    with pytest.raises(RuntimeError):
        main(["run", "--resume", str(run)])
    assert "RuntimeError: disk on fire" in (run / "FAILED").read_text()
    assert f"clue-mi run --resume {run}" in (run / "FAILED").read_text()
    monkeypatch.undo()
    monkeypatch.setenv("CLUE_MI_CACHE", str(tmp_path / "cache"))
    assert main(["run", "--resume", str(run)]) == 0
    assert not (run / "FAILED").exists() and (run / "report.md").is_file()
    assert results(run) == results(unfinished_run)


def test_run_killed_in_training_resumes_to_the_same_table(smoke_run, tmp_path):
    """SIGKILL right after the original model's row is written (CLUE is training then), then
    ``clue-mi run --resume DIR``: the run finishes with the table of an uninterrupted run."""
    out = tmp_path / "killed"
    env = subprocess_env(tmp_path / "cache", PYTHONHASHSEED="777")
    argv = [str(BIN / "clue-mi"), *QUICK, "--methods", "clue", "--out", str(out)]
    proc = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 600
    try:
        while not (out / "results" / "original.json").exists():
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "results" / "clue.json").exists() and not (out / "report.md").exists()
    done = subprocess.run(
        [str(BIN / "clue-mi"), "run", "--resume", str(out)],
        env=subprocess_env(tmp_path / "cache", PYTHONHASHSEED="778"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_run(out, smoke_run)
    environment = json.loads((out / "environment.json").read_text())
    assert len(environment["resumed"]) == 1
