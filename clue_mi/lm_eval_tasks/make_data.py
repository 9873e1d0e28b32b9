"""Generate the offline general-utility tasks (JSONL) shipped with clue_mi.

Run ``python -m clue_mi.lm_eval_tasks.make_data`` to rewrite ``data/*.jsonl``; the output is
deterministic (fixed seed), so a re-run reproduces the committed files byte for byte.

Small multiple-choice tasks of everyday knowledge, none of them among clue_mi's training
tasks (capitals, IOI, greater-than, gendered pronouns, induction, boolean, arithmetic,
sentiment):

* ``antonyms``: "What is the opposite of "hot"?" -> cold, among 4 words (chance 0.25); 100 of
  the 210 word/direction items, to keep a CPU run short.
* ``colors``: "What color is a banana?" -> yellow, among 4 colours (chance 0.25).
* ``past_tense``: "What is the past tense of "go"?" -> went, among 4 irregular past forms
  (chance 0.25).
* ``sizes``: "Which is bigger/smaller, an ant or a horse?" (chance 0.5). The two objects come
  from size tiers at least two apart, so every item has one clear answer; half the questions
  ask for the smaller one, so preferring big words scores at chance. Not a default GU task:
  SmolLM2-135M scores at chance on it (0.51), so it carries no utility signal for that model;
  it is kept for larger models (``general_utility(tasks=["clue_sizes"])``).
* ``animals``: animal sounds, young, homes and groups (4 choices of the same kind, chance 0.25).

Each line: ``{"question": str, "choices": [str, ...], "answer": int}``. Choices carry no leading
space (lm-eval's ``target_delimiter`` adds it).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SEED = 20260101
DATA_DIR = Path(__file__).parent / "data"

ANTONYMS = [
    ("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("happy", "sad"),
    ("open", "closed"), ("light", "dark"), ("young", "old"), ("rich", "poor"),
    ("strong", "weak"), ("hard", "soft"), ("wet", "dry"), ("early", "late"), ("long", "short"),
    ("high", "low"), ("full", "empty"), ("loud", "quiet"), ("thick", "thin"), ("push", "pull"),
    ("win", "lose"), ("buy", "sell"), ("give", "take"), ("left", "right"),
    ("inside", "outside"), ("above", "below"), ("before", "after"), ("day", "night"),
    ("black", "white"), ("good", "bad"), ("true", "false"), ("yes", "no"), ("clean", "dirty"),
    ("sharp", "dull"), ("smooth", "rough"), ("sweet", "sour"), ("wide", "narrow"),
    ("deep", "shallow"), ("near", "far"), ("first", "last"), ("start", "finish"),
    ("love", "hate"), ("friend", "enemy"), ("war", "peace"), ("question", "answer"),
    ("north", "south"), ("east", "west"), ("cheap", "expensive"), ("safe", "dangerous"),
    ("easy", "difficult"), ("awake", "asleep"), ("alive", "dead"), ("king", "queen"),
    ("boy", "girl"), ("man", "woman"), ("brother", "sister"), ("father", "mother"),
    ("husband", "wife"), ("always", "never"), ("everything", "nothing"), ("arrive", "leave"),
    ("enter", "exit"), ("increase", "decrease"), ("maximum", "minimum"),
    ("positive", "negative"), ("victory", "defeat"), ("success", "failure"),
    ("ancient", "modern"), ("beautiful", "ugly"), ("polite", "rude"), ("kind", "cruel"),
    ("wild", "tame"), ("raw", "cooked"), ("laugh", "cry"), ("remember", "forget"),
    ("attack", "defend"), ("import", "export"), ("major", "minor"), ("innocent", "guilty"),
    ("private", "public"), ("rural", "urban"), ("vertical", "horizontal"),
    ("summer", "winter"), ("floor", "ceiling"), ("top", "bottom"), ("front", "back"),
    ("wise", "foolish"), ("fresh", "stale"), ("sick", "healthy"), ("on", "off"),
    ("in", "out"), ("over", "under"), ("tight", "loose"), ("float", "sink"),
    ("sit", "stand"), ("send", "receive"), ("parent", "child"), ("noise", "silence"),
    ("dawn", "dusk"), ("simple", "complex"), ("present", "absent"), ("shout", "whisper"),
    ("heaven", "hell"), ("teacher", "student"), ("morning", "evening"), ("odd", "even"),
]  # fmt: skip

COLORS = {
    "yellow": ["a banana", "a lemon", "butter", "a school bus", "a canary", "an egg yolk",
               "a sunflower", "a taxi in New York", "mustard", "a ripe pineapple's flesh"],
    "green": ["grass", "a leaf in summer", "a lime", "a frog", "a cucumber", "broccoli",
              "an emerald", "a pea", "lettuce", "a cactus", "spinach"],
    "blue": ["the sky on a sunny day", "the ocean", "a sapphire", "a blueberry", "a bluebird",
             "a pair of jeans"],
    "white": ["snow", "milk", "a cloud", "sugar", "chalk", "a swan", "a tooth", "rice",
              "cotton", "a polar bear", "salt", "a wedding dress"],
    "black": ["coal", "a crow", "ink", "a raven", "tar", "the night sky", "a black cat",
              "a panther", "licorice"],
    "red": ["blood", "a tomato", "a strawberry", "a cherry", "a fire truck", "a ruby",
            "a stop sign", "a cooked lobster", "a ladybug", "a rose", "a chili pepper"],
    "orange": ["an orange", "a carrot", "a pumpkin", "a tangerine", "a goldfish",
               "a basketball", "an apricot"],
    "brown": ["chocolate", "coffee", "a grizzly bear", "soil", "cinnamon", "an acorn",
              "a chestnut", "a wooden table", "a potato skin"],
    "pink": ["a flamingo", "a pig", "bubblegum", "cotton candy", "a piglet's nose"],
    "purple": ["a grape", "an eggplant", "a plum", "lavender", "an amethyst", "a violet"],
    "gray": ["an elephant", "ash", "cement", "a rhinoceros", "a storm cloud", "a dolphin",
             "a koala"],
}  # fmt: skip
COLOR_TEMPLATES = ["What color is {}?", "What is the usual color of {}?"]

# Objects by size tier; pairs are drawn only from tiers at least two apart.
SIZE_TIERS = [
    ["an ant", "a grain of sand", "a flea", "a bee", "a mosquito", "a ladybug", "a seed",
     "a pea", "a button", "a crumb"],
    ["a mouse", "an apple", "a pencil", "a phone", "a cup", "a key", "an egg", "a spoon",
     "a coin", "a banana"],
    ["a dog", "a chair", "a bicycle", "a guitar", "a sheep", "a suitcase", "a television",
     "a child", "a table", "a piano"],
    ["a horse", "a car", "a cow", "a camel", "a sofa", "a boat", "a giraffe", "a van"],
    ["an elephant", "a bus", "a truck", "a house", "a whale", "an airplane", "a church",
     "a train"],
    ["a mountain", "a city", "an island", "a country", "a lake", "a forest", "a desert"],
]  # fmt: skip
N_SIZES = 160
N_ANTONYMS = 100

IRREGULAR_VERBS = {
    "go": "went", "eat": "ate", "see": "saw", "take": "took", "give": "gave", "come": "came",
    "run": "ran", "write": "wrote", "drink": "drank", "sing": "sang", "swim": "swam",
    "begin": "began", "ring": "rang", "sink": "sank", "speak": "spoke", "break": "broke",
    "choose": "chose", "freeze": "froze", "steal": "stole", "wake": "woke", "drive": "drove",
    "ride": "rode", "rise": "rose", "fly": "flew", "grow": "grew", "know": "knew",
    "throw": "threw", "blow": "blew", "draw": "drew", "fall": "fell", "forget": "forgot",
    "get": "got", "tell": "told", "sell": "sold", "buy": "bought", "bring": "brought",
    "think": "thought", "fight": "fought", "catch": "caught", "teach": "taught",
    "seek": "sought", "find": "found", "hold": "held", "stand": "stood", "sit": "sat",
    "meet": "met", "feed": "fed", "lead": "led", "leave": "left", "feel": "felt",
    "keep": "kept", "sleep": "slept", "sweep": "swept", "weep": "wept", "mean": "meant",
    "send": "sent", "spend": "spent", "build": "built", "lend": "lent", "lose": "lost",
    "make": "made", "pay": "paid", "say": "said", "hear": "heard", "have": "had", "do": "did",
    "win": "won", "dig": "dug", "stick": "stuck", "swing": "swung", "strike": "struck",
    "shoot": "shot", "slide": "slid", "bite": "bit", "hide": "hid", "shake": "shook",
    "forgive": "forgave", "tear": "tore", "wear": "wore", "swear": "swore", "spin": "spun",
    "sting": "stung", "stink": "stank", "spring": "sprang", "flee": "fled", "bleed": "bled",
    "slay": "slew", "become": "became", "arise": "arose", "understand": "understood",
}  # fmt: skip

ANIMALS = {
    "sound": ("What sound does {} make?", {
        "a cow": "moo", "a dog": "bark", "a cat": "meow", "a sheep": "baa", "a pig": "oink",
        "a duck": "quack", "a horse": "neigh", "a lion": "roar", "a snake": "hiss",
        "an owl": "hoot", "a bee": "buzz", "a frog": "croak", "a donkey": "bray",
        "a mouse": "squeak", "a wolf": "howl", "a bird": "chirp", "a turkey": "gobble",
        "a hen": "cluck", "a dove": "coo", "a crow": "caw", "an elephant": "trumpet",
    }),
    "young": ("What is a baby {} called?", {
        "cow": "calf", "dog": "puppy", "cat": "kitten", "sheep": "lamb", "horse": "foal",
        "goat": "kid", "pig": "piglet", "duck": "duckling", "frog": "tadpole",
        "kangaroo": "joey", "bear": "cub", "deer": "fawn", "swan": "cygnet",
        "goose": "gosling", "hen": "chick", "owl": "owlet", "butterfly": "caterpillar",
        "eagle": "eaglet", "seal": "pup",
    }),
    "home": ("Where does {} live?", {
        "a bee": "hive", "a bird": "nest", "a spider": "web", "a bear": "den",
        "a rabbit": "burrow", "a horse": "stable", "a pig": "sty", "a dog": "kennel",
        "an ant": "anthill", "a beaver": "lodge", "a fish": "water", "a monkey": "tree",
        "a penguin": "iceberg", "a camel": "desert",
    }),
    "group": ("What is a group of {} called?", {
        "wolves": "pack", "cows": "herd", "sheep": "flock", "fish": "school", "bees": "swarm",
        "lions": "pride", "crows": "murder", "geese": "gaggle", "whales": "pod",
        "ants": "colony", "puppies": "litter", "ships": "fleet",
    }),
}  # fmt: skip


def _mc(rng: random.Random, question: str, answer: str, pool: list[str], k: int = 4) -> dict:
    """One item: the answer plus ``k - 1`` distinct distractors from ``pool``, shuffled."""
    distractors = rng.sample(sorted(set(pool) - {answer}), k - 1)
    choices = [answer, *distractors]
    rng.shuffle(choices)
    return {"question": question, "choices": choices, "answer": choices.index(answer)}


def antonyms(rng: random.Random) -> list[dict]:
    words = [w for pair in ANTONYMS for w in pair]
    assert len(set(words)) == len(words), "each word must appear in one pair only"
    items = []
    for a, b in ANTONYMS:
        for word, opposite in ((a, b), (b, a)):
            pool = [w for w in words if w != word]
            items.append(_mc(rng, f'What is the opposite of "{word}"?', opposite, pool))
    rng.shuffle(items)
    return items[:N_ANTONYMS]


def colors(rng: random.Random) -> list[dict]:
    items = []
    for color, objects in COLORS.items():
        for obj in objects:
            question = rng.choice(COLOR_TEMPLATES).format(obj)
            items.append(_mc(rng, question, color, list(COLORS)))
    rng.shuffle(items)
    return items


def sizes(rng: random.Random) -> list[dict]:
    pairs = [
        (small, big)
        for i, lower in enumerate(SIZE_TIERS)
        for upper in SIZE_TIERS[i + 2 :]
        for small in lower
        for big in upper
    ]
    items = []
    for n, (small, big) in enumerate(rng.sample(pairs, N_SIZES)):
        first, second = (small, big) if rng.random() < 0.5 else (big, small)
        asks_bigger = n % 2 == 0  # exactly half of each kind
        word = "bigger" if asks_bigger else "smaller"
        choices = [first.split(" ", 1)[1], second.split(" ", 1)[1]]
        answer = (big if asks_bigger else small).split(" ", 1)[1]
        items.append(
            {
                "question": f"Which is {word}, {first} or {second}?",
                "choices": choices,
                "answer": choices.index(answer),
            }
        )
    rng.shuffle(items)
    return items


def past_tense(rng: random.Random) -> list[dict]:
    forms = list(IRREGULAR_VERBS.values())
    assert len(set(forms)) == len(forms), "past forms must be distinct"
    items = [
        _mc(rng, f'What is the past tense of "{verb}"?', past, forms)
        for verb, past in IRREGULAR_VERBS.items()
    ]
    rng.shuffle(items)
    return items


def animals(rng: random.Random) -> list[dict]:
    items = []
    for template, facts in ANIMALS.values():
        pool = list(facts.values())
        for animal, answer in facts.items():
            items.append(_mc(rng, template.format(animal), answer, pool))
    rng.shuffle(items)
    return items


GENERATORS = {
    "antonyms": antonyms,
    "colors": colors,
    "past_tense": past_tense,
    "animals": animals,
    "sizes": sizes,
}


def main(out_dir: Path = DATA_DIR) -> dict[str, int]:
    """Write every task's JSONL into ``out_dir``; return the item count per task."""
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, generate in GENERATORS.items():
        items = generate(random.Random(f"{SEED}:{name}"))
        with open(out_dir / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for item in items:
                f.write(json.dumps(item, ensure_ascii=False) + "\n")
        counts[name] = len(items)
    return counts


if __name__ == "__main__":
    print(main())
