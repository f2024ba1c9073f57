"""CRASS (Frohberg & Binder 2022, "CRASS: A Novel Data Set and Benchmark to Test Counterfactual
Reasoning of Large Language Models"), fixed-target mode: a premise, a counterfactual question,
the correct answer and two or three wrong ones.

`--data` is CRASS_FTM_main_data_set.csv as published (semicolon-separated: PCTID; BatchID;
Premise; QCC; CorrectAnswer; Answer1; Answer2; PossibleAnswer3). The file lists the correct
answer first, so the options are shuffled, with a seed per question id so every run and every
model sees the same order. The first `shots` questions (3, as InstructEval uses) are shown solved.
"""

from __future__ import annotations

import random

from ..errors import UserError
from .choice import Choice, lettered_choice, solved
from .files import need, read_csv

COLUMNS = ("PCTID", "Premise", "QCC", "CorrectAnswer", "Answer1", "Answer2")


def items(data: str | None, limit: int | None, shots: int = 3) -> list[Choice]:
    if not data:
        raise UserError("crass: needs --data CRASS_FTM_main_data_set.csv (github.com/apergo-ai/CRASS-data-set)")
    rows = read_csv("crass", data, delimiter=";")
    need("crass", rows, COLUMNS, data, "CRASS_FTM_main_data_set.csv: " + ";".join(COLUMNS) + ";PossibleAnswer3")

    def make(row, demo="") -> Choice:
        options = [
            row[c].strip()
            for c in ("CorrectAnswer", "Answer1", "Answer2", "PossibleAnswer3")
            if (row.get(c) or "").strip()
        ]
        order = list(range(len(options)))
        random.Random(f"crass-{row['PCTID']}").shuffle(order)
        question = f"{row['Premise'].strip()} {row['QCC'].strip()}"
        return lettered_choice(question, [options[i] for i in order], order.index(0), shots=demo)

    demo = "".join(solved(make(row)) for row in rows[:shots])
    return [make(row, demo) for row in rows[shots:][:limit]]
