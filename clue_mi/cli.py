"""The ``clue-mi`` command: list models and tasks, discover circuits, localize, unlearn, run."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from clue_mi import tasks as task_lib
from clue_mi.models import ModelLoadError


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

    return load_model(args.model, device=args.device)


def cmd_discover(args: argparse.Namespace) -> None:
    from clue_mi.cache import cache_path, circuit_summary, discover

    model = _load(args)
    task = task_lib.get(args.task, model, n=args.n, n_eval=args.n_eval, seed=args.seed)
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
    )


def cmd_localize(args: argparse.Namespace) -> None:
    from clue_mi.pipeline import load_tasks, localize_tasks, logical_circuits

    config = _pipeline_config(args)
    model = _load(args)
    logical = logical_circuits(model, load_tasks(model, config), config)
    loc = localize_tasks(model, logical, config)
    print(loc.summary())
    if args.out:
        print(f"saved: {loc.save(args.out)}")


def _run_config(args: argparse.Namespace):
    from clue_mi.experiment import RunConfig

    if args.quick:
        # A smoke run: few prompts, a cheap attribution, one short epoch per stage.
        args.n, args.n_eval, args.steps = min(args.n, 8), min(args.n_eval, 8), min(args.steps, 2)
        args.epochs = (1, 1)
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
    )


def cmd_unlearn(args: argparse.Namespace) -> None:
    from clue_mi import masks
    from clue_mi.pipeline import load_tasks, localize_tasks, logical_circuits
    from clue_mi.unlearn import export_hf, forget_data, retain_data, unlearn

    out = Path(args.out)
    if out.exists():
        raise FileExistsError(f"{out} already exists; choose a new --out folder")
    cfg = _run_config(args)
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
    )
    print(f"unlearned parameters: {100 * masks.unlearned_ratio(model, forget_m, conflict_m):.2f}%")
    export_hf(model, out)
    loc.save(out / "clue_localization.json")
    masks.save_masks(out / "clue_masks.safetensors", {"forget": forget_m, "conflict": conflict_m})
    print(f"unlearned model written to {out} (load with AutoModelForCausalLM.from_pretrained)")


def cmd_run(args: argparse.Namespace) -> None:
    from clue_mi.experiment import run_experiment

    cfg = _run_config(args)
    out = args.resume or args.out or time.strftime("runs/run-%Y%m%d-%H%M%S")
    run_experiment(cfg, out, resume=bool(args.resume))


def _add_unlearn_args(p: argparse.ArgumentParser) -> None:
    from clue_mi.experiment import METHODS

    p.add_argument("--loss", default="po", choices=["po", "ga", "npo"], help="forget loss")
    p.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate (%(default)s)")
    p.add_argument("--epochs", type=int, nargs=2, default=(1, 5), metavar=("STAGE1", "STAGE2"))
    p.add_argument("--lam", type=float, default=1.0, help="weight of the retain loss (stage 2)")
    p.add_argument("--train-batch-size", type=int, default=8)
    p.add_argument("--methods", type=_csv, default=METHODS, help="comma-separated (%(default)s)")
    p.add_argument("--quick", action="store_true", help="small smoke run (numbers not meaningful)")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="smollm2 (default), tiny-llama, a path, or hub id")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--n", type=int, default=32, help="attribution prompts per task")
    p.add_argument("--n-eval", type=int, default=32, help="held-out prompts per task")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", default="eap", choices=["eap", "eap-ig", "exact"])
    p.add_argument("--steps", type=int, default=5, help="EAP-IG interpolation steps")
    p.add_argument("--sparsity", type=float, default=0.95)
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
    parser = argparse.ArgumentParser(
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
    return parser


# Errors a user can cause and fix: shown as one line, not a traceback.
USER_ERRORS = (ValueError, KeyError, OSError, ModelLoadError)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        func(args)
    except USER_ERRORS as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"clue-mi {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
