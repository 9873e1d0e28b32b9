"""Every command and Python snippet README.md presents is run here, as written or as its quick
variant, so none can rot unnoticed.

What counts as a README command: every line of a fenced ``bash`` block, and every inline code
span that starts like a command (``clue-mi``, ``bash ``, ``python ``, ``.venv/bin/``). Each one
must have an entry in :data:`COMMANDS`: run as written, run as a named quick variant (a heavy
command: the default experiment, the full notebook run), a template checked by the CLI's own
parser and covered by a named test, or ``scripts/test.sh`` (which cannot run itself: its steps
are asserted and its pytest selection collected). Every ``python`` block must have an entry in
:data:`SNIPPETS`: a prelude for names it takes from the surrounding text and substitutions that
make it quick (each substitution must still match the README). A command or block with no
entry fails the test and names itself: add it to the mapping when you add it to the README.
Option spans (``--sparsity 0.8``) must name options the ``clue-mi`` parser has.
"""

from __future__ import annotations

import argparse
import re
import shlex
from dataclasses import dataclass, field

import pytest
from run_helpers import ROOT, SMOKE_COMMAND, run_shell, subprocess_env

from clue_mi.cli import build_parser

README = ROOT / "README.md"
COMMAND_START = ("clue-mi", "bash ", "python ", ".venv/bin/")


@dataclass(frozen=True)
class Run:
    """Run ``command`` from the repository root (``{tmp}``: a fresh folder, ``{smoke}``: the
    smoke run's folder); it must exit 0 and print ``expect``. ``SMOKE_COMMAND`` is run once
    per session (tests/conftest.py::smoke_run)."""

    command: str
    expect: str = ""
    integration: bool = False  # uses the embedded model


@dataclass(frozen=True)
class Covered:
    """A template (placeholders such as ``DIR``) or a heavy command that a named test runs."""

    test: str  # "tests/test_x.py::test_name"
    example: str = ""  # the template filled in, parsed by the clue-mi parser


@dataclass(frozen=True)
class ScriptSteps:
    """``bash scripts/test.sh [ARGS]``: its steps are asserted; ARGS are collected by pytest."""

    selection: list[str] = field(default_factory=list)


SMOKE = Run(SMOKE_COMMAND, expect="report: runs/run-")
LOCALIZE = Run(
    "clue-mi localize --forget capitals --retain ioi,greater_than --semantics output "
    "--out {tmp}/loc.json --model tiny-llama --n 8 --n-eval 8 --sparsity 0.5",
    expect="saved: ",
)
COMMANDS: dict[str, Run | Covered | ScriptSteps] = {
    # scripts/run.sh is setup.sh + `exec clue-mi run "$@"`: its quick form covers both.
    "bash scripts/run.sh": SMOKE,
    SMOKE_COMMAND: SMOKE,
    "clue-mi run": SMOKE,
    "bash scripts/test.sh": ScriptSteps(),
    'bash scripts/test.sh -m "not integration"': ScriptSteps(["-m", "not integration"]),
    "clue-mi models": Run("clue-mi models", expect="tiny-llama"),
    "clue-mi tasks": Run("clue-mi tasks", expect="greater_than"),
    # as written but with 8 + 8 prompts: 32 + 32 took 2 min under load
    "clue-mi discover --task ioi --direction noising --sparsity 0.95": Run(
        "clue-mi discover --task ioi --direction noising --sparsity 0.95 --n 8 --n-eval 8",
        expect="stored: ",
        integration=True,
    ),
    "clue-mi localize --forget capitals --retain ioi,greater_than [--semantics gates|output] "
    "[--out loc.json]": LOCALIZE,
    # the name alone, in prose ("--semantics ... on `clue-mi localize`"): the same run
    "clue-mi localize": LOCALIZE,
    "clue-mi unlearn --forget capitals --retain ioi,greater_than --loss po --out DIR": Run(
        "clue-mi unlearn --forget capitals --retain ioi,greater_than --loss po "
        "--out {tmp}/unlearned --quick --model tiny-llama",
        expect="unlearned model written to",
    ),
    "clue-mi run --methods clue,ga,npo,po,ga_retain,npo_retain,po_retain": Covered(
        "tests/test_finetune_rows.py::test_each_row_trains_its_own_loss_on_every_weight",
        example="clue-mi run --methods clue,ga,npo,po,ga_retain,npo_retain,po_retain",
    ),
    "clue-mi run --resume DIR": Covered(
        "tests/test_bad_inputs.py::test_run_killed_in_training_resumes_to_the_same_table",
        example="clue-mi run --resume runs/run-20261201-000000",
    ),
    "python benchmarks/sweep_operating_point.py": Run(
        "python benchmarks/sweep_operating_point.py --quick", expect="| GA | 0.0001 | 2 |"
    ),
    "clue-mi paper": Covered(
        "tests/test_paper.py::test_quick_paper_has_every_row_and_figure", example="clue-mi paper"
    ),
    # run exactly as written (in a fresh process and an empty folder) by tests/test_paper.py
    "clue-mi paper --quick --model tiny-llama": Covered(
        "tests/test_paper.py::test_quick_paper_has_every_row_and_figure",
        example="clue-mi paper --quick --model tiny-llama",
    ),
    "clue-mi paper --out runs/paper": Covered(
        "tests/test_paper.py::test_quick_paper_has_every_row_and_figure",
        example="clue-mi paper --out runs/paper",
    ),
    "clue-mi paper --resume DIR": Covered(
        "tests/test_paper.py::test_interrupted_paper_resumes_only_what_is_missing",
        example="clue-mi paper --resume runs/paper-20261202-000000",
    ),
    "python benchmarks/task_baselines.py": Run(
        "python benchmarks/task_baselines.py --model tiny-llama --n-eval 8", expect="| ioi |"
    ),
    # runs/default is the README's own run, not in a fresh clone: read the smoke run instead.
    "python benchmarks/circuit_table.py runs/default": Run(
        "python benchmarks/circuit_table.py {smoke}", expect="| capitals | noising |"
    ),
    # two run folders of the README's own runs; a fresh clone has the smoke run: compare it
    # with itself (no cell can differ).
    "python benchmarks/compare_runs.py runs/default runs/default_bf16": Run(
        "python benchmarks/compare_runs.py {smoke} {smoke}",
        expect="0 accuracy cell(s) differ beyond their 95% intervals",
    ),
    "python benchmarks/bench_run.py": Covered(
        "tests/test_bench_run.py::test_bench_run_quick_prints_stages_and_floor"
    ),
    "python benchmarks/plan_vs_measured.py": Run(
        "python benchmarks/plan_vs_measured.py --quick", expect="| run | train: all weights ("
    ),
    "clue-mi plan": Run("clue-mi plan --model tiny-llama --seq-len 64", expect="Peak: "),
    "clue-mi plan --model zephyr-7b-beta --dtype bfloat16": Run(
        "clue-mi plan --model zephyr-7b-beta --dtype bfloat16", expect="| train stage 2"
    ),
    "clue-mi plan --model zephyr-7b-beta --dtype bfloat16 --memory 80": Run(
        "clue-mi plan --model zephyr-7b-beta --dtype bfloat16 --memory 80",
        expect="Peak: 131.12 GB (train: all weights",  # the README prints this table
    ),
    "clue-mi plan --model zephyr-7b-beta --dtype bfloat16 --methods clue --batch-size 1 "
    "--gradient-checkpointing --memory 80": Run(
        "clue-mi plan --model zephyr-7b-beta --dtype bfloat16 --methods clue --batch-size 1 "
        "--gradient-checkpointing --memory 80",
        expect="Peak: 78.66 GB (train stage 2",  # and this one
    ),
    "clue-mi plan --model llama-2-7b --dtype bfloat16 --methods clue --batch-size 1 "
    "--gradient-checkpointing --memory 80": Run(
        "clue-mi plan --model llama-2-7b --dtype bfloat16 --methods clue --batch-size 1 "
        "--gradient-checkpointing --memory 80",
        expect="Peak: 73.10 GB (train stage 2",
    ),
    "clue-mi run --model HuggingFaceH4/zephyr-7b-beta --dtype bfloat16 --gradient-checkpointing "
    "--forget wmdp_cyber --data wmdp_cyber=DIR --gu-tasks "
    "arc_easy,boolq,hellaswag,openbookqa,piqa,truthfulqa_mc2": Covered(
        "tests/test_dtype.py::test_run_with_the_options_of_the_paper_setting",
        example="clue-mi run --model HuggingFaceH4/zephyr-7b-beta --dtype bfloat16 "
        "--gradient-checkpointing --forget wmdp_cyber --data wmdp_cyber=./wmdp --gu-tasks "
        "arc_easy,boolq,hellaswag,openbookqa,piqa,truthfulqa_mc2",
    ),
    ".venv/bin/python scripts/run_notebooks.py": Run(
        ".venv/bin/python scripts/run_notebooks.py --quick --out {tmp}/notebooks 01_gate_structure",
        expect="01_gate_structure.ipynb: ",
    ),
}

# Flags in option spans that belong to other programs.
FOREIGN_FLAGS = {"--no-deps": "pip, in the setup description"}


@dataclass(frozen=True)
class Snippet:
    """How to run one ``python`` block quickly: code before it, (old, new) replacements (every
    old text must occur, so a README edit shows up here) and checks of what it claims."""

    prelude: str = ""
    subs: tuple[tuple[str, str], ...] = ()
    check: str = ""


TINY = (
    "from clue_mi import load_model, tasks\n"
    'model = load_model("tiny-llama", device="cpu")\n'
    'task = tasks.get("ioi", model, n=8, n_eval=8)\n'
    'forget = tasks.get("capitals", model, n=8, n_eval=8)\n'
    "retain = [task]\n"
)
SNIPPETS: dict[str, Snippet] = {  # keyed by the block's first line
    "from clue_mi import load_model, tasks": Snippet(
        subs=(
            ("model = load_model()", 'model = load_model("tiny-llama")'),
            (
                'tasks.get("capitals", model, n_eval=32)',
                'tasks.get("capitals", model, n=8, n_eval=8)',
            ),
            ("tasks.get(t, model)", "tasks.get(t, model, n=8, n_eval=8)"),
            ("sparsity=0.95", "sparsity=0.5"),
            (
                "evaluate.evaluate_model(model, forget, retain)",
                "evaluate.evaluate_model(model, forget, retain, quick=True)",
            ),
        ),  # fmt: skip
        check="from pathlib import Path\nassert (Path('runs/unlearned') / 'config.json').is_file()",
    ),
    "from clue_mi.cache import discover, circuit_summary": Snippet(
        prelude=TINY, subs=(("sparsity=0.95", "sparsity=0.5"),)
    ),
    "from clue_mi.score_cache import attribution_scores": Snippet(
        prelude=TINY, check="assert set(circuits) == {0.5, 0.8, 0.95}"
    ),
    "import networkx as nx": Snippet(
        check="assert (loc.forget, loc.conflict, loc.retain) == ({'A'}, {'B'}, {'C'})\n"
        "assert loc.satisfiable is False"
    ),
    "from clue_mi import evaluate as ev": Snippet(
        prelude=TINY,
        subs=(
            (
                "ev.evaluate_model(model, forget, retain)",
                "ev.evaluate_model(model, forget, retain, quick=True)",
            ),
        ),  # fmt: skip
    ),
}


# -- reading the README -----------------------------------------------------------------------


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block."""
    return re.findall(r"^```([\w-]*)\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def bash_commands(text: str) -> list[str]:
    """Command lines of the ``bash`` blocks: comments dropped, continuations joined."""
    out = []
    for lang, body in fenced_blocks(text):
        if lang == "bash":
            for line in body.replace("\\\n", " ").splitlines():
                line = line.split(" #")[0].strip()
                if line and not line.startswith("#"):
                    out.append(re.sub(r"\s+", " ", line))
    return out


def inline_spans(text: str) -> list[str]:
    """Inline code spans outside fenced blocks, whitespace collapsed, table ``\\|`` unescaped."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    spans = re.findall(r"`([^`]+)`", prose)
    return [re.sub(r"\s+", " ", s.replace("\\|", "|")).strip() for s in spans]


def readme_commands(text: str) -> list[str]:
    spans = [s for s in inline_spans(text) if s.startswith(COMMAND_START)]
    # `clue-mi CMD: error: ...` shows an output, not a command: commands name a subcommand
    spans = [s for s in spans if not s.startswith("clue-mi") or re.match(r"clue-mi( [a-z]|$)", s)]
    found = bash_commands(text) + spans
    return list(dict.fromkeys(found))


TEXT = README.read_text()
FOUND = readme_commands(TEXT)
PYTHON_BLOCKS = [body for lang, body in fenced_blocks(TEXT) if lang == "python"]


# -- the mapping is complete ------------------------------------------------------------------


def test_every_readme_command_is_run_or_mapped():
    unmapped = [c for c in FOUND if c not in COMMANDS]
    assert not unmapped, (
        f"README command(s) not covered by tests/test_readme_commands.py: {unmapped}; add each "
        "to COMMANDS (run as written, a quick variant, or the test that covers it)"
    )
    # The smoke run and the two commands of the README's first section are among them.
    assert {SMOKE_COMMAND, "bash scripts/run.sh", "bash scripts/test.sh"} <= set(FOUND)


def test_every_python_block_is_mapped():
    firsts = [body.splitlines()[0] for body in PYTHON_BLOCKS]
    unmapped = [f for f in firsts if f not in SNIPPETS]
    assert not unmapped, f"README python block(s) not in SNIPPETS, first lines: {unmapped}"
    assert len(set(firsts)) == len(firsts), "two python blocks start alike; tell them apart"


def test_fenced_blocks_are_of_known_kinds():
    kinds = {lang for lang, _ in fenced_blocks(TEXT)}
    assert kinds <= {"", "bash", "python", "text"}, f"unknown fenced block kind(s): {kinds}"


def test_mapping_has_no_stale_entries():
    """An entry whose README command is gone would test something nobody documents."""
    assert set(COMMANDS) <= set(FOUND), set(COMMANDS) - set(FOUND)
    firsts = {body.splitlines()[0] for body in PYTHON_BLOCKS}
    assert set(SNIPPETS) <= firsts, set(SNIPPETS) - firsts


# -- options named in the README exist --------------------------------------------------------


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _parse_clue_mi(command: str) -> None:
    """Parse a ``clue-mi`` command line with the real parser (templates filled in)."""
    filled = command.replace("DIR", "runs/x")
    filled = re.sub(r"\[([^\]]*)\]", r"\1", filled)  # optional parts: keep them
    filled = re.sub(r"(\S+)\|\S+", r"\1", filled)  # alternatives: take the first
    argv = shlex.split(filled)[1:]
    try:
        build_parser().parse_args(argv)
    except SystemExit as stop:
        pytest.fail(f"the clue-mi parser rejects the README's {command!r} (exit {stop.code})")


@pytest.mark.parametrize("command", [c for c in FOUND if c.startswith("clue-mi")])
def test_readme_clue_mi_commands_parse(command):
    _parse_clue_mi(command)


def test_option_spans_name_real_options():
    actions = {}
    for sub in _subparsers().values():
        for action in sub._actions:
            for flag in action.option_strings:
                actions[flag] = action
    for span in inline_spans(TEXT):
        if not span.startswith("--"):
            continue
        flag, *values = span.split()
        if flag in FOREIGN_FLAGS:
            continue
        assert flag in actions, f"README names {span!r}, but clue-mi has no option {flag}"
        choices = actions[flag].choices
        if choices and values and "|" in values[0]:
            for alternative in values[0].split("|"):
                assert alternative in choices, f"{span!r}: {alternative!r} is not a choice"


# -- running them -----------------------------------------------------------------------------


def _runs() -> list[tuple[str, Run]]:
    seen: dict[str, tuple[str, Run]] = {}
    for readme, plan in COMMANDS.items():
        if isinstance(plan, Run) and plan.command not in seen:
            seen[plan.command] = (readme, plan)
    return list(seen.values())


RUNS = _runs()


@pytest.mark.parametrize(
    "readme, plan",
    [
        pytest.param(r, p, marks=[pytest.mark.integration] if p.integration else [], id=r)
        for r, p in RUNS
    ],
)
def test_readme_command_runs(readme, plan, request, tmp_path):
    if plan.command == SMOKE_COMMAND:
        run = request.getfixturevalue("smoke_run")  # ran it exactly as written
        assert (run / "report.md").is_file() and (run / "model" / "config.json").is_file()
        assert "| CLUE" in (run / "report.md").read_text()
        return
    smoke = request.getfixturevalue("smoke_run") if "{smoke}" in plan.command else None
    command = plan.command.format(tmp=tmp_path, smoke=smoke)
    if command.startswith("clue-mi"):
        _parse_clue_mi(command)
    done = run_shell(command, subprocess_env(tmp_path / "cache"))
    assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
    assert plan.expect in done.stdout, done.stdout[-2000:]
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "readme, plan", [(r, p) for r, p in COMMANDS.items() if isinstance(p, Covered)]
)
def test_covered_commands_name_real_tests(readme, plan):
    path, name = plan.test.split("::")
    source = (ROOT / path).read_text()
    assert re.search(rf"^def {name}\(", source, re.MULTILINE), f"{plan.test} does not exist"
    if readme.startswith("clue-mi"):
        _parse_clue_mi(plan.example or readme)


def test_test_script_has_its_steps():
    """``bash scripts/test.sh`` cannot run inside its own test suite: check what it runs."""
    steps = [
        line.strip()
        for line in (ROOT / "scripts" / "test.sh").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert "bash scripts/setup.sh" in steps
    assert ".venv/bin/ruff check clue_mi tests benchmarks scripts" in steps
    assert ".venv/bin/ruff format --check clue_mi tests benchmarks scripts" in steps
    assert ".venv/bin/mypy" in steps
    assert steps[-1] == '.venv/bin/python -m pytest -q "$@"', "extra arguments go to pytest"
    assert "set -euo pipefail" in steps  # a failing step fails the command


@pytest.mark.parametrize(
    "readme, plan",
    [(r, p) for r, p in COMMANDS.items() if isinstance(p, ScriptSteps) and p.selection],
)
def test_test_script_selection_collects(readme, plan, tmp_path):
    """The README's ``bash scripts/test.sh ARGS``: pytest accepts ARGS and selects tests."""
    args = " ".join(shlex.quote(a) for a in plan.selection)
    done = run_shell(
        f".venv/bin/python -m pytest -q --collect-only -p no:cacheprovider {args}",
        subprocess_env(tmp_path / "cache"),
    )
    assert done.returncode == 0, done.stdout[-2000:]
    summary = done.stdout.strip().splitlines()[-1]
    match = re.search(r"(\d+)/\d+ tests collected \((\d+) deselected\)", summary)
    assert match and int(match.group(1)) > 0 and int(match.group(2)) > 0, summary


# -- the Python snippets ----------------------------------------------------------------------


@pytest.mark.parametrize("body", PYTHON_BLOCKS, ids=[b.splitlines()[0] for b in PYTHON_BLOCKS])
def test_readme_python_block_runs(body, tmp_path, monkeypatch):
    first = body.splitlines()[0]
    if first not in SNIPPETS:
        pytest.fail(f"README python block {first!r} is not in SNIPPETS")
    snippet = SNIPPETS[first]
    code = body
    for old, new in snippet.subs:
        assert old in code, f"the README block no longer contains {old!r}; update SNIPPETS"
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "readme_snippet"}
    exec(compile(snippet.prelude + code + "\n" + snippet.check, "README.md", "exec"), namespace)
