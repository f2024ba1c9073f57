"""A seeded Alpaca-format file shaped like real Alpaca rows, for speed benchmarks offline.

Real Alpaca (tatsu-lab/alpaca) cannot be downloaded here. What matters for speed is its shape
under the SmolLM2 tokenizer with the alpaca template: short instructions, an input on about 40%
of the rows, responses from a few words to a few hundred, so that with max length 256 most
batches of 4 reach the cap. Pass a real Alpaca file to the benchmark instead when you have one.

    python benchmarks/alpaca_like.py OUT.json [--rows 999] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random

_WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which but "
    "have an they you were her she there been one all we their has would when if so no will more out "
    "data model learning system people time water energy market health patient code function value "
    "number result example process information study research design change growth company product "
    "language network training report answer question describe explain write list provide create "
    "important different following several simple clear useful possible common public local global "
    "because however therefore although while during between through within without against among"
).split()


LONG_SHARE, SHORT_MU = 0.35, 3.9


def sentence(rng: random.Random, words: int) -> str:
    text = " ".join(rng.choice(_WORDS) for _ in range(words))
    return text[0].upper() + text[1:] + "."


def paragraph(rng: random.Random, words: int) -> str:
    parts, left = [], words
    while left > 0:
        n = min(left, rng.randint(8, 22))
        parts.append(sentence(rng, n))
        left -= n
    return " ".join(parts)


def rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        # response length: a third of the rows are long (explanations, essays, code), the rest
        # short with a long tail, which matches the reference run's batch statistics
        if rng.random() < LONG_SHARE:
            response_words = rng.randint(200, 400)
        else:
            response_words = int(min(400, max(2, rng.lognormvariate(SHORT_MU, 0.8))))
        out.append(
            {
                "instruction": sentence(rng, rng.randint(6, 20)),
                "input": paragraph(rng, rng.randint(8, 60)) if rng.random() < 0.4 else "",
                "output": paragraph(rng, response_words),
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--rows", type=int, default=999)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with open(args.out, "w") as f:
        json.dump(rows(args.rows, args.seed), f)


if __name__ == "__main__":
    main()
