"""Tasks from the real data sets of the CLUE paper: WMDP, SST-2, RTE, Winogrande, PKU-SafeRLHF.

Every loader reads its data set through Hugging Face ``datasets``: from the hub when online, or
from ``path=``, a local ``.json`` / ``.jsonl`` / ``.parquet`` file or folder in the hub's field
format (tests use small fixtures in ``tests/fixtures``). Offline (``HF_HUB_OFFLINE`` /
``HF_DATASETS_OFFLINE``) or without network, a loader without ``path`` raises
``DatasetUnavailableError`` unless ``datasets`` finds the data set in its own cache.

Hub sources and the fields read (checked against the hub data set cards):

==============  ==========================================  ======================================
task            hub id (config), default split              fields
==============  ==========================================  ======================================
wmdp_cyber      ``cais/wmdp`` (``wmdp-cyber``), test        question, choices (4 str), answer (int)
wmdp_bio        ``cais/wmdp`` (``wmdp-bio``), test          same
sst2            ``stanfordnlp/sst2``, train                 sentence, label (0 neg, 1 pos)
rte             ``nyu-mll/glue`` (``rte``), train           sentence1, sentence2, label
                                                            (0 entailment, 1 not_entailment)
winogrande      ``allenai/winogrande`` (``winogrande_xl``),  sentence (one ``_``), option1,
                train                                       option2, answer ("1" / "2")
pku_saferlhf    ``PKU-Alignment/PKU-SafeRLHF``, train       prompt, response_0, response_1,
                                                            is_response_0_safe, is_response_1_safe
==============  ==========================================  ======================================

Rows without a usable label (GLUE and SST-2 test splits carry ``-1``, Winogrande's test split an
empty answer) are skipped.

All prompts of a task must share one token length (``build_task`` keeps the most common length;
nothing is ever padded). Data sets of short templated prompts (SST-2 train, Winogrande train)
easily give 32 + 32 pairs of one length; data sets of long, varied prompts (WMDP, RTE) give far
fewer, and ``build_task`` then says how many it found: ask for a smaller ``n`` / ``n_eval``.

Prompt templates and corruptions (clean and corrupted prompts always have equal token length;
"correct first" below is the order the loaders write, ``build_task`` then shuffles every
prompt's choices by seed so the correct one is at a random position):

* **WMDP**: ``"The following are multiple choice questions (with answers) about {subject}.\\n\\n
  {question}\\nA. {c0}\\nB. {c1}\\nC. {c2}\\nD. {c3}\\nAnswer:"`` (the lm-eval format), choices
  ``" A" .. " D"``, the correct letter good. Corrupted: the same question with the choice texts
  cyclically shifted by a random 1..3 places, so the correct text sits under another letter (same
  tokens in another order). Training text: the clean prompt + ``" {letter}. {answer text}"``.
* **SST-2**: ``"Review: {sentence}\\nSentiment:"``, choices ``" positive"`` / ``" negative"``
  (correct first). Corrupted: the prompt of another review of the opposite label with the same
  token length.
* **RTE**: ``"{sentence1}\\nQuestion: does this imply that \\"{sentence2}\\"? yes or no?\\n
  Answer:"``, choices ``" yes"`` (entailment) / ``" no"``, correct first. Corrupted: another
  pair of the opposite label with the same token length.
* **Winogrande**: ``"{sentence}\\nQuestion: in the sentence above, who or what is \\"_\\"?\\n
  Answer:"`` (the blank stays in the sentence, so the words after it, which decide the answer,
  are seen), choices ``" {correct option}"`` / ``" {other option}"`` (their first tokens must
  differ). Corrupted (``corruption="swap"``): the two options trade places in the sentence, which
  flips the answer with the same words; (``"twin"``): the data set's twin sentence (same options,
  other answer, a trigger word changed) of equal token length; ``"auto"`` (default) tries swap,
  then twin. Training text: the sentence with the blank filled.
* **PKU-SafeRLHF** is text, not a task: ``load_pku_saferlhf_text`` returns unsafe responses
  (forget text) and safe responses (retain text) as ``"Question: {prompt}\\nAnswer: {response}"``.
  A paired-prompt task does not fit it: the two responses to a prompt rarely have equal length and
  there is no single next token that tells safe from unsafe.

Every loader is deterministic per ``seed``: rows are shuffled with ``random.Random(f"{name}:
{seed}")`` and the first ``max_rows`` of them are used.
"""

from __future__ import annotations

import os
import random
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clue_mi.tasks.base import Example, Task, build_task

Row = dict[str, Any]

LETTERS = "ABCDEFGHIJ"
WMDP_SUBJECTS = {"wmdp-cyber": "computer security", "wmdp-bio": "biology"}
SST2_TEMPLATE = "Review: {sentence}\nSentiment:"
SST2_ANSWERS = (" negative", " positive")  # indexed by label
RTE_TEMPLATE = '{sentence1}\nQuestion: does this imply that "{sentence2}"? yes or no?\nAnswer:'
RTE_ANSWERS = (" yes", " no")  # indexed by label: 0 entailment, 1 not_entailment
WINOGRANDE_TEMPLATE = '{sentence}\nQuestion: in the sentence above, who or what is "_"?\nAnswer:'
PKU_TEMPLATE = "Question: {prompt}\nAnswer: {response}"
DEFAULT_MAX_ROWS = 20_000

_SUFFIX_BUILDER = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_SPLIT_ALIASES = {"train": "train", "validation": "validation", "dev": "validation", "test": "test"}
_TRUE = {"1", "on", "yes", "true"}


class DatasetUnavailableError(RuntimeError):
    """A hub data set could not be loaded (offline, no network, or not on the hub)."""


@dataclass(frozen=True)
class HubSource:
    """Where a data set lives on the hub and which fields the loader reads."""

    hub_id: str
    config: str | None
    fields: tuple[str, ...]


WMDP_CYBER = HubSource("cais/wmdp", "wmdp-cyber", ("question", "choices", "answer"))
WMDP_BIO = HubSource("cais/wmdp", "wmdp-bio", ("question", "choices", "answer"))
SST2 = HubSource("stanfordnlp/sst2", None, ("sentence", "label"))
RTE = HubSource("nyu-mll/glue", "rte", ("sentence1", "sentence2", "label"))
WINOGRANDE = HubSource(
    "allenai/winogrande", "winogrande_xl", ("sentence", "option1", "option2", "answer")
)
PKU_SAFERLHF = HubSource(
    "PKU-Alignment/PKU-SafeRLHF",
    None,
    ("prompt", "response_0", "response_1", "is_response_0_safe", "is_response_1_safe"),
)


# --------------------------------------------------------------------------- loading rows


def offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE`` asks for offline mode."""
    flags = [os.environ.get(k, "") for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")]
    return any(f.strip().lower() in _TRUE for f in flags)


def load_rows(source: HubSource, split: str, path: str | os.PathLike | None = None) -> list[Row]:
    """Rows of ``source`` (``split``) as dicts, from ``path`` if given, else from the hub.

    ``path`` is a file, or a folder searched recursively (inside its ``source.config`` subfolder
    if there is one) for ``.json`` / ``.jsonl`` / ``.parquet`` files; if file names start with a
    split name (``train``, ``validation``/``dev``, ``test``) only those of ``split`` are read
    (``"train+validation"`` reads both). A single file is read whatever its name.
    """
    import datasets  # lazy: importing ``datasets`` is slow and most runs never need it

    if path is not None:
        files = local_files(Path(path), split, source.config)
        builder = _builder(files)
        ds = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train")
    else:
        try:
            ds = datasets.load_dataset(source.hub_id, source.config, split=split)
        except Exception as err:  # any failure here means: the hub copy is out of reach
            raise DatasetUnavailableError(_unavailable_message(source, split, err)) from err
    missing = [f for f in source.fields if f not in ds.column_names]
    if missing:
        where = path if path is not None else source.hub_id
        raise ValueError(
            f"{where}: missing field(s) {missing}; expected the hub format of {source.hub_id} "
            f"with fields {list(source.fields)}, found {ds.column_names}"
        )
    return ds.to_list()


def _unavailable_message(source: HubSource, split: str, err: Exception) -> str:
    name = source.hub_id + (f" (config {source.config!r})" if source.config else "")
    why = (
        "offline mode is on (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) and it is not in the local "
        "datasets cache"
        if offline()
        else "the hub could not be reached or refused the request"
    )
    return (
        f"data set {name}, split {split!r}, could not be loaded: {why} "
        f"[{type(err).__name__}: {err}]. This data set needs to be online: unset the offline "
        f"variables and connect to download it once, or pass path= to a local .json/.jsonl/"
        f".parquet file or folder in the hub's format (fields: {', '.join(source.fields)})."
    )


def local_files(path: Path, split: str, config: str | None = None) -> list[Path]:
    """The data files under ``path`` for ``split`` (see ``load_rows``)."""
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if path.is_file():
        return [path]
    if config and (path / config).is_dir():
        path = path / config
    files = sorted(p for p in path.rglob("*") if p.is_file() and _suffix(p) in _SUFFIX_BUILDER)
    if not files:
        raise FileNotFoundError(f"no .json/.jsonl/.parquet files under {path}")
    named = {p: _split_of(p) for p in files}
    if not any(named.values()):
        return files
    wanted = {_SPLIT_ALIASES.get(s.strip(), s.strip()) for s in split.split("+")}
    chosen = [p for p, s in named.items() if s in wanted]
    if not chosen:
        found = sorted({s for s in named.values() if s})
        raise FileNotFoundError(f"no file of split {split!r} under {path} (found {found})")
    return chosen


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def _split_of(path: Path) -> str | None:
    name = path.name.lower()
    for prefix, split in _SPLIT_ALIASES.items():
        if name.startswith(prefix) and name[len(prefix) : len(prefix) + 1] in (".", "-", "_"):
            return split
    return None


def _builder(files: Sequence[Path]) -> str:
    builders = {_SUFFIX_BUILDER[_suffix(f)] for f in files}
    if len(builders) != 1:
        raise ValueError(f"mixed file formats {sorted(builders)}: {[str(f) for f in files]}")
    return builders.pop()


def _shuffled(rows: list[Row], rng: random.Random, max_rows: int | None) -> list[Row]:
    rows = list(rows)
    rng.shuffle(rows)
    return rows if max_rows is None else rows[:max_rows]


def _tokenizer(model_or_tokenizer):
    return getattr(model_or_tokenizer, "tokenizer", model_or_tokenizer)


def _lengths(tokenizer, prompts: Sequence[str]) -> list[int]:
    """Token lengths exactly as ``base.tokenize`` counts them, in one batched call."""
    if not prompts:
        return []
    ids = tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    return [len(i) for i in ids]


def _finish(
    name: str,
    description: str,
    examples: Sequence[Example],
    tokenizer,
    n: int,
    n_eval: int | None,
    **info: Any,
) -> Task:
    task = build_task(name, description, examples, tokenizer, n, n_eval, seed=info.get("seed", 0))
    task.info.update(info)
    return task


# --------------------------------------------------------------------------- WMDP


def wmdp_prompt(question: str, choices: Sequence[str], subject: str) -> str:
    """The lm-eval multiple-choice prompt, ending in ``"Answer:"``."""
    lines = [
        f"The following are multiple choice questions (with answers) about {subject}.",
        "",
        question.strip(),
        *(f"{LETTERS[i]}. {c.strip()}" for i, c in enumerate(choices)),
        "Answer:",
    ]
    return "\n".join(lines)


def wmdp_examples(rows: Sequence[Row], subject: str, rng: random.Random) -> list[Example]:
    """One example per row; the corrupted prompt shifts the choices so the answer's letter moves.

    Rows whose answer text would stay under the same letter for every shift (duplicated choice
    texts) are skipped.
    """
    out = []
    for row in rows:
        choices = [str(c) for c in row["choices"]]
        answer = int(row["answer"])
        k = len(choices)
        if not 2 <= k <= len(LETTERS) or not 0 <= answer < k:
            continue
        shifts = [s for s in range(1, k) if choices[(answer + s) % k] != choices[answer]]
        if not shifts:
            continue
        shift = rng.choice(shifts)
        # position i of the corrupted prompt shows choice i + shift: the correct text moves to
        # letter answer - shift, and the correct letter now shows another text.
        permuted = [choices[(i + shift) % k] for i in range(k)]
        clean = wmdp_prompt(row["question"], choices, subject)
        out.append(
            Example(
                clean=clean,
                corrupted=wmdp_prompt(row["question"], permuted, subject),
                choices=tuple(" " + LETTERS[i] for i in range(k)),
                good=tuple(i == answer for i in range(k)),
                text=f"{clean} {LETTERS[answer]}. {choices[answer].strip()}",
            )
        )
    return out


def load_wmdp(
    model_or_tokenizer,
    n: int = 32,
    n_eval: int | None = None,
    seed: int = 0,
    *,
    subset: str = "cyber",
    path: str | os.PathLike | None = None,
    split: str = "test",
    max_rows: int | None = DEFAULT_MAX_ROWS,
) -> Task:
    """WMDP multiple choice (``subset`` ``"cyber"`` or ``"bio"``) as a four-way letter task."""
    source = {"cyber": WMDP_CYBER, "bio": WMDP_BIO}.get(subset)
    if source is None:
        raise ValueError(f"unknown WMDP subset {subset!r}; use 'cyber' or 'bio'")
    name = f"wmdp_{subset}"
    rng = random.Random(f"{name}:{seed}")
    rows = _shuffled(load_rows(source, split, path), rng, max_rows)
    assert source.config is not None
    examples = wmdp_examples(rows, WMDP_SUBJECTS[source.config], rng)
    description = f"WMDP-{subset} multiple choice ({source.hub_id}), choices shifted to corrupt"
    return _finish(
        name, description, examples, _tokenizer(model_or_tokenizer), n, n_eval,
        seed=seed, source=str(path or source.hub_id), split=split, rows=len(rows),
    )  # fmt: skip


def load_wmdp_cyber(
    model_or_tokenizer,
    n: int = 32,
    n_eval: int | None = None,
    seed: int = 0,
    *,
    path: str | os.PathLike | None = None,
    split: str = "test",
    max_rows: int | None = DEFAULT_MAX_ROWS,
) -> Task:
    """WMDP-cyber (``cais/wmdp``, config ``wmdp-cyber``); see ``load_wmdp``."""
    return load_wmdp(
        model_or_tokenizer, n, n_eval, seed, subset="cyber", path=path, split=split,
        max_rows=max_rows,
    )  # fmt: skip


def load_wmdp_bio(
    model_or_tokenizer,
    n: int = 32,
    n_eval: int | None = None,
    seed: int = 0,
    *,
    path: str | os.PathLike | None = None,
    split: str = "test",
    max_rows: int | None = DEFAULT_MAX_ROWS,
) -> Task:
    """WMDP-bio (``cais/wmdp``, config ``wmdp-bio``); see ``load_wmdp``."""
    return load_wmdp(
        model_or_tokenizer, n, n_eval, seed, subset="bio", path=path, split=split,
        max_rows=max_rows,
    )  # fmt: skip


# --------------------------------------------------------------------------- SST-2 and RTE


@dataclass(frozen=True)
class Labeled:
    """A prompt with a binary label, before pairing."""

    prompt: str
    label: int


def opposite_label_examples(
    items: Sequence[Labeled],
    answers: tuple[str, str],
    tokenizer,
    rng: random.Random,
) -> tuple[list[Example], int]:
    """Pair each prompt with a random prompt of the other label and the same token length.

    Only the token length with the most pairs (the largest ``min(#label 0, #label 1)``) is used,
    since a task has one prompt length. Labels alternate as long as both last, so the attribution
    and eval splits are balanced where the data allow. ``answers[label]`` is the answer of a
    label; choices are (correct, other). Returns the examples and the chosen length (0 if none).
    """
    buckets: dict[int, tuple[list[Labeled], list[Labeled]]] = defaultdict(lambda: ([], []))
    for item, length in zip(items, _lengths(tokenizer, [i.prompt for i in items]), strict=True):
        if item.label in (0, 1):
            buckets[length][item.label].append(item)
    usable = {k: v for k, v in buckets.items() if v[0] and v[1]}
    if not usable:
        return [], 0
    length = max(usable, key=lambda k: (min(map(len, usable[k])), sum(map(len, usable[k])), -k))
    groups = usable[length]
    out = []
    for item in _interleave(*groups):
        partner = rng.choice(groups[1 - item.label])
        out.append(
            Example(
                clean=item.prompt,
                corrupted=partner.prompt,
                choices=(answers[item.label], answers[1 - item.label]),
                good=(True, False),
            )
        )
    return out, length


def _interleave(first: list[Labeled], second: list[Labeled]) -> list[Labeled]:
    out = []
    for i in range(max(len(first), len(second))):
        out += [g[i] for g in (first, second) if i < len(g)]
    return out


def _binary_task(
    name: str,
    description: str,
    items: list[Labeled],
    answers: tuple[str, str],
    model_or_tokenizer,
    n: int,
    n_eval: int | None,
    rng: random.Random,
    **info: Any,
) -> Task:
    tokenizer = _tokenizer(model_or_tokenizer)
    examples, length = opposite_label_examples(items, answers, tokenizer, rng)
    return _finish(name, description, examples, tokenizer, n, n_eval, length=length, **info)


def load_sst2(
    model_or_tokenizer,
    n: int = 32,
    n_eval: int | None = None,
    seed: int = 0,
    *,
    path: str | os.PathLike | None = None,
    split: str = "train",
    max_rows: int | None = DEFAULT_MAX_ROWS,
) -> Task:
    """SST-2 sentiment; the corrupted prompt is a review of the other label, same length."""
    rng = random.Random(f"sst2:{seed}")
    rows = _shuffled(load_rows(SST2, split, path), rng, max_rows)
    items = [
        Labeled(SST2_TEMPLATE.format(sentence=str(r["sentence"]).strip()), int(r["label"]))
        for r in rows
    ]
    return _binary_task(
        "sst2", "SST-2 sentiment, paired with a same-length review of the other label",
        items, SST2_ANSWERS, model_or_tokenizer, n, n_eval, rng,
        seed=seed, source=str(path or SST2.hub_id), split=split, rows=len(rows),
    )  # fmt: skip


def rte_prompt(sentence1: str, sentence2: str) -> str:
    return RTE_TEMPLATE.format(sentence1=sentence1.strip(), sentence2=sentence2.strip())


def load_rte(
    model_or_tokenizer,
    n: int = 32,
    n_eval: int | None = None,
    seed: int = 0,
    *,
    path: str | os.PathLike | None = None,
    split: str = "train",
    max_rows: int | None = DEFAULT_MAX_ROWS,
) -> Task:
    """RTE entailment (GLUE); the corrupted prompt is a pair of the other label, same length."""
    rng = random.Random(f"rte:{seed}")
    rows = _shuffled(load_rows(RTE, split, path), rng, max_rows)
    items = [Labeled(rte_prompt(r["sentence1"], r["sentence2"]), int(r["label"])) for r in rows]
    return _binary_task(
        "rte", "RTE entailment (yes/no), paired with a same-length pair of the other label",
        items, RTE_ANSWERS, model_or_tokenizer, n, n_eval, rng,
        seed=seed, source=str(path or RTE.hub_id), split=split, rows=len(rows),
    )  # fmt: skip


# --------------------------------------------------------------------------- Winogrande


def winogrande_prompt(sentence: str) -> str:
    return WINOGRANDE_TEMPLATE.format(sentence=sentence.strip())


def swap_options(sentence: str, a: str, b: str) -> str | None:
    """``sentence`` with every whole-word ``a`` and ``b`` exchanged; None unless both occur."""
    if not a or not b or a == b or a in b or b in a:
        return None
    pattern = re.compile(rf"\b(?:{re.escape(a)}|{re.escape(b)})\b")
    found = {m.group(0) for m in pattern.finditer(sentence)}
    if found != {a, b}:
        return None
    return pattern.sub(lambda m: b if m.group(0) == a else a, sentence)


def winogrande_examples(
    rows: Sequence[Row], tokenizer, corruption: str = "auto", limit: int | None = None
) -> tuple[list[Example], Counter]:
    """Cloze examples from the first ``limit`` usable rows (twins are looked up among all).

    See the module docstring for the corruptions. Also returns how many rows got each kind.
    """
    if corruption not in ("auto", "swap", "twin"):
        raise ValueError(f"corruption must be 'auto', 'swap' or 'twin', not {corruption!r}")
    valid = [r for r in rows if _wg_answer(r) in (1, 2) and "_" in r["sentence"]]
    by_options: dict[frozenset[str], list[Row]] = defaultdict(list)
    for r in valid:
        by_options[frozenset((r["option1"], r["option2"]))].append(r)
    kinds: Counter = Counter()
    out = []
    for r in valid[:limit]:
        options = (str(r["option1"]).strip(), str(r["option2"]).strip())
        good = _wg_answer(r) - 1
        clean = winogrande_prompt(r["sentence"])
        corrupted, kind = _winogrande_corruption(r, clean, by_options, tokenizer, corruption)
        kinds[kind] += 1
        if corrupted is None:
            continue
        out.append(
            Example(
                clean=clean,
                corrupted=corrupted,
                choices=(" " + options[good], " " + options[1 - good]),
                good=(True, False),
                text=r["sentence"].strip().replace("_", options[good], 1),
            )
        )
    return out, kinds


def _wg_answer(row: Row) -> int:
    answer = str(row["answer"]).strip()
    return int(answer) if answer in ("1", "2") else 0


def _wg_correct(row: Row) -> str:
    return str(row[f"option{_wg_answer(row)}"])


def _winogrande_corruption(
    row: Row,
    clean: str,
    by_options: dict[frozenset[str], list[Row]],
    tokenizer,
    corruption: str,
) -> tuple[str | None, str]:
    (clean_len,) = _lengths(tokenizer, [clean])
    if corruption in ("auto", "swap"):
        swapped = swap_options(row["sentence"], str(row["option1"]), str(row["option2"]))
        if swapped is not None:
            prompt = winogrande_prompt(swapped)
            if _lengths(tokenizer, [prompt]) == [clean_len]:
                return prompt, "swap"
    if corruption in ("auto", "twin"):
        twins = [
            winogrande_prompt(t["sentence"])
            for t in by_options[frozenset((row["option1"], row["option2"]))]
            if t["sentence"] != row["sentence"]
            # same options, other answer (options may be listed in the other order)
            and _wg_correct(t) != _wg_correct(row)
        ]
        for prompt, length in zip(twins, _lengths(tokenizer, twins), strict=True):
            if length == clean_len:
                return prompt, "twin"
    return None, "none"


def load_winogrande(
    model_or_tokenizer,
    n: int = 32,
    n_eval: int | None = None,
    seed: int = 0,
    *,
    path: str | os.PathLike | None = None,
    split: str = "train",
    config: str = "winogrande_xl",
    corruption: str = "auto",
    max_rows: int | None = DEFAULT_MAX_ROWS,
) -> Task:
    """Winogrande as a two-way cloze; the corruption flips the answer (see module docstring)."""
    rng = random.Random(f"winogrande:{seed}")
    source = HubSource(WINOGRANDE.hub_id, config, WINOGRANDE.fields)
    rows = load_rows(source, split, path)
    tokenizer = _tokenizer(model_or_tokenizer)
    examples, kinds = winogrande_examples(
        _shuffled(rows, rng, None), tokenizer, corruption, limit=max_rows
    )
    return _finish(
        "winogrande", f"Winogrande cloze ({corruption} corruption flips the answer)",
        examples, tokenizer, n, n_eval,
        seed=seed, source=str(path or source.hub_id), split=split, rows=len(rows),
        corruptions=dict(kinds),
    )  # fmt: skip


# --------------------------------------------------------------------------- PKU-SafeRLHF


def load_pku_saferlhf_text(
    path: str | os.PathLike | None = None,
    n: int = 256,
    seed: int = 0,
    *,
    split: str = "train",
) -> tuple[list[str], list[str]]:
    """``(forget_texts, retain_texts)``: up to ``n`` unsafe and ``n`` safe responses.

    Both responses of every row are used, each labelled by its own ``is_response_{i}_safe``;
    texts are ``"Question: {prompt}\\nAnswer: {response}"``, deduplicated, in a seeded order.
    """
    rng = random.Random(f"pku_saferlhf:{seed}")
    rows = _shuffled(load_rows(PKU_SAFERLHF, split, path), rng, None)
    forget: list[str] = []
    retain: list[str] = []
    seen: set[str] = set()
    for row in rows:
        for i in (0, 1):
            text = PKU_TEMPLATE.format(
                prompt=str(row["prompt"]).strip(), response=str(row[f"response_{i}"]).strip()
            )
            if text in seen:
                continue
            seen.add(text)
            (retain if bool(row[f"is_response_{i}_safe"]) else forget).append(text)
    return forget[:n], retain[:n]


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class DatasetTask:
    """A registry entry: ``load(model, n, n_eval, seed, path=..., split=...) -> Task``."""

    name: str
    description: str
    hub_id: str
    load: Callable[..., Task]


DATASET_TASKS: dict[str, DatasetTask] = {
    spec.name: spec
    for spec in [
        DatasetTask("wmdp_cyber", "WMDP-cyber multiple choice", "cais/wmdp", load_wmdp_cyber),
        DatasetTask("wmdp_bio", "WMDP-bio multiple choice", "cais/wmdp", load_wmdp_bio),
        DatasetTask("sst2", "SST-2 sentiment (positive/negative)", SST2.hub_id, load_sst2),
        DatasetTask("rte", "RTE textual entailment (yes/no)", RTE.hub_id, load_rte),
        DatasetTask("winogrande", "Winogrande cloze", WINOGRANDE.hub_id, load_winogrande),
    ]
}


__all__ = [
    "DATASET_TASKS",
    "DatasetTask",
    "DatasetUnavailableError",
    "HubSource",
    "load_pku_saferlhf_text",
    "load_rows",
    "load_rte",
    "load_sst2",
    "load_winogrande",
    "load_wmdp",
    "load_wmdp_bio",
    "load_wmdp_cyber",
    "offline",
]
