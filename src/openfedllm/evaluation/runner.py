"""`openfedllm eval`: measure a model, an adapter, a run, or a samples file on benchmarks.

Benchmarks so far: `humaneval` (pass@k in the sandbox; `--samples` scores a completions file
without a model) and `gsm8k` (greedy answers, the number after ####, exact numeric match). The
results go to OUT.json with enough metadata to compare runs, and a markdown table is printed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..errors import UserError
from .code import humaneval_problems, humaneval_program, read_jsonl, score_samples
from .metrics import gsm8k_answer

BENCHMARKS = ("humaneval", "gsm8k")
CODE_STOPS = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")  # HumanEval's stop sequences


def load_model(model: str | None, run: str | None):
    """(model, tokenizer, description): the default model, a model id/folder, or a run's adapter."""
    from .. import models
    from ..config import build
    from ..rundir import read_config

    adapter = None
    if run:
        config = build(read_config(Path(run)))
        model, adapter = config.model.name, str(Path(run) / "adapter")
    model = model or models.DEFAULT_MODEL
    path = models.resolve_model(model)
    tokenizer = models.load_tokenizer(path)
    loaded = models.load_base_model(path)
    if adapter:
        loaded = models.load_adapter(loaded, adapter)
    loaded.config.use_cache = True
    return loaded.eval(), tokenizer, {"model": model, "adapter": adapter}


def _generate(model, tokenizer, prompts: list[str], max_new_tokens: int, chat: bool) -> list[str]:
    from ..data.templates import dialogue_prompt_ids
    from ..evaluate import generate

    if chat:
        ids = [dialogue_prompt_ids([{"role": "user", "content": p}], "chat", tokenizer, 4096) for p in prompts]
    else:
        ids = [tokenizer(p)["input_ids"] for p in prompts]
    return generate(model, ids, tokenizer, max_new_tokens, batch_size=8)


def _cut(text: str, stops=CODE_STOPS) -> str:
    cut = min((text.find(s) for s in stops if s in text), default=len(text))
    return text[:cut]


def run_benchmark(name: str, *, data: str | None, samples: str | None, limit: int | None, model_arg, run_arg,
                  max_new_tokens: int, ks: tuple[int, ...]) -> dict:
    if name not in BENCHMARKS:
        raise UserError(f"--benchmark: unknown benchmark {name!r}; available: {', '.join(BENCHMARKS)}")
    start = time.perf_counter()
    if name == "humaneval":
        problems = humaneval_problems(data)
        if samples:
            rows = read_jsonl(samples)
        else:
            model, tokenizer, _ = load_model(model_arg, run_arg)
            chosen = list(problems.values())[:limit]
            completions = _generate(model, tokenizer, [p["prompt"] for p in chosen], max_new_tokens, chat=False)
            rows = [{"task_id": p["task_id"], "completion": _cut(c)} for p, c in zip(chosen, completions)]
        if limit:
            keep = set(list(dict.fromkeys(r.get("task_id") for r in rows))[:limit])
            rows = [r for r in rows if r.get("task_id") in keep]
        result = score_samples(rows, problems, humaneval_program, ks)
        result.pop("per_task")
    else:
        if samples:
            raise UserError("--samples scores code benchmarks only (humaneval)")
        if not data:
            raise UserError("gsm8k needs --data FILE (openai/gsm8k's test.jsonl: question, answer)")
        rows = read_jsonl(data)[:limit]
        if any("question" not in r or "answer" not in r for r in rows):
            raise UserError(f"{data}: gsm8k rows need question and answer")
        model, tokenizer, _ = load_model(model_arg, run_arg)
        said = _generate(model, tokenizer, [r["question"] for r in rows], max_new_tokens, chat=True)
        right = [gsm8k_answer(s) == gsm8k_answer(r["answer"]) for s, r in zip(said, rows)]
        result = {"metrics": {"accuracy": sum(right) / len(right)}, "questions": len(rows)}
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result


def evaluate_all(benchmarks: list[str], output: Path, **kwargs) -> dict:
    report = {"benchmarks": {}, "meta": {"model": kwargs.get("model_arg"), "run": kwargs.get("run_arg"),
                                         "samples": kwargs.get("samples"), "data": kwargs.get("data"),
                                         "limit": kwargs.get("limit"), "date": time.strftime("%Y-%m-%d %H:%M:%S")}}
    for name in benchmarks:
        report["benchmarks"][name] = run_benchmark(name, **kwargs)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(output)
    print("| benchmark | metric | value |\n|---|---|---|")
    for name, result in report["benchmarks"].items():
        for metric, value in result["metrics"].items():
            print(f"| {name} | {metric} | {value:.4f} |")
    return report
