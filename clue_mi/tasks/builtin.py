"""Built-in tasks, generated locally and deterministically from a seed.

Each generator returns a list of ``Example`` candidates (more than needed: ``build_task`` drops
pairs of unequal token length). Answers carry their leading space, as the model would write them.
"""

from __future__ import annotations

import json
import random
from importlib import resources

from clue_mi.tasks.base import Example

# Countries whose capital a 135M model knows, each capital a distinct first token.
CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid",
    "Japan": "Tokyo", "Russia": "Moscow", "England": "London", "China": "Beijing",
    "Egypt": "Cairo", "Greece": "Athens", "Austria": "Vienna", "Portugal": "Lisbon",
    "Ireland": "Dublin", "Norway": "Oslo", "Sweden": "Stockholm", "Poland": "Warsaw",
    "Hungary": "Budapest", "Thailand": "Bangkok", "Kenya": "Nairobi", "Peru": "Lima",
    "Cuba": "Havana", "Turkey": "Ankara", "Iran": "Tehran", "Iraq": "Baghdad",
    "Syria": "Damascus", "Lebanon": "Beirut", "Finland": "Helsinki", "Denmark": "Copenhagen",
    "Belgium": "Brussels", "Netherlands": "Amsterdam", "Canada": "Ottawa",
    "Australia": "Canberra", "Argentina": "Buenos", "Chile": "Santiago", "Colombia": "Bogot",
    "Venezuela": "Caracas", "Mexico": "Mexico", "India": "New", "Pakistan": "Islamabad",
    "Indonesia": "Jakarta", "Philippines": "Manila", "Vietnam": "Hanoi",
    "South Korea": "Seoul", "Ukraine": "Kyiv", "Romania": "Bucharest", "Czechia": "Prague",
    "Scotland": "Edinburgh", "Wales": "Cardiff", "Israel": "Jerusalem", "Nigeria": "Abuja",
    "Morocco": "Rabat", "Ethiopia": "Addis", "Afghanistan": "Kabul", "Nepal": "Kathmandu",
    "Switzerland": "Bern", "Serbia": "Belgrade", "Bulgaria": "Sofia", "Croatia": "Zagreb",
}  # fmt: skip
# Templates of one token length (8 with a one-token country), so all land in one prompt set.
CAPITAL_TEMPLATES = [
    "The capital of {} is the city of",
    "The largest city and capital of {} is",
    "I know that the capital of {} is",
]
# Held-out phrasings (DESIGN.md §9): never used for attribution, training or the eval split. FE
# on them tells forgetting a fact from forgetting one way of asking for it.
CAPITAL_HELDOUT_TEMPLATES = [
    "Everyone knows that the capital of {} is",
    "Fact: the capital city of {} is",
    "The seat of the government of {} is",
]

NAMES = [
    "Mary", "John", "Tom", "Kate", "James", "Anna", "David", "Sarah", "Paul", "Emma",
    "Mark", "Lisa", "Peter", "Laura", "Michael", "Alice", "Robert", "Susan", "Daniel", "Helen",
]  # fmt: skip
FEMALE = {"Mary", "Kate", "Anna", "Sarah", "Emma", "Lisa", "Laura", "Alice", "Susan", "Helen"}
IOI_TEMPLATES = [
    "When{A} and{B} went to the store,{B} gave a drink to",
    "When{A} and{B} went to the park,{B} gave a ball to",
    "After{A} and{B} went to the office,{B} handed a letter to",
    "Then,{A} and{B} had a long argument, and afterwards{B} said to",
    "While{A} and{B} were working at the school,{B} gave a book to",
]
# The name sits mid-sentence: with a leading space each name is one token, so pairs align.
GENDER_TEMPLATES = [
    "When {N} woke up,",
    "After {N} finished work,",
    "Because {N} was hungry,",
    "When {N} got home,",
    "Yesterday {N} said that",
    "Later that day {N} realized that",
]
INDUCTION_WORDS = (
    "apple river stone cloud table green music paper horse light window garden bottle chair "
    "silver forest winter doctor market engine planet summer castle pencil rabbit ocean bridge "
    "candle mirror island pocket ladder basket jacket wallet carpet pillow hammer violin tiger"
).split()
GT_NOUNS = ["war", "expedition", "drought", "strike", "siege", "famine", "reign", "project"]


def capitals(rng: random.Random, count: int) -> list[Example]:
    """Country -> capital recall; the corrupted prompt names another country."""
    countries = list(CAPITALS)
    out = []
    for _ in range(count):
        country, other = rng.sample(countries, 2)
        template = rng.choice(CAPITAL_TEMPLATES)
        distractors = rng.sample([c for c in countries if c not in (country, other)], 2)
        choices = [CAPITALS[c] for c in (country, other, *distractors)]
        out.append(
            Example(
                clean=template.format(country),
                corrupted=template.format(other),
                choices=tuple(" " + c for c in choices),
                good=(True, False, False, False),
                text=f"{template.format(country)} {_full_capital(country)}.",
            )
        )
    return out


def capital_country(prompt: str) -> str | None:
    """The country a capitals prompt (in a trained template) asks about, or None."""
    for template in CAPITAL_TEMPLATES:
        head, tail = template.split("{}")
        if prompt.startswith(head) and prompt.endswith(tail):
            country = prompt[len(head) : len(prompt) - len(tail)]
            if country in CAPITALS:
                return country
    return None


def capitals_rephrase(clean: str, corrupted: str, sentence: str) -> list[tuple[str, str, str]]:
    """A capitals question (clean, corrupted, sentence) in every held-out phrasing."""
    country, other = capital_country(clean), capital_country(corrupted)
    if country is None or other is None:
        return []
    return [
        (t.format(country), t.format(other), f"{t.format(country)} {_full_capital(country)}.")
        for t in CAPITAL_HELDOUT_TEMPLATES
    ]


def _full_capital(country: str) -> str:
    full = {"Argentina": "Buenos Aires", "Colombia": "Bogota", "Mexico": "Mexico City",
            "India": "New Delhi", "Ethiopia": "Addis Ababa"}  # fmt: skip
    return full.get(country, CAPITALS[country])


def ioi(rng: random.Random, count: int) -> list[Example]:
    """Indirect object identification; corruption replaces the second subject by a third name."""
    out = []
    for _ in range(count):
        a, b, c = rng.sample(NAMES, 3)
        template = rng.choice(IOI_TEMPLATES)
        clean = template.replace("{A}", " " + a).replace("{B}", " " + b)
        # ABC corruption (as in EAP-IG): the repeated name no longer points at the IO.
        head, tail = clean.rsplit(" " + b, 1)
        corrupted = head + " " + c + tail
        out.append(Example(clean, corrupted, (" " + a, " " + b), (True, False)))
    return out


def greater_than(rng: random.Random, count: int) -> list[Example]:
    """'from the year 1732 to the year 17' -> a tens digit of at least 3.

    The model's digits are single tokens, so the answer is the next digit: the end year is later
    than the start year only if its tens digit is at least the start's (equal is possible, e.g.
    1732 -> 1738). Choices are all ten digits; correct ones are those >= the start's tens digit.
    Corruption: start year 'XX01', which makes every tens digit plausible.
    """
    out = []
    for _ in range(count):
        century = rng.randint(11, 19)
        tens, units = rng.randint(2, 7), rng.randint(0, 9)
        noun = rng.choice(GT_NOUNS)
        template = "The {} lasted from the year {}{} to the year {}"
        clean = template.format(noun, century, f"{tens}{units}", century)
        corrupted = template.format(noun, century, "01", century)
        digits = tuple(str(d) for d in range(10))
        out.append(
            Example(
                clean,
                corrupted,
                digits,
                tuple(d >= tens for d in range(10)),
                text=clean + str(rng.randint(tens + 1, 9)) + str(rng.randint(0, 9)) + ".",
            )
        )
    return out


def gender(rng: random.Random, count: int) -> list[Example]:
    """Pronoun after a gendered name; the corrupted prompt has a name of the other gender."""
    female, male = sorted(FEMALE), sorted(set(NAMES) - FEMALE)
    out = []
    for _ in range(count):
        is_female = rng.random() < 0.5
        name = rng.choice(female if is_female else male)
        other = rng.choice(male if is_female else female)
        template = rng.choice(GENDER_TEMPLATES)
        answers = (" she", " he") if is_female else (" he", " she")
        out.append(
            Example(template.format(N=name), template.format(N=other), answers, (True, False))
        )
    return out


def induction(rng: random.Random, count: int, length: int = 8, prefix: int = 6) -> list[Example]:
    """A random word sequence repeated; predict the next word of the repeat.

    Corruption replaces the first occurrence by fresh words, so nothing earlier predicts the
    answer. The wrong choice is one of those fresh words (it never occurs in the clean prompt).
    """
    out = []
    for _ in range(count):
        words = rng.sample(INDUCTION_WORDS, 2 * length)
        seq, fresh = words[:length], words[length:]
        clean = " ".join(seq + seq[:prefix])
        corrupted = " ".join(fresh + seq[:prefix])
        answer = seq[prefix]
        wrong = rng.choice(fresh)
        out.append(
            Example(
                clean,
                corrupted,
                (" " + answer, " " + wrong),
                (True, False),
                text=" ".join(seq + seq),
            )
        )
    return out


BOOL_SHOTS = (
    "True and False is False\nFalse or True is True\nTrue and True is True\n"
    "False or False is False\n"
)
ARITHMETIC_SHOTS = "1 + 2 = 3\n4 + 4 = 8\n5 + 1 = 6\n"
BOOL_OPS = {"and": lambda x, y: x and y, "or": lambda x, y: x or y}


def boolean(rng: random.Random, count: int) -> list[Example]:
    """Boolean expressions after four worked examples: 'True or not False is' -> ' True'.

    Without the few-shot prefix the 135M model is at chance. Corruption flips the operand that
    changes the result.
    """
    out = []
    for _ in range(count):
        x, y, op = rng.random() < 0.5, rng.random() < 0.5, rng.choice(list(BOOL_OPS))
        # One 'not', on the left or the right operand: 16 expressions, all of one token length.
        left = rng.random() < 0.5
        value = BOOL_OPS[op](x != left, y == left)
        fx, fy = (not x, y) if BOOL_OPS[op]((not x) != left, y == left) != value else (x, not y)
        out.append(
            Example(
                _bool_prompt(fx=x, fy=y, op=op, left=left),
                _bool_prompt(fx=fx, fy=fy, op=op, left=left),
                (f" {value}", f" {not value}"),
                (True, False),
            )
        )
    return out


def _bool_prompt(fx: bool, fy: bool, op: str, left: bool) -> str:
    expr = f"not {fx} {op} {fy}" if left else f"{fx} {op} not {fy}"
    return f"{BOOL_SHOTS}{expr} is"


def arithmetic(rng: random.Random, count: int) -> list[Example]:
    """Single-digit sums below ten after three worked examples: '3 + 4 = ' -> '7'.

    Corruption changes the first operand. The prompt ends with the space token, because the
    tokenizer writes ' 7' as (' ', '7').
    """
    out = []
    for _ in range(count):
        a, b = rng.randint(0, 8), rng.randint(0, 8)
        while a + b > 9:
            a, b = rng.randint(0, 8), rng.randint(0, 8)
        c = rng.choice([v for v in range(10 - b) if v != a])
        out.append(
            Example(
                f"{ARITHMETIC_SHOTS}{a} + {b} = ",
                f"{ARITHMETIC_SHOTS}{c} + {b} = ",
                (str(a + b), str(c + b)),
                (True, False),
            )
        )
    return out


def sentiment(rng: random.Random, count: int) -> list[Example]:
    """Short movie reviews from a shipped sample; corruption swaps the opinion word."""
    rows = json.loads(resources.files("clue_mi.tasks").joinpath("data/sentiment.json").read_text())
    out = []
    for _ in range(count):
        row = rng.choice(rows)
        pos, neg = row["positive"], row["negative"]
        if rng.random() < 0.5:
            review, other, answers = pos, neg, (" positive", " negative")
        else:
            review, other, answers = neg, pos, (" negative", " positive")
        template = "Review: {}\nSentiment:"
        out.append(Example(template.format(review), template.format(other), answers, (True, False)))
    return out
