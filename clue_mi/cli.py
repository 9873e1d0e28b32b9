"""The ``clue-mi`` command: list models and tasks, discover circuits, localize, unlearn, run."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from clue_mi import tasks as task_lib


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


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="smollm2 (default), tiny-llama, a path, or hub id")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--n", type=int, default=32, help="attribution prompts per task")
    p.add_argument("--n-eval", type=int, default=32, help="held-out prompts per task")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", default="eap-ig", choices=["eap", "eap-ig", "exact"])
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
    return parser


# Errors a user can cause and fix: shown as one line, not a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, FileExistsError, OSError)


def main(argv: Sequence[str] | None = None) -> int:
    from clue_mi.models import ModelLoadError

    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        func(args)
    except (*USER_ERRORS, ModelLoadError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"clue-mi {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
