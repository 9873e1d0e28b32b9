"""Evaluate a model before and after unlearning (DESIGN.md §9; CLUE paper §5.2, App. G).

Every function takes a ``TransformerBridge`` (as ``clue_mi.load_model`` returns) or a plain HF
causal LM; the forward passes run on the HF module (``bridge.original_model``), whose logits
equal the bridge's, so an unlearned model is measured exactly as it will be exported.

* **FE** forget efficacy = 1 - multiple-choice accuracy on the forget task's eval split, and
  ``fe_phrasings``: the same on the eval facts asked in held-out phrasings (templates that
  training never used; ``Task.phrasings``), where the forget task has them.
* **RU** retain utility = accuracy on each retain task's eval split.
* **GU** general utility = mean ``acc`` over lm-evaluation-harness tasks run on the in-memory
  model. Offline default: the four small tasks shipped in ``clue_mi/lm_eval_tasks``
  (:data:`LOCAL_GU_TASKS`); online, any harness task name (``arc_easy``, ``boolq``...).

Every metric fails closed (DESIGN.md §9): an accuracy counts a prediction as wrong when a choice
score is not finite or the top score is tied (``choice_accuracy``; GU re-scores lm-eval's
per-document log-likelihoods the same way), the correct choice sits at a seeded random position,
MIA is NaN (not a number that looks like 0.5) when a score is not finite, and a greedy
continuation produced from non-finite logits counts as recalling nothing. ``evaluate_model``
also reports ``finite``: whether every eval logit was finite (False marks a broken model).
* **MIA** Min-k% Prob (k = 0.2) membership inference: ROC-AUC of forget texts (label 1) against
  held-out texts (label 0), score = mean of the lowest 20% token log-probs (higher = more likely
  a member). About 0.5 after unlearning: forget texts look like unseen text (the goal). Well
  below 0.5: they now look *less* likely than unseen text, a sign of over-unlearning that
  itself reveals what was forgotten. Well above 0.5: the model still favours them.
* **Rouge-L** recall of greedy continuations of forget prompts against the forget answers
  (lower = more forgotten; ``1 - Rouge-L`` is reported too).
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
import yaml
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from clue_mi.models import hf_model, is_bridged, plain_hf_model
from clue_mi.stats import bootstrap_auc, bootstrap_mean, tied_fraction
from clue_mi.tasks import PromptSet, Task, choice_accuracy
from clue_mi.tasks.builtin import CAPITAL_TEMPLATES, CAPITALS
from clue_mi.timing import stage

LOCAL_GU_TASKS: tuple[str, ...] = (
    "clue_antonyms",
    "clue_colors",
    "clue_past_tense",
    "clue_animals",
)
"""Offline general-utility tasks shipped in ``clue_mi/lm_eval_tasks`` (see ``make_data.py``)."""

MINK_K = 0.2
MIA_TIE = 1e-4  # log-prob gap below which a member / non-member pair counts as tied

# Held-out (non-member) text for the default MIA: capitals-style sentences about countries that
# are NOT in the forget task's country list, so they share its template and style but are never
# unlearned. The untouched SmolLM2-135M scores 0.73 (answer span): the forget list's capitals are
# better known than these. Compare an unlearned model with that, not with 0.5.
HOLDOUT_CAPITALS: dict[str, str] = {
    "Brazil": "Brasilia", "South Africa": "Pretoria", "New Zealand": "Wellington",
    "Uruguay": "Montevideo", "Paraguay": "Asuncion", "Bolivia": "La Paz", "Ecuador": "Quito",
    "Cambodia": "Phnom Penh", "Laos": "Vientiane", "Malaysia": "Kuala Lumpur",
    "Mongolia": "Ulaanbaatar", "Kazakhstan": "Astana", "Uzbekistan": "Tashkent",
    "Georgia": "Tbilisi", "Armenia": "Yerevan", "Azerbaijan": "Baku", "Jordan": "Amman",
    "Saudi Arabia": "Riyadh", "Qatar": "Doha", "Oman": "Muscat", "Libya": "Tripoli",
    "Tunisia": "Tunis", "Algeria": "Algiers", "Sudan": "Khartoum", "Ghana": "Accra",
    "Senegal": "Dakar", "Uganda": "Kampala", "Zimbabwe": "Harare", "Zambia": "Lusaka",
    "Angola": "Luanda", "Iceland": "Reykjavik", "Estonia": "Tallinn", "Latvia": "Riga",
    "Lithuania": "Vilnius", "Slovakia": "Bratislava", "Slovenia": "Ljubljana",
    "Albania": "Tirana", "Belarus": "Minsk", "Jamaica": "Kingston", "Sri Lanka": "Colombo",
    "Bangladesh": "Dhaka", "Cyprus": "Nicosia", "Malta": "Valletta",
    "Bosnia and Herzegovina": "Sarajevo", "Panama": "Panama City", "Costa Rica": "San Jose",
}  # fmt: skip

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- model plumbing


def _tokenizer(model, tokenizer=None):
    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tok is None:
        raise ValueError("no tokenizer: pass a TransformerBridge or tokenizer=...")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # batching needs a pad id; masked out everywhere
    return tok


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


@contextlib.contextmanager
def _padding_side(tokenizer, side: str) -> Iterator[None]:
    """Temporarily set the tokenizer's padding side (the bridge shares this tokenizer)."""
    old = tokenizer.padding_side
    tokenizer.padding_side = side
    try:
        yield
    finally:
        tokenizer.padding_side = old


# --------------------------------------------------------------------------- FE and RU


@torch.no_grad()
def final_logits(
    model, tokens: Int[Tensor, "n pos"], batch_size: int = 32
) -> Float[Tensor, "n vocab"]:
    """Logits at the last position of equal-length prompts (no padding needed).

    ``logits_to_keep=1`` applies the unembedding to the last position only: the vocabulary
    projection of every other position was a fifth of an eval forward on SmolLM2-135M.
    """
    module = hf_model(model)
    device = _device(module)
    out = [
        module(input_ids=tokens[i : i + batch_size].to(device), logits_to_keep=1)
        .logits[:, -1]
        .float()
        .cpu()
        for i in range(0, len(tokens), batch_size)
    ]
    return torch.cat(out)


def prompt_outcomes(
    model, promptset: PromptSet, batch_size: int = 32
) -> tuple[Bool[Tensor, " n"], bool]:
    """Per prompt, whether it was answered correctly (failing closed, see ``choice_accuracy``),
    and whether every logit was finite."""
    logits = final_logits(model, promptset.clean_tokens, batch_size)
    correct = choice_accuracy(logits, promptset.choices.cpu(), promptset.good.cpu())
    return correct, bool(torch.isfinite(logits).all())


def scored_accuracy(model, promptset: PromptSet, batch_size: int = 32) -> tuple[float, bool]:
    """Accuracy (failing closed, see ``choice_accuracy``) and whether every logit was finite."""
    correct, finite = prompt_outcomes(model, promptset, batch_size)
    return float(correct.float().mean()), finite


def _interval(correct: Tensor, flip: bool = False) -> list[float]:
    """Bootstrap 95% interval ``[low, high]`` of the accuracy (of 1 - accuracy with ``flip``)."""
    values = correct.float().tolist()
    ci = bootstrap_mean([1.0 - v for v in values] if flip else values)
    return [ci.low, ci.high]


def task_accuracy(model, promptset: PromptSet, batch_size: int = 32) -> float:
    """Fraction of prompts whose top answer choice is a correct one, strictly above the rest.

    Fails closed: a prompt with a non-finite choice score or a tied top choice counts as wrong.
    """
    return scored_accuracy(model, promptset, batch_size)[0]


def logits_are_finite(model, promptset: PromptSet, batch_size: int = 32) -> bool:
    """Whether every final-position logit of the prompts is finite (False: a broken model)."""
    return bool(torch.isfinite(final_logits(model, promptset.clean_tokens, batch_size)).all())


def _split(task: Task, split: str) -> PromptSet:
    if split == "eval":
        return task.eval
    if split == "phrasings":
        if task.phrasings is None:
            raise ValueError(f"task {task.name!r} has no held-out phrasings")
        return task.phrasings
    raise ValueError(f"unknown split {split!r}; choose eval or phrasings")


def forget_efficacy(model, forget_task: Task, batch_size: int = 32, split: str = "eval") -> float:
    """FE = 1 - accuracy on the forget task's eval split (higher = more forgotten).

    ``split="phrasings"``: on the same facts asked in held-out phrasings (``Task.phrasings``).
    """
    return 1.0 - task_accuracy(model, _split(forget_task, split), batch_size)


def retain_utility(model, retain_tasks: Sequence[Task], batch_size: int = 32) -> dict[str, float]:
    """RU: accuracy on each retain task's eval split, by task name."""
    return {t.name: task_accuracy(model, t.eval, batch_size) for t in retain_tasks}


def accuracy_metrics(
    net, forget_task: Task, retain_tasks: Sequence[Task], batch_size: int = 32
) -> dict[str, Any]:
    """FE, FE on held-out phrasings and RU with bootstrap 95% intervals over eval prompts:
    the accuracy part of :func:`evaluate_model` (seconds, not the minute GU / MIA take).

    Keys ``fe``, ``forget_acc``, ``fe_phrasings`` (None without phrasings), ``ru`` (per
    task), ``ru_mean``, ``finite``, ``eval_sizes`` (prompts behind ``fe``, ``fe_phrasings``
    and each ``ru``) and ``ci`` (``fe``, ``fe_phrasings``, ``ru`` per task and
    ``ru_mean``: the interval of the mean over every retain prompt pooled, each prompt
    weighing the same; with unequal splits (gender's 68 against 128) the pooled mean differs
    from ``ru_mean``, the unweighted mean over tasks, by a fraction of a point, and readers
    clamp the interval to hold ``ru_mean``).
    """
    correct, finite = prompt_outcomes(net, forget_task.eval, batch_size)
    acc = float(correct.float().mean())
    out: dict[str, Any] = {"fe": 1.0 - acc, "forget_acc": acc, "fe_phrasings": None}
    out["ci"] = {"fe": _interval(correct, flip=True), "ru": {}}
    if forget_task.phrasings is not None:
        correct, ok = prompt_outcomes(net, forget_task.phrasings, batch_size)
        out["fe_phrasings"], finite = 1.0 - float(correct.float().mean()), finite and ok
        out["ci"]["fe_phrasings"] = _interval(correct, flip=True)
    out["ru"] = {}
    pooled: list[Tensor] = []
    for task in retain_tasks:
        correct, ok = prompt_outcomes(net, task.eval, batch_size)
        out["ru"][task.name] = float(correct.float().mean())
        out["ci"]["ru"][task.name] = _interval(correct)
        pooled.append(correct)
        finite = finite and ok
    out["ru_mean"] = sum(out["ru"].values()) / max(1, len(out["ru"]))
    if pooled:
        out["ci"]["ru_mean"] = _interval(torch.cat(pooled))
    out["finite"] = finite
    out["eval_sizes"] = {
        "fe": len(forget_task.eval),
        "fe_phrasings": None if forget_task.phrasings is None else len(forget_task.phrasings),
        "ru": {task.name: len(task.eval) for task in retain_tasks},
    }
    return out


# --------------------------------------------------------------------------- MIA (Min-k% Prob)


@torch.no_grad()
def token_logprobs(
    model, texts: Sequence[str], batch_size: int = 16, tokenizer=None
) -> list[Float[Tensor, " tokens"]]:
    """Per text, log p(x_t | x_<t) of every token after the first (BOS included if added)."""
    module, tok = hf_model(model), _tokenizer(model, tokenizer)
    device = _device(module)
    out: list[Tensor] = []
    with _padding_side(tok, "right"):
        for i in range(0, len(texts), batch_size):
            enc = tok(list(texts[i : i + batch_size]), return_tensors="pt", padding=True)
            ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
            logp = module(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
            picked = logp[:, :-1].gather(2, ids[:, 1:, None]).squeeze(2).cpu()
            # Right padding: the real tokens are a prefix, so slice each row by its length.
            for row, n in zip(picked, mask.sum(1).tolist(), strict=True):
                out.append(row[: n - 1])
    return out


def mink_from_logprobs(logprobs: Sequence[float] | Tensor, k: float = MINK_K) -> float:
    """Min-k% Prob of one text: the mean of its lowest ``k`` fraction of token log-probs.

    As in Shi et al. (2024) the count is ``floor(k * n)``, but at least one token, so short texts
    are scored by their single least likely token.
    """
    values = torch.as_tensor(logprobs, dtype=torch.float64).flatten()
    if values.numel() == 0:
        raise ValueError("no token log-probs: the text is empty (or only a BOS token)")
    if not 0 < k <= 1:
        raise ValueError(f"k must be in (0, 1], got {k}")
    count = max(1, math.floor(k * values.numel()))
    return float(values.sort().values[:count].mean())


def answer_start(text: str) -> int:
    """Character offset where a capitals sentence's answer starts (after its template prompt),
    or 0 for a text in no capitals template (then the whole text is scored)."""
    template = _template_of(text)
    if template is None:
        return 0
    head, tail = template.split("{}")
    return text.index(tail, len(head)) + len(tail)


def answer_logprobs(
    model, texts: Sequence[str], batch_size: int = 16, tokenizer=None
) -> list[Float[Tensor, " tokens"]]:
    """Per text, the log-probs of its answer tokens only (see :func:`answer_start`).

    The prompt is tokenized alone; where its tokens are not a prefix of the text's (a merge
    across the boundary), the answer starts at the first token that differs.
    """
    tok = _tokenizer(model, tokenizer)
    out = []
    for text, lp in zip(texts, token_logprobs(model, texts, batch_size, tok), strict=True):
        start = answer_start(text)
        if start == 0:
            out.append(lp)
            continue
        full = tok(text)["input_ids"]
        prompt = tok(text[:start])["input_ids"]
        shared = next(
            (i for i, (a, b) in enumerate(zip(full, prompt, strict=False)) if a != b),
            min(len(full), len(prompt)),
        )
        out.append(lp[max(shared, 1) - 1 :])  # lp[i] is the log-prob of token i + 1
    return out


def mink_scores(
    model,
    texts: Sequence[str],
    k: float = MINK_K,
    batch_size: int = 16,
    tokenizer=None,
    span: Literal["answer", "text"] = "answer",
) -> list[float]:
    """Min-k% Prob score of each text (higher = the model finds it more familiar), over its
    answer tokens (``span="answer"``, capitals sentences; others whole) or every token."""
    scorer = answer_logprobs if span == "answer" else token_logprobs
    return [mink_from_logprobs(lp, k) for lp in scorer(model, texts, batch_size, tokenizer)]


class MIAResult(NamedTuple):
    """An MIA's AUC, its bootstrap 95% interval over the texts, and the share of tied pairs."""

    auc: float
    low: float
    high: float
    ties: float


def mia(
    model,
    forget_texts: Sequence[str],
    holdout_texts: Sequence[str],
    k: float = MINK_K,
    batch_size: int = 16,
    tokenizer=None,
    span: Literal["answer", "text"] = "answer",
) -> MIAResult:
    """Min-k% Prob MIA (see :func:`mia_auc`) with a bootstrap 95% interval (members and
    non-members resampled separately, seeded) and the fraction of pairs within :data:`MIA_TIE`.
    A broken model (non-finite scores) gets NaN everywhere."""
    members = mink_scores(model, forget_texts, k, batch_size, tokenizer, span=span)
    nonmembers = mink_scores(model, holdout_texts, k, batch_size, tokenizer, span=span)
    if not all(math.isfinite(x) for x in [*members, *nonmembers]):
        # Fail closed: a broken model's AUC is not a number, never one that looks like 0.5.
        log.warning("MIA: non-finite Min-k%% scores (broken model); reporting NaN")
        return MIAResult(*[float("nan")] * 4)
    ci = bootstrap_auc(members, nonmembers)
    return MIAResult(ci.value, ci.low, ci.high, tied_fraction(members, nonmembers, MIA_TIE))


def mia_auc(
    model,
    forget_texts: Sequence[str],
    holdout_texts: Sequence[str],
    k: float = MINK_K,
    batch_size: int = 16,
    tokenizer=None,
    span: Literal["answer", "text"] = "answer",
) -> float:
    """Min-k% Prob MIA: ROC-AUC of forget texts (label 1) vs held-out texts (label 0).

    Score = Min-k% log-prob of the *answer* (``span="answer"``: the tokens after a capitals
    template's prompt, e.g. " Paris."), higher = more likely a member. The answer is what
    unlearning removes; the template tokens, shared by members and held-out text, otherwise
    make up the lowest 20% of a short sentence and leave the ranking to float noise
    (``span="text"`` is the whole-sentence score, for comparison). Sign convention: 1.0 means
    every forget answer looks more familiar than every held-out one; 0.5, no difference; below
    0.5, the forget answers look *less* likely than unseen ones (the fact was pushed down).
    The reference is the untouched model (0.73 for SmolLM2-135M on the default capitals sets,
    whose forget countries are the better known): unlearning should move it down.
    """
    return mia(model, forget_texts, holdout_texts, k, batch_size, tokenizer, span).auc


def holdout_capital_texts(
    like: Sequence[str] | None = None, exclude: Sequence[str] = tuple(CAPITALS)
) -> list[str]:
    """Default MIA non-members: capitals sentences about countries outside the forget set.

    Written exactly like the forget sentences (``"<template with country> <capital>."``) for the
    countries of :data:`HOLDOUT_CAPITALS` not in ``exclude`` (default: every country the forget
    task can ask about).

    Min-k% on short templated sentences is dominated by the template's least likely tokens, so
    the non-members must use the same template mix as the members. With ``like`` (the forget
    texts), one held-out sentence is written per forget sentence, in the same template, cycling
    through the held-out countries; forget texts in no known template are skipped. Without it,
    every held-out country appears once in every template.
    """
    excluded = set(exclude)
    pairs = [(c, cap) for c, cap in HOLDOUT_CAPITALS.items() if c not in excluded]
    if not pairs:
        raise ValueError("every held-out country is excluded")
    if like is None:
        return [f"{t.format(c)} {cap}." for c, cap in pairs for t in CAPITAL_TEMPLATES]
    out: list[str] = []
    for text in like:
        template = _template_of(text)
        if template is not None:
            country, capital = pairs[len(out) % len(pairs)]
            out.append(f"{template.format(country)} {capital}.")
    return out


def _template_of(text: str) -> str | None:
    """The capitals template a sentence was written in, or None."""
    for template in CAPITAL_TEMPLATES:
        head, tail = template.split("{}")
        if text.startswith(head) and tail in text[len(head) :]:
            return template
    return None


# --------------------------------------------------------------------------- Rouge-L


@torch.no_grad()
def greedy_continuations(
    model,
    prompts: Sequence[str],
    max_new_tokens: int = 8,
    batch_size: int = 16,
    tokenizer=None,
) -> list[str]:
    """Greedy (``do_sample=False``) continuations of each prompt, prompt text excluded.

    Fails closed: a continuation any of whose steps had a non-finite logit is returned as ``""``
    (the model recalled nothing), rather than whatever ``argmax`` makes of NaN.
    """
    module, tok = hf_model(model), _tokenizer(model, tokenizer)
    device = _device(module)
    # The bridge's attention ignores past key/values, so a cached step there attends to the new
    # token alone and is not greedy (measured: logit 1.53 chosen over 4.42): recompute the whole
    # prefix each step. A plain HF model (``plain_hf_model``, what evaluate_model passes) caches.
    use_cache = not is_bridged(module)
    out: list[str] = []
    # Left padding keeps every prompt's last token at the end, where generation starts.
    with _padding_side(tok, "left"):
        for i in range(0, len(prompts), batch_size):
            enc = tok(list(prompts[i : i + batch_size]), return_tensors="pt", padding=True)
            generated = module.generate(  # type: ignore[operator]
                input_ids=enc["input_ids"].to(device),
                attention_mask=enc["attention_mask"].to(device),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=tok.pad_token_id,
                use_cache=use_cache,
                # Unset sampling defaults of the model's generation config (avoids warnings).
                temperature=None,
                top_p=None,
                top_k=None,
                output_scores=True,
                return_dict_in_generate=True,
            )
            new = generated.sequences[:, enc["input_ids"].shape[1] :]
            finite = torch.stack([torch.isfinite(x).all(-1) for x in generated.scores]).all(0)
            texts = tok.batch_decode(new, skip_special_tokens=True)
            out.extend(t if ok else "" for t, ok in zip(texts, finite.tolist(), strict=True))
    return out


def rouge_l_recall(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean Rouge-L recall (LCS / reference length, ``rouge-score``) of predictions."""
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not references:
        raise ValueError("no references to score")
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    recalls = [
        scorer.score(ref, pred)["rougeL"].recall
        for pred, ref in zip(predictions, references, strict=True)
    ]
    return sum(recalls) / len(recalls)


def rouge_l(
    model,
    prompts: Sequence[str],
    references: Sequence[str],
    max_new_tokens: int = 8,
    batch_size: int = 16,
    tokenizer=None,
) -> float:
    """Rouge-L recall of the model's greedy continuations of ``prompts`` against ``references``.

    1.0 = every reference word sequence is reproduced; report ``1 - rouge_l`` as forgetting.
    """
    predictions = greedy_continuations(model, prompts, max_new_tokens, batch_size, tokenizer)
    return rouge_l_recall(predictions, references)


def continuation_references(task: Task) -> tuple[list[str], list[str]]:
    """Eval prompts of a task and the rest of each eval sentence (the answer to recall).

    ``"The capital of France is"`` / ``"Paris."``: Rouge-L then measures whether the model still
    produces the answer, not whether it copies the prompt.
    """
    prompts, refs = [], []
    for prompt, sentence in zip(task.eval.clean, task.eval.sentences, strict=True):
        prompts.append(prompt)
        refs.append(sentence[len(prompt) :].strip() if sentence.startswith(prompt) else sentence)
    return prompts, refs


# --------------------------------------------------------------------------- GU (lm-eval)


def local_task_dir() -> Path:
    """The folder of the shipped lm-eval task YAMLs and their JSONL data."""
    return Path(str(resources.files("clue_mi") / "lm_eval_tasks"))


@contextlib.contextmanager
def resolved_task_dir(task_dir: str | Path | None = None) -> Iterator[Path]:
    """A temporary copy of the task folder whose ``data_files`` paths are absolute.

    lm-eval 0.4.13 hands ``dataset_kwargs`` straight to ``datasets.load_dataset``, which resolves
    relative ``data_files`` against the working directory, not the YAML's folder. Rewriting them
    against the YAML's own folder makes the tasks work from any working directory and from an
    installed package.
    """
    src = Path(task_dir) if task_dir is not None else local_task_dir()
    with tempfile.TemporaryDirectory(prefix="clue_mi_lm_eval_") as tmp:
        for path in sorted(src.glob("*.yaml")):
            config = yaml.safe_load(path.read_text(encoding="utf-8"))
            files = (config.get("dataset_kwargs") or {}).get("data_files")
            if isinstance(files, dict):
                files = {split: _absolute(path.parent, f) for split, f in files.items()}
            elif files is not None:
                files = _absolute(path.parent, files)
            if files is not None:
                config["dataset_kwargs"]["data_files"] = files
            (Path(tmp) / path.name).write_text(yaml.safe_dump(config), encoding="utf-8")
        yield Path(tmp)


def _absolute(base: Path, files: str | list[str]) -> str | list[str]:
    if isinstance(files, list):
        return [str((base / f).resolve()) for f in files]
    return str((base / files).resolve())


def _task_accuracy(results: dict[str, Any], name: str, metric: str) -> float:
    """Read ``metric`` (e.g. ``acc``) of one task or group from ``simple_evaluate`` output."""
    entry = results.get("results", {}).get(name) or results.get("groups", {}).get(name)
    if entry is None:
        raise KeyError(f"lm-eval returned no results for {name!r}")
    for key in (f"{metric},none", metric):
        if key in entry and isinstance(entry[key], int | float):
            return float(entry[key])
    numeric = [k for k, v in entry.items() if isinstance(v, int | float)]
    raise KeyError(f"task {name!r} has no {metric!r}; it reported {numeric}")


def _lls(sample: dict[str, Any]) -> list[float] | None:
    """The per-choice log-likelihoods of one logged lm-eval sample (None: not multiple choice)."""
    resps = sample.get("filtered_resps") or []
    lls = [r[0] if isinstance(r, list | tuple) else r for r in resps]
    if lls and all(isinstance(x, int | float) and not isinstance(x, bool) for x in lls):
        return [float(x) for x in lls]
    return None


def fail_closed_value(sample: dict[str, Any], metric: str) -> float:
    """lm-eval's per-document ``metric``, or 0 when its choice log-likelihoods are degenerate.

    lm-eval picks ``np.argmax`` of the log-likelihoods, which returns the first choice for NaN
    or tied values; here such a document is wrong (DESIGN.md §9), as in ``choice_accuracy``.
    The tie check is on the raw log-likelihoods (also for ``acc_norm``).
    """
    lls = _lls(sample)
    value = float(sample[metric])
    if lls is None or len(lls) < 2:
        return value if math.isfinite(value) else 0.0
    top = max(lls)
    if not all(math.isfinite(x) for x in lls) or sum(x == top for x in lls) > 1:
        return 0.0
    return value


def _fail_closed_score(results: dict[str, Any], name: str, metric: str) -> float | None:
    """Mean fail-closed ``metric`` over the logged documents of a task or group, if logged.

    A group's score is the mean over all documents of its subtasks (size-weighted).
    """
    samples = results.get("samples") or {}
    names = [name] if name in samples else list((results.get("group_subtasks") or {}).get(name, []))
    docs = [d for n in names for d in samples.get(n, [])]
    if not docs or any(metric not in d for d in docs):
        return None
    return sum(fail_closed_value(d, metric) for d in docs) / len(docs)


def check_gu_tasks(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` if every one is a shipped offline task or an lm-eval task, else a one-line
    ``OptionError`` naming the unknown ones (before a run spends minutes on attribution).

    Looking past the shipped tasks indexes lm-eval's task YAMLs (some seconds); whether a
    task's data can be reached is only known when it runs.
    """
    from clue_mi.options import OptionError

    local = {p.stem for p in local_task_dir().glob("*.yaml")}
    unknown = [n for n in names if n not in local]
    if unknown:
        from lm_eval.tasks import TaskManager

        known = set(TaskManager().all_tasks)
        unknown = [n for n in unknown if n not in known]
    if unknown:
        raise OptionError(
            f"gu_tasks (--gu-tasks): unknown lm-eval task(s) {', '.join(unknown)}; the shipped "
            f"offline ones are {', '.join(sorted(local))}, and `lm-eval ls tasks` lists the rest"
        )
    return tuple(names)


def general_utility(
    model,
    tasks: Sequence[str] | None = None,
    limit: int | float | None = None,
    batch_size: int = 32,
    metric: str = "acc",
    tokenizer=None,
    task_dir: str | Path | None = None,
) -> dict[str, Any]:
    """GU: mean ``metric`` over lm-evaluation-harness tasks, run on the in-memory model.

    Args:
        model: a TransformerBridge or HF causal LM (evaluated as is, never reloaded).
        tasks: lm-eval task names; default :data:`LOCAL_GU_TASKS` (offline, shipped). Any
            harness task (``arc_easy``, ``boolq``, ``mmlu``...) works when its data is reachable.
        limit: at most this many documents per task (a fraction if < 1), for quick runs.
        metric: ``acc`` by default (length-normalised ``acc_norm`` on request).
        task_dir: folder of extra task YAMLs (default: the shipped ``lm_eval_tasks``).

    Every document is re-scored failing closed (``fail_closed_value``): non-finite or tied
    choice log-likelihoods count as wrong, where lm-eval would pick the first choice.

    Returns:
        ``{"gu": mean over tasks, "tasks": {name: score}, "lm_eval_tasks": {name: lm-eval's own
        score}, "metric": metric, "limit": limit, "seconds": wall time}``.
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    names = list(tasks) if tasks is not None else list(LOCAL_GU_TASKS)
    if not names:
        raise ValueError("general_utility needs at least one task")
    local = {p.stem for p in (Path(task_dir) if task_dir else local_task_dir()).glob("*.yaml")}
    module, tok = hf_model(model), _tokenizer(model, tokenizer)
    was_training = module.training
    start = time.perf_counter()
    lm = HFLM(pretrained=module, tokenizer=tok, batch_size=batch_size, device=str(_device(module)))
    try:
        with resolved_task_dir(task_dir) as include:
            # Indexing lm-eval's thousands of built-in YAMLs takes seconds; skip it when every
            # requested task is one of ours.
            manager = TaskManager(
                include_path=str(include), include_defaults=not set(names) <= local
            )
            results = lm_eval.simple_evaluate(
                model=lm,
                tasks=names,
                task_manager=manager,
                limit=limit,
                log_samples=True,  # per-document log-likelihoods, re-scored failing closed
                bootstrap_iters=0,
                # Leave the caller's RNG state alone (lm-eval seeds globally by default); the
                # tasks are zero-shot and ``limit`` takes the first documents, so nothing here
                # is random.
                random_seed=None,
                numpy_random_seed=None,
                torch_random_seed=None,
            )
    finally:
        module.train(was_training)
    if results is None:  # only on non-zero ranks of a distributed run
        raise RuntimeError("lm-eval returned no results")
    raw = {name: _task_accuracy(results, name, metric) for name in names}
    scores = {}
    for name in names:
        strict = _fail_closed_score(results, name, metric)
        scores[name] = raw[name] if strict is None else strict
    return {
        "gu": sum(scores.values()) / len(scores),
        "tasks": scores,
        "lm_eval_tasks": raw,
        "metric": metric,
        "limit": limit,
        "seconds": time.perf_counter() - start,
    }


# --------------------------------------------------------------------------- everything


def evaluate_model(
    model,
    forget_task: Task,
    retain_tasks: Sequence[Task],
    holdout_texts: Sequence[str] | None = None,
    gu_tasks: Sequence[str] | None = None,
    quick: bool = False,
    forget_texts: Sequence[str] | None = None,
    max_new_tokens: int = 8,
    batch_size: int = 32,
) -> dict[str, Any]:
    """All metrics of DESIGN.md §9 for one model, as one flat-ish dict.

    Args:
        forget_task, retain_tasks: the tasks unlearning was set up with.
        holdout_texts: MIA non-members; default ``holdout_capital_texts(like=forget_texts)``
            (fits the default ``capitals`` forget task; pass your own for other forget sets).
        gu_tasks: lm-eval tasks for GU (default :data:`LOCAL_GU_TASKS`); ``()`` skips GU.
        quick: GU on at most 20 documents per task (smoke runs; noisy numbers).
        forget_texts: MIA members; default: the forget task's train + eval sentences, i.e. the
            text that unlearning trains on.

    Returns keys ``fe``, ``forget_acc``, ``fe_phrasings`` (FE on held-out phrasings of the
    eval facts; None when the forget task has none), ``ru`` (per task), ``ru_mean``, ``gu``,
    ``gu_tasks``, ``mia_auc``, ``mia_ties`` (fraction of member / non-member pairs within
    :data:`MIA_TIE`), ``rouge_l``, ``one_minus_rouge_l``, ``finite`` (every eval logit
    finite; False marks a broken model, whose accuracies are 0 and MIA NaN), ``ci`` (bootstrap
    95% intervals over eval prompts: ``fe``, ``fe_phrasings`` and ``ru`` per task, each
    ``[low, high]``, see :mod:`clue_mi.stats`), ``seconds``.
    """
    start = time.perf_counter()
    members = (
        list(forget_texts)
        if forget_texts is not None
        else forget_task.train_text + forget_task.eval_text
    )
    holdout = (
        list(holdout_texts) if holdout_texts is not None else holdout_capital_texts(like=members)
    )
    prompts, refs = continuation_references(forget_task)
    gu_names = list(LOCAL_GU_TASKS) if gu_tasks is None else list(gu_tasks)
    steps = ["FE and RU", "MIA", "Rouge-L"] + (["general utility"] if gu_names else [])
    out: dict[str, Any] = {}
    # The same parameters without the bridge's per-head hooks: 1.3-1.4x faster forwards
    # (measured: GU 14.9 -> 10.9 s), final logits within 5e-5 of the bridge's.
    tok, net = _tokenizer(model), plain_hf_model(model)
    with tqdm(total=len(steps), desc="evaluate", leave=False) as bar:
        for step in steps:
            bar.set_postfix_str(step)
            if step == "FE and RU":
                out.update(accuracy_metrics(net, forget_task, retain_tasks, batch_size))
                if not out["finite"]:
                    log.warning("evaluate: non-finite logits; the model is broken")
            elif step == "MIA":
                result = mia(net, members, holdout, batch_size=batch_size, tokenizer=tok)
                out["mia_auc"], out["mia_ties"] = result.auc, result.ties
                out["ci"]["mia_auc"] = [result.low, result.high]
            elif step == "Rouge-L":
                out["rouge_l"] = rouge_l(net, prompts, refs, max_new_tokens, batch_size, tok)
                out["one_minus_rouge_l"] = 1.0 - out["rouge_l"]
            else:
                with stage("evaluation: GU (lm-eval)"):  # most of an evaluation's time
                    gu = general_utility(
                        net,
                        gu_names,
                        limit=20 if quick else None,
                        batch_size=batch_size,
                        tokenizer=tok,
                    )
                out["gu"], out["gu_tasks"] = gu["gu"], gu["tasks"]
            bar.update()
    if not gu_names:
        out["gu"], out["gu_tasks"] = None, {}
    out["seconds"] = time.perf_counter() - start
    return out


def copy_task_dir(dest: str | Path) -> Path:
    """Copy the shipped lm-eval tasks (YAML + data) to ``dest``, e.g. to edit or extend them."""
    return Path(shutil.copytree(local_task_dir(), dest, ignore=shutil.ignore_patterns("*.pyc")))


__all__ = [
    "accuracy_metrics",
    "HOLDOUT_CAPITALS",
    "LOCAL_GU_TASKS",
    "continuation_references",
    "copy_task_dir",
    "evaluate_model",
    "check_gu_tasks",
    "final_logits",
    "forget_efficacy",
    "general_utility",
    "greedy_continuations",
    "holdout_capital_texts",
    "hf_model",
    "local_task_dir",
    "logits_are_finite",
    "fail_closed_value",
    "scored_accuracy",
    "mia",
    "mia_auc",
    "answer_logprobs",
    "mink_from_logprobs",
    "mink_scores",
    "prompt_outcomes",
    "resolved_task_dir",
    "retain_utility",
    "rouge_l",
    "rouge_l_recall",
    "task_accuracy",
    "token_logprobs",
]
