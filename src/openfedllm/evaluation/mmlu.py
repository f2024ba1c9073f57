"""MMLU (Hendrycks et al. 2021, "Measuring Massive Multitask Language Understanding"): 57 subjects,
four options, k-shot prompts from each subject's dev questions (5 in the paper).

`--data` is the data/ folder of the original tar (dev/SUBJECT_dev.csv, test/SUBJECT_test.csv: no
header; question, A, B, C, D, answer letter) or a folder of cais/mmlu in its hub layout
(test-*.parquet and dev-*.parquet with question, subject, choices, answer index), e.g. its all/.
Accuracy is reported over all questions and per subject; `--limit` caps questions per subject.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .choice import Choice, lettered
from .files import first_per_group, need, read_csv, table_rows

HUB = ("cais/mmlu", "all")
LAYOUT = (
    "Hendrycks' data/ folder (dev/*_dev.csv, test/*_test.csv) or cais/mmlu's all/ folder "
    "(test-*.parquet, dev-*.parquet)"
)


def _hendrycks(folder: Path, split: str) -> list[dict]:
    rows = []
    for file in sorted((folder / split).glob(f"*_{split}.csv")):
        subject = file.name[: -len(f"_{split}.csv")]
        for i, r in enumerate(read_csv("mmlu", file, header=False), start=1):
            if len(r) != 6 or r[5].strip() not in "ABCD" or not r[5].strip():
                raise UserError(f"mmlu: {file}: row {i} is not question,A,B,C,D,answer-letter")
            rows.append({"question": r[0], "choices": r[1:5], "answer": "ABCD".index(r[5].strip()), "subject": subject})
    return rows


def _hub_files(folder: Path, split: str) -> list[dict]:
    files = sorted(folder.glob(f"{split}-*.parquet")) + sorted(folder.glob(f"{split}.*"))
    if not files:
        return []
    rows = [r for f in files for r in table_rows("mmlu", str(f))]
    need("mmlu", rows, ("question", "choices", "subject"), str(folder), LAYOUT)
    return rows


def load_rows(data: str | None) -> tuple[list[dict], list[dict]]:
    """(test rows, dev rows), each {question, choices, answer, subject}."""
    if data is None:
        return table_rows("mmlu", None, (*HUB, "test")), table_rows("mmlu", None, (*HUB, "dev"))
    folder = Path(data).expanduser()
    if not folder.is_dir():
        raise UserError(f"mmlu: --data {data} is not a folder; expected {LAYOUT}")
    if (folder / "test").is_dir():
        test, dev = _hendrycks(folder, "test"), _hendrycks(folder, "dev") if (folder / "dev").is_dir() else []
    else:
        test, dev = _hub_files(folder, "test"), _hub_files(folder, "dev")
    if not test:
        raise UserError(f"mmlu: {data} holds no test questions; expected {LAYOUT}")
    return test, dev


def _header(subject: str) -> str:
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


def items(data: str | None, limit: int | None, shots: int = 5) -> list[Choice]:
    test, dev = load_rows(data)
    by_subject: dict[str, list[dict]] = {}
    for row in dev:
        by_subject.setdefault(row["subject"], []).append(row)
    out = []
    for row in first_per_group(test, limit, lambda r: r["subject"]):
        examples = by_subject.get(row["subject"], [])[:shots]
        demo = "".join(f"{lettered(e['question'], e['choices'])} {'ABCD'[int(e['answer'])]}\n\n" for e in examples)
        prompt = _header(row["subject"]) + demo + lettered(row["question"], row["choices"])
        letters = "ABCD"[: len(row["choices"])]
        out.append(
            Choice(
                prompt=prompt,
                options=[f" {x}" for x in letters],
                labels=list(letters),
                gold=int(row["answer"]),
                group=row["subject"],
                question=prompt[: -len("Answer:")] + "Reply with the letter of the correct option.",
            )
        )
    return out
