"""Medical question answering: MedQA, MedMCQA and PubMedQA (accuracy), as the paper reports them.

- MedQA (Jin et al. 2021), the USMLE questions: JSONL rows {question, options: {"A": .., ...},
  answer_idx: "A"} as in the original release (4_options or 5 options) and GBaker/MedQA-USMLE-4-options;
- MedMCQA (Pal et al. 2022): rows {question, opa, opb, opc, opd, cop, subject_name}; `cop` follows
  the source's layout, never a guess from the values: 1-4 in the original release's JSON lines
  (train.json / dev.json, `.json` or `.jsonl` here), 0-3 on the hub (openlifescienceai/medmcqa) and
  in its Parquet / CSV exports;
- PubMedQA (Jin et al. 2019), PQA-L, scored on its standard test set of 500 questions (the PMIDs of
  the release's test_ground_truth.json, shipped in data/pubmedqa_test_pmids.txt; a
  test_ground_truth.json beside the file wins): the original ori_pqal.json ({pmid: {QUESTION,
  CONTEXTS, final_decision}}) or the hub's pqa_labeled rows {pubid, question, context: {contexts},
  final_decision} (all 1,000 labelled questions, 500 of them test); answers yes / no / maybe. Rows
  without a pubid (a set of one's own) are scored whole.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .choice import Choice, lettered_choice, solved
from .files import need, read_json, table_rows


def medqa(data: str | None, limit: int | None, shots: int = 0) -> list[Choice]:
    rows = table_rows("medqa", data, ("GBaker/MedQA-USMLE-4-options", None, "test"))
    need(
        "medqa",
        rows,
        ("question", "options", "answer_idx"),
        data or "hub",
        "MedQA JSONL: question, options {A: ...}, answer_idx",
    )

    def make(r, demo=""):
        letters = sorted(k for k, v in r["options"].items() if v is not None)
        if r["answer_idx"] not in letters:
            raise UserError(f"medqa: answer_idx {r['answer_idx']!r} is not one of the options {letters}")
        return lettered_choice(
            r["question"], [r["options"][k] for k in letters], letters.index(r["answer_idx"]), shots=demo
        )

    demo = "".join(solved(make(r)) for r in rows[:shots])
    return [make(r, demo) for r in rows[shots:][:limit]]


def medmcqa(data: str | None, limit: int | None, shots: int = 0) -> list[Choice]:
    rows = table_rows("medmcqa", data, ("openlifescienceai/medmcqa", None, "validation"))
    need(
        "medmcqa",
        rows,
        ("question", "opa", "opb", "opc", "opd"),
        data or "hub",
        "MedMCQA rows: question, opa, opb, opc, opd, cop",
    )
    # The original release numbers the options 1-4; the hub's copy (and files exported from it) 0-3.
    original = data is not None and Path(data).expanduser().suffix.lower() in (".json", ".jsonl")
    base, valid = (1, {"1", "2", "3", "4"}) if original else (0, {"0", "1", "2", "3"})
    for i, r in enumerate(rows, start=1):
        if str(r.get("cop")) not in valid:
            layout = "the original release's JSON lines: 1-4" if original else "the hub's layout: 0-3"
            raise UserError(f"medmcqa: {data or 'hub'}: row {i} has cop={r.get('cop')!r}; {layout}")

    def make(r, demo=""):
        options = [r["opa"], r["opb"], r["opc"], r["opd"]]
        return lettered_choice(
            r["question"], options, int(r["cop"]) - base, group=r.get("subject_name") or "", shots=demo
        )

    demo = "".join(solved(make(r)) for r in rows[:shots])
    return [make(r, demo) for r in rows[shots:][:limit]]


ANSWERS = ("yes", "no", "maybe")


TEST_PMIDS = Path(__file__).parent / "data" / "pubmedqa_test_pmids.txt"


def pubmedqa_test_set(data: str | None) -> set[str]:
    """The PMIDs of PQA-L's test set: test_ground_truth.json beside `data` if there, else the shipped list."""
    truth = Path(data).expanduser().with_name("test_ground_truth.json") if data else None
    if truth is not None and truth.is_file():
        return set(read_json("pubmedqa", truth))
    return {line.strip() for line in TEST_PMIDS.read_text().splitlines() if line.strip() and line[0] != "#"}


def _pubmedqa_rows(data: str | None) -> list[dict]:
    test = pubmedqa_test_set(data)
    if data and Path(data).expanduser().suffix == ".json" and isinstance(raw := read_json("pubmedqa", data), dict):
        rows = []
        for pmid, r in raw.items():
            if pmid in test:
                if not isinstance(r, dict) or not {"QUESTION", "CONTEXTS", "final_decision"} <= r.keys():
                    raise UserError(f"pubmedqa: {data}: entry {pmid} has no QUESTION, CONTEXTS or final_decision")
                rows.append({"question": r["QUESTION"], "contexts": r["CONTEXTS"], "answer": r["final_decision"]})
    else:
        table = table_rows("pubmedqa", data, ("qiaojin/PubMedQA", "pqa_labeled", "train"))
        need(
            "pubmedqa",
            table,
            ("question", "context", "final_decision"),
            data or "hub",
            "ori_pqal.json or pqa_labeled rows: pubid, question, context {contexts}, final_decision",
        )
        rows = [
            {"question": r["question"], "contexts": r["context"]["contexts"], "answer": r["final_decision"]}
            for r in table
            if "pubid" not in r or str(r["pubid"]) in test
        ]
    if not rows:
        raise UserError(f"pubmedqa: {data or 'hub'} holds none of the 500 questions of PQA-L's test set")
    return rows


def pubmedqa(data: str | None, limit: int | None, shots: int = 0) -> list[Choice]:
    rows = _pubmedqa_rows(data)
    for r in rows:
        if r["answer"] not in ANSWERS:
            raise UserError(f"pubmedqa: final_decision {r['answer']!r} is not yes, no or maybe")

    def text(r):
        return f"Context: {' '.join(r['contexts'])}\nQuestion: {r['question']}\n"

    demo = "".join(f"{text(r)}Answer (yes, no or maybe): {r['answer']}\n\n" for r in rows[:shots])
    return [
        Choice(
            prompt=f"{demo}{text(r)}Answer (yes, no or maybe):",
            options=[f" {a}" for a in ANSWERS],
            labels=list(ANSWERS),
            gold=ANSWERS.index(r["answer"]),
            question=f"{demo}{text(r)}Reply with yes, no or maybe.",
        )
        for r in rows[shots:][:limit]
    ]
