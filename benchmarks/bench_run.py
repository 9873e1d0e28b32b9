"""Time ``clue-mi run`` stage by stage against the passes it cannot avoid.

Usage::

    python benchmarks/bench_run.py                 # the default run (embedded model, long)
    python benchmarks/bench_run.py --quick         # tiny random model, seconds (the tests)
    python benchmarks/bench_run.py --n 16 --retain ioi --methods clue,full   # a reduced run

It runs the experiment in this process with an empty circuit/score cache in a temporary folder
(so every attribution is computed), reads the run's ``timings.json``, then measures in the same
process the **floor**: the forward and backward passes of the plain HF model (no hooks, no
bookkeeping) that the run needs at the least:

* attribution: per task and batch of attribution prompts, a forward + backward (gradient w.r.t.
  activations) on the clean and on the corrupted prompts (noising and denoising share them),
  again after unlearning when the run re-localizes;
* faithfulness: per task and batch of the first 32 held-out prompts, a forward of the clean and the
  corrupted prompts and one per circuit (two);
* training: per optimizer step, a forward + backward (parameter gradients) of one forget batch
  and, in stages that use it, one retain batch;
* evaluation: one forward of every FE/RU prompt, every MIA text and every sequence lm-eval
  must run for the offline GU tasks (context + choice; one-token choices share the context).

It prints the stage breakdown, each stage's floor and their ratio. On a shared machine the
absolute times move with the load; the ratios much less.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from clue_mi.attribution import FAITHFULNESS_PROMPTS
from clue_mi.evaluate import LOCAL_GU_TASKS, holdout_capital_texts, local_task_dir
from clue_mi.experiment import METHODS, RunConfig, run_experiment
from clue_mi.models import load_model
from clue_mi.pipeline import PipelineConfig, load_tasks
from clue_mi.unlearn import encode_prompt_answers, encode_texts, forget_data, plain_hf_model
from clue_mi.unlearn import retain_data as retain_text


def _time(fn: Callable[[], object], repeats: int = 2) -> float:
    """Median seconds of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _batches(tokens: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [tokens[i : i + size] for i in range(0, len(tokens), size)]


def _padded(tok, texts: Sequence[str], size: int) -> list[dict[str, torch.Tensor]]:
    return [
        dict(tok(list(texts[i : i + size]), return_tensors="pt", padding=True))
        for i in range(0, len(texts), size)
    ]


def gu_sequences(tok, limit: int | None) -> list[str]:
    """The sequences lm-eval must run for the offline GU tasks: per document, context + choice
    for every choice, except that choices of one token share one run of the context (lm-eval
    reads all of them from the same logits)."""
    import yaml

    out = []
    folder = local_task_dir()
    for name in LOCAL_GU_TASKS:
        spec = yaml.safe_load((folder / f"{name}.yaml").read_text())
        path = folder / spec["dataset_kwargs"]["data_files"]["test"]
        docs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for doc in docs[:limit]:
            context = f"Question: {doc['question']}\nAnswer:"
            single = [
                c
                for c in doc["choices"]
                if len(tok(f" {c}", add_special_tokens=False)["input_ids"]) == 1
            ]
            multi = [c for c in doc["choices"] if c not in single]
            out += [f"{context} {c}" for c in single[:1] + multi]
    return out


class Floor:
    """Unit times of the plain HF model on the run's own inputs."""

    def __init__(self, model) -> None:
        self.net = plain_hf_model(model).eval()
        self.tok = model.tokenizer
        self.params = [p for p in self.net.parameters()]

    def _requires_grad(self, flag: bool) -> None:
        for p in self.params:
            p.requires_grad_(flag)
            p.grad = None

    def forward(self, batch: dict[str, torch.Tensor] | torch.Tensor) -> None:
        with torch.no_grad():
            if isinstance(batch, torch.Tensor):
                self.net(input_ids=batch)
            else:
                self.net(**batch)

    def activation_backward(self, tokens: torch.Tensor) -> None:
        """Forward + backward w.r.t. the input embeddings (weights frozen), as attribution."""
        self._requires_grad(False)
        embeds = self.net.get_input_embeddings()(tokens).detach().requires_grad_(True)
        self.net(inputs_embeds=embeds).logits[:, -1].sum().backward()

    def parameter_backward(self, batches: Sequence[dict[str, torch.Tensor]]) -> None:
        """Forward + backward with every parameter gradient, as one training step."""
        self._requires_grad(True)
        for batch in batches:
            self.net(**batch).logits.float().log_softmax(-1).mean().backward()
        self._requires_grad(False)


def measure_floor(model, cfg: RunConfig, steps: dict[str, int]) -> dict[str, float]:
    """Seconds of the unavoidable passes of each stage of a run with ``cfg``."""
    p = cfg.pipeline
    task_data = load_tasks(model, p)
    floor = Floor(model)
    out = {"attribution": 0.0, "faithfulness": 0.0, "training": 0.0, "evaluation": 0.0}
    rounds = 2 if cfg.relocalize else 1
    for task in task_data.values():
        for clean, corrupted in zip(
            _batches(task.prompts.clean_tokens, p.batch_size),
            _batches(task.prompts.corrupted_tokens, p.batch_size),
            strict=True,
        ):
            unit = _time(lambda c=clean, x=corrupted: (
                floor.activation_backward(c), floor.activation_backward(x)
            ))  # fmt: skip
            out["attribution"] += rounds * unit
        held_out = task.eval.clean_tokens[:FAITHFULNESS_PROMPTS]  # what faithfulness reads
        for clean in _batches(held_out, p.batch_size):
            out["faithfulness"] += 4 * _time(lambda c=clean: floor.forward(c))
    forget_task = task_data[p.forget]
    tok = floor.tok
    forget = forget_data(forget_task, cfg.loss)
    enc_f = encode_prompt_answers(tok, forget) if cfg.loss == "po" else encode_texts(tok, forget)
    enc_r = encode_texts(tok, retain_text([task_data[t] for t in p.retain]))
    f_batch = dict(
        input_ids=enc_f.batch(range(cfg.batch_size)).input_ids,
        attention_mask=enc_f.batch(range(cfg.batch_size)).attention_mask,
    )
    r_batch = dict(
        input_ids=enc_r.batch(range(cfg.batch_size)).input_ids,
        attention_mask=enc_r.batch(range(cfg.batch_size)).attention_mask,
    )
    step = _time(lambda: floor.parameter_backward([f_batch, r_batch]))
    out["training"] = step * sum(steps.values())
    eval_tokens = [t.eval.clean_tokens for t in task_data.values()]
    members = forget_task.train_text + forget_task.eval_text
    texts = members + holdout_capital_texts(like=members)
    gu = gu_sequences(tok, 20 if cfg.quick else None) if cfg.gu_tasks is None else []
    tok.padding_side = "right"
    batches: list[dict[str, torch.Tensor] | torch.Tensor] = [
        b for tokens in eval_tokens for b in _batches(tokens, 32)
    ]
    batches += _padded(tok, texts, 32) + _padded(tok, gu, 32)
    one_eval = _time(lambda: [floor.forward(b) for b in batches], repeats=1)
    out["evaluation"] = one_eval * (1 + len(cfg.methods))
    return out


def group(stages: dict[str, dict[str, float]]) -> dict[str, float]:
    """Stage seconds grouped as the floor is: attribution, faithfulness, training, evaluation."""
    seconds = {k: v["seconds"] for k, v in stages.items()}
    return {
        "attribution": seconds.get("attribution", 0.0),
        "faithfulness": seconds.get("faithfulness", 0.0),
        "training": sum(v for k, v in seconds.items() if k.endswith(": training")),
        "evaluation": sum(v for k, v in seconds.items() if k.endswith(": evaluation")),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny random model, smoke budgets")
    parser.add_argument(
        "--model", default=None, help="default: embedded SmolLM2 (tiny with --quick)"
    )
    parser.add_argument(
        "--n", type=int, default=None, help="prompts per task (default 32; 8 quick)"
    )
    parser.add_argument("--retain", default=None, help="comma-separated retain tasks")
    parser.add_argument("--methods", default=None, help="comma-separated methods")
    parser.add_argument("--epochs", type=int, nargs=2, default=None)
    parser.add_argument("--bf16", action="store_true", help="train under bfloat16 autocast")
    parser.add_argument("--json", default=None, help="also write the numbers to this file")
    args = parser.parse_args(argv)

    model_name = args.model or ("tiny-llama" if args.quick else None)
    n = args.n or (8 if args.quick else 32)
    # The default run's eval splits (32 forget facts, retain pairs up to 128) unless --quick.
    pipe = {"n": n, "n_eval": n if args.quick else None}
    if args.retain:
        pipe["retain"] = tuple(args.retain.split(","))  # type: ignore[assignment]
    if args.quick:
        pipe["sparsity"] = 0.5  # type: ignore[assignment]
    epochs = tuple(args.epochs) if args.epochs else RunConfig().epochs  # the default run's
    cfg = RunConfig(
        pipeline=PipelineConfig(**pipe),  # type: ignore[arg-type]
        model=model_name,
        device="cpu",
        methods=tuple(args.methods.split(",")) if args.methods else METHODS,
        epochs=epochs,  # type: ignore[arg-type]
        quick=args.quick,
        bf16=args.bf16,
    )
    with tempfile.TemporaryDirectory(prefix="bench_run_") as tmp:
        os.environ["CLUE_MI_CACHE"] = str(Path(tmp) / "cache")  # every attribution computed
        out = Path(tmp) / "run"
        run_experiment(cfg, out, log=lambda _: None)
        timings = json.loads((out / "timings.json").read_text())
        steps = {
            f.stem: json.loads(f.read_text()).get("steps") or 0
            for f in (out / "results").glob("*.json")
        }
    model = load_model(model_name, device="cpu")
    floor = measure_floor(model, cfg, steps)
    measured = group(timings["stages"])
    total = timings["total_seconds"]
    print(
        f"model {model_name or 'smollm2'}; {n} prompts per task; "
        f"retain {','.join(cfg.pipeline.retain)}; "
        f"methods {','.join(cfg.methods)}; torch threads {torch.get_num_threads()}; "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    print("| stage | seconds | calls |")
    print("|---|---|---|")
    for name, entry in timings["stages"].items():
        print(f"| {name} | {entry['seconds']:.1f} | {entry['calls']} |")
    print(f"| whole run | {total:.1f} | 1 |")
    print()
    print("| stage group | seconds | floor (s) | × floor |")
    print("|---|---|---|---|")
    for name, seconds in measured.items():
        ratio = seconds / floor[name] if floor[name] else float("nan")
        print(f"| {name} | {seconds:.1f} | {floor[name]:.1f} | {ratio:.2f} |")
    all_floor = sum(floor.values())
    print(f"| whole run | {total:.1f} | {all_floor:.1f} | {total / all_floor:.2f} |")
    result = {"stages": timings["stages"], "total": total, "groups": measured, "floor": floor}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
