"""The built-in instruction suite: five small domains with automatically checkable answers.

In the spirit of the paper's general / finance / medical / code / math training sets, but
generated offline from a seed, so that the default job runs anywhere and its accuracy means
something. Every task is answerable from a rule the training examples show (a headline phrase
decides the sentiment, a symptom decides the specialist, a description decides the expression),
and every answer is short and strict ("answer with one word"). A pretrained chat model knows
much of the content but not the exact answer format, so it scores low before training; after
LoRA SFT it answers held-out examples in the trained format.

Training and held-out examples are drawn from disjoint seeds of the same generators; names,
numbers and phrasings vary, so a held-out example is rarely a verbatim training example.
"""

from __future__ import annotations

import random

from .example import Example

DOMAINS = ("general", "finance", "medical", "code", "math")

_ANIMALS = {
    "mammal": ["dolphin", "bat", "horse", "whale", "tiger", "rabbit", "elephant", "goat", "wolf", "camel"],
    "bird": ["penguin", "eagle", "sparrow", "ostrich", "parrot", "owl", "swan", "crow", "pelican", "robin"],
    "fish": ["salmon", "shark", "tuna", "trout", "goldfish", "cod", "eel", "carp", "herring", "sardine"],
    "reptile": [
        "crocodile",
        "gecko",
        "python",
        "tortoise",
        "iguana",
        "cobra",
        "alligator",
        "chameleon",
        "lizard",
        "viper",
    ],
    "insect": ["ant", "beetle", "butterfly", "mosquito", "wasp", "grasshopper", "moth", "ladybug", "bee", "cricket"],
}
_ANIMAL_ASKS = [
    "Classify the animal: {x}.",
    "Which animal class does the {x} belong to?",
    "What kind of animal is a {x}?",
    "Name the class of this animal: {x}.",
    "Is a {x} a mammal, bird, fish, reptile or insect?",
    "Which group of animals includes the {x}?",
]

_HEADLINES = {
    "positive": [
        "reports record quarterly profit",
        "beats analyst earnings estimates",
        "raises its full-year guidance",
        "announces a special dividend",
        "wins a large government contract",
        "sees sales jump sharply",
    ],
    "negative": [
        "misses revenue forecasts",
        "announces thousands of layoffs",
        "cuts its dividend",
        "faces a fraud investigation",
        "warns of a loss this year",
        "recalls its main product",
    ],
    "neutral": [
        "schedules its annual shareholder meeting",
        "moves its headquarters across town",
        "names a new board secretary",
        "publishes its annual report",
        "holds an investor day in May",
        "updates its company logo",
    ],
}
_FIRM_A = ["Apex", "Bluewater", "Nova", "Summit", "Vertex", "Harbor", "Ironwood", "Crescent", "Orion", "Maple"]
_FIRM_B = ["Industries", "Holdings", "Bank", "Motors", "Foods", "Energy", "Labs", "Systems", "Retail", "Airlines"]

_SPECIALISTS = {
    "cardiologist": [
        "chest pain when climbing stairs",
        "an irregular heartbeat",
        "a heart murmur",
        "high blood pressure despite treatment",
    ],
    "dermatologist": [
        "an itchy rash on both arms",
        "a mole that changed colour",
        "severe acne",
        "patches of scaly skin",
    ],
    "neurologist": ["frequent migraines", "numbness in one hand", "a recent seizure", "tremors in both hands"],
    "ophthalmologist": [
        "blurred vision in one eye",
        "red and painful eyes",
        "flashes of light in the eye",
        "trouble seeing at night",
    ],
    "orthopedist": [
        "a knee that locks when walking",
        "a broken wrist",
        "pain in the hip joint",
        "a torn shoulder ligament",
    ],
}
_PATIENTS = {"man": (18, 85), "woman": (18, 85), "boy": (4, 15), "girl": (4, 15), "patient": (4, 85)}

# description template -> (expression template, parameter range); {n} is filled with a number.
_CODE_ASKS = ["Write a Python expression in x that", "Give a Python expression of x that"]
_EXPRESSIONS = [
    ("doubles x", "x * 2", None),
    ("squares x", "x ** 2", None),
    ("negates x", "-x", None),
    ("triples x", "x * 3", None),
    ("adds {n} to x", "x + {n}", (2, 60)),
    ("subtracts {n} from x", "x - {n}", (2, 60)),
    ("multiplies x by {n}", "x * {n}", (3, 9)),
    ("gives the remainder of x divided by {n}", "x % {n}", (2, 9)),
    ("divides x by {n}, rounding down", "x // {n}", (2, 9)),
]


def _general(rng: random.Random) -> Example:
    label = rng.choice(sorted(_ANIMALS))
    animal = rng.choice(_ANIMALS[label])
    ask = rng.choice(_ANIMAL_ASKS).format(x=animal)
    return Example(
        instruction=f"{ask} Answer with one word: mammal, bird, fish, reptile or insect.",
        output=label,
        domain="general",
        check="exact",
    )


def _finance(rng: random.Random) -> Example:
    label = rng.choice(sorted(_HEADLINES))
    headline = f"{rng.choice(_FIRM_A)} {rng.choice(_FIRM_B)} {rng.choice(_HEADLINES[label])}"
    return Example(
        instruction="What is the sentiment of this financial headline? "
        "Answer with one word: positive, negative or neutral.",
        input=headline,
        output=label,
        domain="finance",
        check="exact",
    )


def _medical(rng: random.Random) -> Example:
    label = rng.choice(sorted(_SPECIALISTS))
    symptom = rng.choice(_SPECIALISTS[label])
    who = rng.choice(sorted(_PATIENTS))
    age = rng.randint(*_PATIENTS[who])
    return Example(
        instruction="Which specialist should this patient see? Answer with one word.",
        input=f"A {age}-year-old {who} has {symptom}.",
        output=label,
        domain="medical",
        check="exact",
    )


def _code(rng: random.Random) -> Example:
    description, expression, span = rng.choice(_EXPRESSIONS)
    n = rng.randint(*span) if span else 0
    return Example(
        instruction=f"{rng.choice(_CODE_ASKS)} {description.format(n=n)}. Answer with the expression only.",
        output=expression.format(n=n),
        domain="code",
        check="python_expr",
    )


def _math(rng: random.Random) -> Example:
    kind = rng.choice(["plus", "times10", "larger"])
    if kind == "plus":
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        question, value = f"What is {a} plus {b}?", a + b
    elif kind == "times10":
        a = rng.randint(2, 99)
        question, value = f"What is {a} times 10?", a * 10
    else:
        a, b = rng.sample(range(10, 100), 2)
        question, value = f"Which is larger, {a} or {b}?", max(a, b)
    return Example(
        instruction=f"{question} Answer with the number only.",
        output=str(value),
        domain="math",
        check="number",
    )


_GENERATORS = {
    "general": _general,
    "finance": _finance,
    "medical": _medical,
    "code": _code,
    "math": _math,
}


def generate(n_per_domain: int, seed: int, domains=DOMAINS) -> list[Example]:
    """`n_per_domain` examples of each domain, in a seeded order (interleaved by domain)."""
    out: list[Example] = []
    for domain in domains:
        # One stream per domain: adding a domain or changing n leaves the others' examples alone.
        rng = random.Random(f"{seed}:{domain}")
        out.extend(_GENERATORS[domain](rng) for _ in range(n_per_domain))
    random.Random(seed).shuffle(out)
    return out


def train_and_heldout(n_train: int, n_heldout: int, seed: int, domains=DOMAINS):
    """Disjoint training and held-out sets: held-out examples that equal a training one are dropped."""
    train = generate(n_train, seed, domains)
    seen = {(e.instruction, e.input) for e in train}
    heldout: list[Example] = []
    k = 0
    while len(heldout) < n_heldout * len(domains) and k < 50:
        per_domain = {d: sum(e.domain == d for e in heldout) for d in domains}
        for e in generate(n_heldout * 4, seed + 10_000 + k, domains):
            if (e.instruction, e.input) not in seen and per_domain[e.domain] < n_heldout:
                heldout.append(e)
                seen.add((e.instruction, e.input))
                per_domain[e.domain] += 1
        k += 1
    return train, heldout
