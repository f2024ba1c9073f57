"""Benchmarks answered in free text: BBH, DROP and GSM8K.

- BBH (Suzgun et al. 2022, BIG-Bench Hard): 27 tasks, each bbh/TASK.json {"examples": [{input,
  target}]}. As InstructEval's bbh.py (which the paper uses) does it: the first `shots` (3) examples
  of a task are the demonstrations ("{input}\\nAnswer: {target}"), the rest are scored; an answer
  is right when, stripped, it starts with the target; `accuracy` is the mean over tasks of each
  task's accuracy. `accuracy_first_line` is a stricter house rule (see bbh_first_line_correct).
  `--limit` is per task.
- DROP (Dua et al. 2019): the original drop_dataset_dev.json ({passage_id: {passage, qa_pairs:
  [{question, answer: {number, date, spans}, validated_answers}]}}) or the hub's rows (ucinlp/drop:
  passage, question, answers_spans {spans}); 3-shot; exact match and F1 as the official
  drop_eval.py computes them (a multi-span answer is one answer), each the best over the gold answers.
- GSM8K (Cobbe et al. 2021): rows {question, answer}, the reference's number after ####; the
  model answers in its chat template and the last number of its answer (or the one after ####)
  must equal the reference.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from ..errors import UserError
from .files import need, read_json, table_rows
from .metrics import drop_metrics, gsm8k_answer

# --- BBH -------------------------------------------------------------------------------------------


def bbh_tasks(data: str | None) -> dict[str, list[dict]]:
    if not data:
        raise UserError("bbh: needs --data, the bbh/ folder of github.com/suzgun/BIG-Bench-Hard (one TASK.json each)")
    folder = Path(data).expanduser()
    if folder.is_dir() and (folder / "bbh").is_dir():
        folder = folder / "bbh"
    files = sorted(folder.glob("*.json")) if folder.is_dir() else [folder]
    tasks = {}
    for file in files:
        raw = read_json("bbh", file)
        examples = raw.get("examples") if isinstance(raw, dict) else None
        if not examples or any(not isinstance(e, dict) or "input" not in e or "target" not in e for e in examples):
            raise UserError(f'bbh: {file}: expected {{"examples": [{{"input", "target"}}, ...]}}')
        tasks[file.stem] = examples
    if not tasks:
        raise UserError(f"bbh: {data}: no TASK.json files")
    return tasks


def bbh_correct(answer: str, target: str) -> bool:
    """InstructEval's rule (bbh.py): the stripped answer starts with the target, case as given."""
    return answer.strip().startswith(target)


def bbh_first_line_correct(answer: str, target: str) -> bool:
    """A stricter house rule (`accuracy_first_line`): the answer's first line starts with the target,
    any case, and ends or goes on with a non-alphanumeric ("True." yes; "Truest" and "12" for 1, no)."""
    first = answer.strip().split("\n", 1)[0].strip().lower()
    target = target.strip().lower()
    return first.startswith(target) and (len(first) == len(target) or not first[len(target)].isalnum())


def bbh(lm, data: str | None, limit: int | None, shots: int = 3, max_new_tokens: int = 32) -> dict:
    """InstructEval's BBH: each sample is "{input}\nAnswer:" (a demonstration adds " {target}\n\n"),
    the first `shots` examples of a task are its demonstrations (fewer when the prompt would pass the
    model's input length, as InstructEval drops them), 32 new tokens without stop sequences, and
    the score is the macro average over tasks of `bbh_correct`."""

    def sample(e, answer=True):
        return f"{e['input']}\nAnswer:" + (f" {e['target']}\n\n" if answer else "")

    prompts, targets, groups = [], [], []
    for task, examples in bbh_tasks(data).items():
        for e in examples[shots:][:limit]:
            for k in range(shots, -1, -1):  # drop demonstrations while the prompt is too long
                prompt = "".join(sample(d) for d in examples[:k]) + sample(e, answer=False)
                if k == 0 or len(lm.tokenizer(prompt)["input_ids"]) <= lm.max_length:
                    break
            prompts.append(prompt)
            targets.append(str(e["target"]))
            groups.append(task)
    said = lm.complete(prompts, max_new_tokens=max_new_tokens)
    correct = [bbh_correct(s, t) for s, t in zip(said, targets)]
    correct_first = [bbh_first_line_correct(s, t) for s, t in zip(said, targets)]
    per_task = _group_means(groups, correct)
    first_line = _group_means(groups, correct_first)
    return {
        "metrics": {
            "accuracy": sum(per_task.values()) / len(per_task),
            "accuracy_first_line": sum(first_line.values()) / len(first_line),
        },
        "questions": len(prompts),
        "per_group": {"generate": per_task},
        "logged": [
            {"prompt": p, "target": t, "group": g, "answer": a, "correct": c, "correct_first_line": f}
            for p, t, g, a, c, f in zip(prompts, targets, groups, said, correct, correct_first)
        ],
    }


def _group_means(groups: list[str], values: Sequence[float]) -> dict[str, float]:
    total: defaultdict[str, float] = defaultdict(float)
    count: defaultdict[str, int] = defaultdict(int)
    for g, v in zip(groups, values):
        total[g] += v
        count[g] += 1
    return {g: total[g] / count[g] for g in sorted(count)}


# --- DROP ------------------------------------------------------------------------------------------


def _drop_answer(answer: dict) -> tuple[str, ...]:
    """DROP's answer object as the official script reads it: the number, the spans (one answer of
    several spans, not alternatives), or the date as "day month year"."""
    if answer.get("number"):
        return (str(answer["number"]),)
    if answer.get("spans"):
        return tuple(answer["spans"])
    date = answer.get("date") or {}
    text = " ".join(str(date.get(k) or "") for k in ("day", "month", "year")).strip()
    return (text,) if text else ()


def drop_rows(data: str | None) -> list[dict]:
    """{passage, question, answers} rows from the original JSON or the hub's layout."""
    if data and Path(data).expanduser().suffix == ".json":
        raw = read_json("drop", data)
        if isinstance(raw, dict) and all(isinstance(v, dict) and "qa_pairs" in v for v in raw.values()):
            rows = []
            for passage in raw.values():
                for qa in passage["qa_pairs"]:
                    golds = [_drop_answer(a) for a in [qa["answer"], *qa.get("validated_answers", [])]]
                    rows.append(
                        {
                            "passage": passage["passage"],
                            "question": qa["question"],
                            "answers": list(dict.fromkeys(g for g in golds if g)),
                        }
                    )
            return rows
    rows = table_rows("drop", data, ("ucinlp/drop", None, "validation"))
    need(
        "drop",
        rows,
        ("passage", "question", "answers_spans"),
        data or "hub",
        "drop_dataset_dev.json or rows {passage, question, answers_spans {spans}}",
    )
    # The hub keeps one answer per question: its spans together (a multi-span answer), not alternatives.
    return [
        {
            "passage": r["passage"],
            "question": r["question"],
            "answers": [tuple(r["answers_spans"]["spans"])] if r["answers_spans"]["spans"] else [],
        }
        for r in rows
    ]


def drop(lm, data: str | None, limit: int | None, shots: int = 3, max_new_tokens: int = 32) -> dict:
    rows = [r for r in drop_rows(data) if r["answers"]]
    demos: list[dict] = []
    seen: set = set()
    for r in rows:  # demonstrations from different passages, so a prompt holds shots + 1 passages at most
        if len(demos) < shots and r["passage"] not in seen:
            demos.append(r)
            seen.add(r["passage"])
    test = [r for r in rows if r["passage"] not in seen][:limit]
    if not test:
        raise UserError("drop: no questions left after the demonstrations; lower --shots")
    demo = "".join(
        f"Passage: {r['passage']}\nQuestion: {r['question']}\nAnswer: {', '.join(r['answers'][0])}\n\n" for r in demos
    )
    prompts = [f"{demo}Passage: {r['passage']}\nQuestion: {r['question']}\nAnswer:" for r in test]
    said = lm.complete(prompts, max_new_tokens=max_new_tokens, stop=("\n",))
    # Each question's score is the best over its gold answers, exact match and F1 each on its own,
    # as drop_eval.py takes them.
    scored = [[drop_metrics(s.strip(), g) for g in r["answers"]] for s, r in zip(said, test)]
    em = [max(m[0] for m in per_gold) for per_gold in scored]
    f1 = [max(m[1] for m in per_gold) for per_gold in scored]
    return {
        "metrics": {"exact_match": sum(em) / len(em), "f1": sum(f1) / len(f1)},
        "questions": len(test),
        "logged": [
            {"prompt": p, "target": [list(g) for g in r["answers"]], "answer": a.strip(), "exact_match": e, "f1": f}
            for p, r, a, e, f in zip(prompts, test, said, em, f1)
        ],
    }


# --- GSM8K -----------------------------------------------------------------------------------------


def gsm8k(lm, data: str | None, limit: int | None, shots: int = 0, max_new_tokens: int = 256) -> dict:
    rows = table_rows("gsm8k", data, ("openai/gsm8k", "main", "test"))
    need("gsm8k", rows, ("question", "answer"), data or "hub", "openai/gsm8k rows: question, answer (... #### N)")
    demo = "".join(f"Question: {r['question']}\nAnswer: {r['answer']}\n\n" for r in rows[:shots])
    test = rows[shots:][:limit]
    prompts = [demo + r["question"] for r in test]
    said = lm.chat(prompts, max_new_tokens=max_new_tokens)
    right = [gsm8k_answer(s) == gsm8k_answer(r["answer"]) for s, r in zip(said, test)]
    return {
        "metrics": {"accuracy": sum(right) / len(right)},
        "questions": len(test),
        "logged": [
            {"prompt": p, "target": gsm8k_answer(r["answer"]), "answer": a, "extracted": gsm8k_answer(a), "correct": c}
            for p, r, a, c in zip(prompts, test, said, right)
        ],
    }
