"""The ``clue-mi`` command: list models and tasks, discover circuits, localize, unlearn, run."""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from clue_mi import tasks as task_lib
from clue_mi.models import ModelLoadError
from clue_mi.options import (
    check_device,
    check_float,
    check_int,
    check_output_location,
    check_seed,
)

# Budgets of a full run and of a --quick smoke run; an option given explicitly always wins.
# The quick sparsity is lower because a small graph (tiny-llama: 106 edges) keeps no
# input -> logits path at 0.95: its top 6 edges do not connect.
DEFAULTS = {"n": 32, "n_eval": None, "steps": 5, "sparsity": 0.95, "epochs": (1, 1)}
QUICK = {"n": 8, "n_eval": 8, "steps": 2, "sparsity": 0.5, "epochs": (1, 1)}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``clue-mi CMD: error: ...``, exit 2), no usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _resolve_budget(args: argparse.Namespace) -> None:
    """Fill the options left unset with the full or the --quick budget."""
    preset = QUICK if getattr(args, "quick", False) else DEFAULTS
    for key, value in preset.items():
        if hasattr(args, key) and getattr(args, key) is None:
            setattr(args, key, value)


def _csv(text: str) -> tuple[str, ...]:
    return tuple(t.strip() for t in text.split(",") if t.strip())


def cmd_models(args: argparse.Namespace) -> None:
    from clue_mi.models import available_models

    for info in available_models():
        print(f"{info.name:12s} {info.description}")


def cmd_tasks(args: argparse.Namespace) -> None:
    for name in task_lib.names():
        print(f"{name:14s} {task_lib.describe(name)}")


def _load(args: argparse.Namespace):
    from clue_mi.models import load_model

    return load_model(args.model, device=args.device, dtype=args.dtype)


def _data(args: argparse.Namespace) -> dict[str, str]:
    """``--data NAME=PATH`` (repeatable) as ``{NAME: PATH}``."""
    out: dict[str, str] = {}
    for item in args.data or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--data expects NAME=PATH (e.g. wmdp_cyber=./wmdp), got {item!r}")
        if name in out:
            raise ValueError(f"--data gives {name} twice; give each data set once")
        out[name] = path
    return out


def _check_model_args(args: argparse.Namespace) -> None:
    """The options of discover, which has no config dataclass to check them."""
    check_int(args.n, "n", 1, "--n")
    if args.n_eval is not None:
        check_int(args.n_eval, "n_eval", 1, "--n-eval")
    check_seed(args.seed)
    check_int(args.steps, "steps", 1, "--steps")
    check_float(args.sparsity, "sparsity", "--sparsity", "in [0, 1)", lambda s: 0.0 <= s < 1.0)
    check_int(args.batch_size, "batch_size", 1, "--batch-size")
    check_device(args.device)


def cmd_discover(args: argparse.Namespace) -> None:
    from clue_mi.cache import cache_path, circuit_summary, discover

    _resolve_budget(args)
    _check_model_args(args)
    if args.top_n is not None:
        check_int(args.top_n, "top_n", 1, "--top-n")
    if args.task not in task_lib.names():
        raise ValueError(
            f"unknown task {args.task!r} (--task); available: {', '.join(task_lib.names())}"
        )
    data = _data(args)
    unused = sorted(set(data) - {args.task})
    if unused:
        raise ValueError(f"--data {unused[0]}=...: this command discovers --task {args.task} only")
    model = _load(args)
    kwargs = {"path": data[args.task]} if args.task in data else {}
    task = task_lib.get(args.task, model, n=args.n, n_eval=args.n_eval, seed=args.seed, **kwargs)
    params = dict(
        direction=args.direction,
        method=args.method,
        sparsity=args.sparsity,
        top_n=args.top_n,
        steps=args.steps,
    )
    circuit = discover(model, task, batch_size=args.batch_size, **params)
    print(circuit_summary(circuit))
    where = cache_path(model, task, **params)
    print(f"stored: {where}" + (" (from cache)" if circuit.graph.get("cache_hit") else ""))


def _pipeline_config(args: argparse.Namespace):
    from clue_mi.pipeline import PipelineConfig

    return PipelineConfig(
        forget=args.forget,
        retain=args.retain,
        n=args.n,
        n_eval=args.n_eval,
        seed=args.seed,
        method=args.method,
        steps=args.steps,
        sparsity=args.sparsity,
        batch_size=args.batch_size,
        semantics=args.semantics,
        data=_data(args),
    )


def cmd_localize(args: argparse.Namespace) -> None:
    from clue_mi.pipeline import load_tasks, localize_tasks, logical_circuits

    _resolve_budget(args)
    config = _pipeline_config(args)
    check_device(args.device)
    if args.out:
        check_output_location(args.out)
    model = _load(args)
    logical = logical_circuits(model, load_tasks(model, config), config)
    loc = localize_tasks(model, logical, config)
    print(loc.summary())
    if args.out:
        print(f"saved: {loc.save(args.out)}")


def _run_config(args: argparse.Namespace):
    from clue_mi.evaluate import check_gu_tasks
    from clue_mi.experiment import RunConfig

    _resolve_budget(args)
    return RunConfig(
        pipeline=_pipeline_config(args),
        model=args.model,
        device=args.device,
        loss=args.loss,
        methods=args.methods,
        lr=args.lr,
        epochs=tuple(args.epochs),
        lam=args.lam,
        batch_size=args.train_batch_size,
        quick=args.quick,
        bf16=args.bf16,
        dtype=args.dtype,
        gu_tasks=None if args.gu_tasks is None else check_gu_tasks(args.gu_tasks),
        checkpointing=args.gradient_checkpointing,
    )


def cmd_unlearn(args: argparse.Namespace) -> None:
    from clue_mi import masks
    from clue_mi.pipeline import load_tasks, localize_tasks, logical_circuits
    from clue_mi.unlearn import export_hf, forget_data, retain_data, unlearn

    out = Path(args.out)
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose a new --out folder")
    cfg = _run_config(args)
    check_output_location(out)
    p = cfg.pipeline
    model = _load(args)
    task_data = load_tasks(model, p)
    loc = localize_tasks(model, logical_circuits(model, task_data, p), p)
    print(loc.summary())
    forget_m, conflict_m = masks.masks_from_localization(model, loc)
    unlearn(
        model,
        forget_data(task_data[p.forget], cfg.loss),
        retain_data([task_data[t] for t in p.retain]),
        forget_m,
        conflict_m,
        loss=cfg.loss,
        epochs=cfg.epochs,
        lr=cfg.lr,
        lam=cfg.lam,
        batch_size=cfg.batch_size,
        seed=p.seed,
        bf16=cfg.bf16,
    )
    print(f"unlearned parameters: {100 * masks.unlearned_ratio(model, forget_m, conflict_m):.2f}%")
    export_hf(model, out)
    loc.save(out / "clue_localization.json")
    masks.save_masks(out / "clue_masks.safetensors", {"forget": forget_m, "conflict": conflict_m})
    print(f"unlearned model written to {out} (load with AutoModelForCausalLM.from_pretrained)")


def cmd_run(args: argparse.Namespace) -> None:
    from clue_mi.experiment import run_experiment

    if args.resume is None:
        out = args.out or time.strftime("runs/run-%Y%m%d-%H%M%S")
        run_experiment(_run_config(args), out)
        return
    if args.out is not None and Path(args.out) != Path(args.resume):
        raise ValueError("give --out for a new run or --resume DIR for an unfinished one, not both")
    # --resume alone runs the recorded configuration; other options must repeat it exactly.
    defaults = vars(build_parser().parse_args(["run"]))
    given = [k for k, v in vars(args).items() if k not in ("resume", "out") and v != defaults[k]]
    run_experiment(_run_config(args) if given else None, args.resume, resume=True)


def cmd_paper(args: argparse.Namespace) -> None:
    from clue_mi.paper import PaperConfig, quick_paper_config, run_paper

    if args.resume is not None:
        if args.out is not None and Path(args.out) != Path(args.resume):
            raise ValueError("give --out for a new paper run or --resume DIR, not both")
        run_paper(None, args.resume, resume=True)
        return
    if args.seed != 0:
        raise ValueError("clue-mi paper takes --seeds S1 S2 ..., not --seed")
    run = _run_config(args)
    cfg = quick_paper_config(run) if args.quick else PaperConfig(run=run)
    if args.seeds is not None:
        cfg = dataclasses.replace(cfg, seeds=tuple(args.seeds))
    run_paper(cfg, args.out or time.strftime("runs/paper-%Y%m%d-%H%M%S"))


def cmd_plan(args: argparse.Namespace) -> None:
    from clue_mi import plan
    from clue_mi.attribution import FAITHFULNESS_PROMPTS

    _resolve_budget(args)
    check_int(args.train_batch_size, "train_batch_size", 1, "--train-batch-size")
    check_int(args.batch_size, "batch_size", 1, "--batch-size")
    check_int(args.seq_len, "seq_len", 1, "--seq-len")
    check_int(args.prompt_len, "prompt_len", 1, "--prompt-len")
    check_float(
        args.mask_ratio, "mask_ratio", "--mask-ratio", "in [0, 1]", lambda r: 0.0 <= r <= 1.0
    )
    check_float(
        args.forget_ratio, "forget_ratio", "--forget-ratio", "in [0, --mask-ratio]",
        lambda r: 0.0 <= r <= args.mask_ratio,
    )  # fmt: skip
    check_float(
        args.whole_share, "whole_share", "--whole-share", "in [0, 1]", lambda r: 0.0 <= r <= 1.0
    )
    if args.memory is not None:
        check_float(args.memory, "memory", "--memory", "> 0", lambda g: g > 0)
    # A plan is for the device named, present here or not (plan a GPU run on a laptop).
    device = args.device or "cuda"
    if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", device):
        raise ValueError(f"--device {device}: plan for cpu, cuda, cuda:N or mps")
    config, label = plan.resolve_config(args.model)
    positions = plan.model_shape(config).n_positions
    for value, flag in ((args.seq_len, "--seq-len"), (args.prompt_len, "--prompt-len")):
        if value > positions:
            raise ValueError(f"{flag} {value} exceeds the model's {positions} positions")
    options = dict(
        dtype=args.dtype,
        batch=args.train_batch_size,
        seq_len=args.seq_len,
        mask_ratio=args.mask_ratio,
        forget_ratio=args.forget_ratio,
        whole_share=args.whole_share,
        retain=args.lam != 0,
        attribution_batch=args.batch_size,
        prompt_len=args.prompt_len,
        n_prompts=min(args.n_eval or FAITHFULNESS_PROMPTS, FAITHFULNESS_PROMPTS),
        checkpointing=args.gradient_checkpointing,
        baselines=any(m != "clue" for m in args.methods),
        device=device,
    )
    stages = plan.stage_memory(config, **options)
    title = (
        f"{label}, {args.dtype} on {device}: training batch {args.train_batch_size} x "
        f"{args.seq_len} tokens, "
        f"attribution batch {args.batch_size} x {args.prompt_len} tokens, masks "
        f"{args.mask_ratio:.1%} of the layer weights"
        + (", gradient checkpointing" if args.gradient_checkpointing else "")
    )
    print(plan.format_plan(stages, args.memory, title=title))
    if args.memory is not None and plan.peak(stages).bytes > args.memory * plan.GB:
        kwargs = {k: v for k, v in options.items() if k not in ("batch", "seq_len")}
        budget = int(args.memory * plan.GB)
        at_len = plan.largest_fit(config, budget, seq_len=args.seq_len, **kwargs)
        at_batch = plan.largest_fit(config, budget, batch=args.train_batch_size, **kwargs)
        if at_len is None and at_batch is None:
            hints = [
                hint
                for hint, used in (
                    ("--dtype bfloat16", args.dtype != "float32"),
                    ("a smaller --batch-size (attribution)", args.batch_size == 1),
                    ("--gradient-checkpointing", args.gradient_checkpointing),
                    ("--methods clue (no baseline stages)", set(args.methods) == {"clue"}),
                )
                if not used
            ]
            print(
                f"Nothing fits in {args.memory:g} GB at any training batch or length: the "
                "weights, the optimizer state and the fixed-size stages alone exceed it"
                + (f" (try {', '.join(hints)})." if hints else ".")
            )
        for fit, what in ((at_len, "length"), (at_batch, "batch")):
            if fit is not None:
                print(
                    f"Fits at this {what}: --train-batch-size {fit.batch} --seq-len "
                    f"{fit.seq_len} (peak {fit.peak_bytes / plan.GB:.2f} GB, {fit.stage})."
                )


def _add_unlearn_args(p: argparse.ArgumentParser) -> None:
    from clue_mi.experiment import FINETUNE, METHODS

    p.add_argument("--loss", default="ga", choices=["ga", "npo", "po"], help="forget loss (ga)")
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (%(default)s)")
    p.add_argument(
        "--epochs",
        type=int,
        nargs=2,
        default=None,
        metavar=("STAGE1", "STAGE2"),
        help="epochs of stage 1 (forget mask) and stage 2 (conflict mask); default 1 1",
    )
    p.add_argument("--lam", type=float, default=1.0, help="weight of the retain loss (stage 2)")
    p.add_argument("--train-batch-size", type=int, default=8)
    p.add_argument(
        "--methods",
        type=_csv,
        default=METHODS,
        help="comma-separated (default: %(default)s); also the paper's fine-tuning rows "
        f"{', '.join(FINETUNE)}: that loss on all weights, alone or + retain loss",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="small smoke run (numbers not meaningful): 8 + 8 prompts, 2 EAP-IG steps, "
        "sparsity 0.5, 1 + 1 epochs, 20 GU documents per task; options given explicitly win",
    )
    p.add_argument(
        "--gu-tasks",
        type=_csv,
        default=None,
        help="comma-separated lm-eval tasks for general utility (default: the shipped offline "
        "ones; online, e.g. arc_easy,boolq,hellaswag,openbookqa,piqa,truthfulqa_mc2)",
    )
    p.add_argument(
        "--gradient-checkpointing",
        action="store_true",
        help="recompute each decoder layer in the backward pass of training (less activation "
        "memory, about one more forward pass per step; the same updates)",
    )
    p.add_argument(
        "--bf16",
        action="store_true",
        help="train under bfloat16 autocast (about 1.4x faster training on a CPU with "
        "AVX512-BF16; weights and optimizer stay float32; numbers differ slightly from float32)",
    )


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="smollm2 (default), tiny-llama, a path, or hub id")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--n", type=int, default=None, help="attribution prompts per task (32)")
    p.add_argument(
        "--n-eval",
        type=int,
        default=None,
        help="held-out prompts per task (default: every usable one, at most 128)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="dtype of the weights (default float32; bfloat16 halves their memory: a 7B model "
        "in 14.5 GB; the masked optimizer keeps float32 moments)",
    )
    p.add_argument(
        "--data",
        action="append",
        metavar="NAME=PATH",
        help="a local copy of a real data set in the hub's format, read instead of the hub "
        "(repeatable; e.g. wmdp_cyber=./wmdp for --forget wmdp_cyber)",
    )
    p.add_argument("--method", default="eap", choices=["eap", "eap-ig", "exact"])
    p.add_argument("--steps", type=int, default=None, help="EAP-IG interpolation steps (5)")
    p.add_argument(
        "--sparsity",
        type=float,
        default=None,
        help="fraction of edges left out of a circuit, in [0, 1) (0.95; --quick: 0.5)",
    )
    p.add_argument("--batch-size", type=int, default=16)


def _add_sets_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--forget", default=task_lib.DEFAULT_FORGET, help="forget task")
    p.add_argument(
        "--retain",
        type=_csv,
        default=task_lib.DEFAULT_RETAIN,
        help="comma-separated retain tasks (default: %(default)s)",
    )
    p.add_argument(
        "--semantics",
        default="gates",
        choices=["gates", "output"],
        help="gates (default): every forget-circuit gate switched off and every retain gate kept "
        "on (paper Appendix B); output: only the forget output switched off, which finds a "
        "minimal cut (the smallest edit; often a single head)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="clue-mi", description="CLUE: conflict-guided localization for LLM unlearning"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list loadable models").set_defaults(func=cmd_models)
    sub.add_parser("tasks", help="list tasks").set_defaults(func=cmd_tasks)

    p = sub.add_parser("discover", help="find (or load from cache) one circuit")
    p.add_argument("--task", required=True)
    p.add_argument("--direction", default="noising", choices=["noising", "denoising"])
    p.add_argument(
        "--top-n", type=int, default=None, help="keep this many edges (overrides sparsity)"
    )
    _add_model_args(p)
    p.set_defaults(func=cmd_discover)

    p = sub.add_parser("localize", help="circuits of every set, gates, SAT localization")
    _add_sets_args(p)
    _add_model_args(p)
    p.add_argument("--out", default=None, help="save the localization as JSON here")
    p.set_defaults(func=cmd_localize)

    p = sub.add_parser(
        "plan", help="predicted peak memory of every stage, from the model's config alone"
    )
    _add_sets_args(p)
    _add_model_args(p)
    _add_unlearn_args(p)
    p.add_argument(
        "--seq-len",
        type=int,
        default=512,
        help="tokens every training sequence is padded to (default 512, a WMDP-length text; "
        "the embedded model's default run needs about 24)",
    )
    p.add_argument(
        "--prompt-len",
        type=int,
        default=64,
        help="tokens of an attribution prompt (default 64; the embedded model's tasks: 6-18)",
    )
    p.add_argument(
        "--mask-ratio",
        type=float,
        default=0.58,
        help="CLUE's unlearned share of the layer weights (default 0.58, the paper's; the "
        "embedded model's default run: 0.746)",
    )
    p.add_argument(
        "--forget-ratio",
        type=float,
        default=0.01,
        help="the forget mask's share of the layer weights, within --mask-ratio (0.01)",
    )
    p.add_argument(
        "--whole-share",
        type=float,
        default=0.0,
        help="share of the conflict mask in matrices it masks whole, which need no int32 "
        "positions in the optimizer (default 0, the upper bound; the embedded model's CLUE "
        "masks 29 of its 30 MLPs whole: about 0.75)",
    )
    p.add_argument(
        "--memory", type=float, default=None, help="GB available (e.g. 80): say if it fits"
    )
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("unlearn", help="localize, then CLUE two-stage unlearning; export HF model")
    _add_sets_args(p)
    _add_model_args(p)
    _add_unlearn_args(p)
    p.add_argument("--out", required=True, help="new folder for the unlearned HF checkpoint")
    p.set_defaults(func=cmd_unlearn)

    p = sub.add_parser("run", help="the whole experiment: localize, unlearn, baselines, report")
    _add_sets_args(p)
    _add_model_args(p)
    _add_unlearn_args(p)
    p.add_argument("--out", default=None, help="new run folder (default runs/run-DATE-TIME)")
    p.add_argument("--resume", default=None, metavar="DIR", help="finish an interrupted run")
    p.set_defaults(func=cmd_run)

    from clue_mi.paper import TABLE1

    p = sub.add_parser(
        "paper",
        help="the paper's tables and figures with spreads and a verdict per claim (DESIGN §11)",
    )
    _add_sets_args(p)
    _add_model_args(p)
    _add_unlearn_args(p)
    p.add_argument(
        "--seeds", type=int, nargs="+", default=None,
        help="seeds of Table 1 (default 0 1 2; with --quick 0 1); the other parts use the first",
    )  # fmt: skip
    p.add_argument("--out", default=None, help="new paper folder (default runs/paper-DATE-TIME)")
    p.add_argument("--resume", default=None, metavar="DIR", help="finish an interrupted run")
    p.set_defaults(func=cmd_paper, methods=TABLE1)
    return parser


# Errors a user can cause and fix: shown as one line, not a traceback.
USER_ERRORS = (ValueError, KeyError, OSError, ModelLoadError)


def _one_line_warning(command: str) -> Callable[..., None]:
    """Warnings (a damaged cache entry being recomputed...) as ``clue-mi CMD: warning: ...``."""

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = " ".join(str(message).split("\n"))
        print(f"clue-mi {command}: warning: {text}", file=file or sys.stderr)

    return show


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning(args.command)
            func(args)
    except USER_ERRORS as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        line = " ".join(str(message).split("\n"))  # one line, whatever raised it
        print(f"clue-mi {args.command}: error: {line}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
