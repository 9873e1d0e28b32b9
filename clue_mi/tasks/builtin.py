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
CAPITAL_TEMPLATES = ["The capital of {} is", "The capital city of {} is"]

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
GENDER_TEMPLATES = [
    "{N} went to the store because",
    "{N} was late for work because",
    "{N} called the doctor because",
    "{N} stayed at home today because",
    "{N} could not sleep last night because",
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
    """'from the year 1732 to the year 17' -> a tens digit greater than 3.

    The model's digits are single tokens, so the answer is the next digit. Choices are all ten
    digits; correct ones are those greater than the start year's tens digit. Corruption: '01'.
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
                tuple(d > tens for d in range(10)),
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


def induction(rng: random.Random, count: int, length: int = 8, prefix: int = 4) -> list[Example]:
    """A random word sequence repeated; predict the next word of the repeat.

    Corruption replaces the first occurrence, so nothing earlier predicts the answer. The wrong
    choice is a word that occurred in the clean sequence too, so only induction separates them.
    """
    out = []
    for _ in range(count):
        words = rng.sample(INDUCTION_WORDS, 2 * length)
        seq, fresh = words[:length], words[length:]
        clean = " ".join(seq + seq[:prefix])
        corrupted = " ".join(fresh + seq[:prefix])
        answer = seq[prefix]
        wrong = rng.choice([w for w in seq if w not in (answer, seq[prefix - 1])])
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


def boolean(rng: random.Random, count: int) -> list[Example]:
    """Boolean expressions: 'True and not False is' -> ' True'; corruption flips one operand."""
    ops = {"and": lambda x, y: x and y, "or": lambda x, y: x or y}
    out = []
    for _ in range(count):
        x, y = rng.random() < 0.5, rng.random() < 0.5
        op = rng.choice(list(ops))
        neg = rng.random() < 0.5

        def expr(x: bool, y: bool) -> tuple[str, bool]:
            right = f"not {y}" if neg else str(y)
            return f"{x} {op} {right} is", ops[op](x, (not y) if neg else y)

        clean, value = expr(x, y)
        # flip the operand that changes the result (one always does for and/or)
        for fx, fy in ((not x, y), (x, not y)):
            corrupted, cvalue = expr(fx, fy)
            if cvalue != value:
                break
        out.append(Example(clean, corrupted, (f" {value}", f" {not value}"), (True, False)))
    return out


def arithmetic(rng: random.Random, count: int) -> list[Example]:
    """Single-digit sums below ten: '3 + 4 =' -> ' 7'; corruption changes the first operand."""
    out = []
    for _ in range(count):
        a, b = rng.randint(0, 8), rng.randint(0, 8)
        while a + b > 9:
            a, b = rng.randint(0, 8), rng.randint(0, 8)
        c = rng.choice([v for v in range(10 - b) if v != a])
        # The digit follows a space token (' ', '7'), so the prompt ends with that space.
        out.append(
            Example(
                f"{a} + {b} = ",
                f"{c} + {b} = ",
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
