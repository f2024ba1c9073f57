"""Multiple choice, scored both ways the field does it.

- by log-likelihood (lm-evaluation-harness): the option whose continuation the model finds most
  likely after the prompt; `accuracy_norm` divides each option's log-likelihood by its length in
  characters, as lm-eval's acc_norm does;
- by generation: the model answers in its chat template and the answer is extracted: an option
  letter ("B", "(B)", "The answer is B") or, for label sets like positive / negative / neutral, the
  first label the answer names.

Classification benchmarks (the finance sentiment sets) add macro, micro and weighted F1.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from .metrics import accuracy, choice_letter, f1_scores

Mode = Literal["loglik", "generate", "both"]  # a setting: one scoring mode, or both
MODES = ("loglik", "generate")


def modes(setting: str) -> tuple[str, ...]:
    """The scoring modes a `loglik` / `generate` / `both` setting asks for."""
    return MODES if setting == "both" else (setting,)


NONE = "(none)"  # the prediction when a generated answer names no option


@dataclass
class Choice:
    prompt: str  # text that ends where the answer goes ("...\nAnswer:"), few-shot examples included
    options: list[str]  # the continuations compared by log-likelihood (" A", " positive")
    labels: list[str]  # what a generated answer names for each option ("A", "positive")
    gold: int
    group: str = ""  # subject or task, for per-group accuracy
    question: str | None = None  # the generation prompt when it differs from `prompt`
    read: Callable[[str], str] | None = None  # a benchmark's own reading of a generated answer (FinGPT's)


def extract(text: str, labels: list[str]) -> str | None:
    """The option a generated answer names: a letter for lettered options, else the first label."""
    if all(len(label) == 1 and label.isupper() for label in labels):
        return choice_letter(text, "".join(labels))
    lowered = text.lower()
    found = [
        (m.start(), label) for label in labels for m in [re.search(rf"\b{re.escape(label.lower())}\b", lowered)] if m
    ]
    return min(found)[1] if found else None


def evaluate(lm, items: list[Choice], modes=MODES, classification: bool = False, max_new_tokens: int = 16) -> dict:
    """{"metrics", "per_group", "questions", "logged"}: accuracy (and F1) per mode, overall and per
    group; `logged` holds each question with what every mode answered (for --log-samples)."""
    metrics, per_group = {}, {}
    gold = [it.labels[it.gold] for it in items]
    logged: list[dict] = [
        {"prompt": it.question or it.prompt, "options": it.labels, "target": g, "group": it.group}
        for it, g in zip(items, gold)
    ]
    for mode in modes:
        if mode == "loglik":
            scores = lm.loglik([(it.prompt, option) for it in items for option in it.options])
            predicted, normed, at = [], [], 0
            for it in items:
                own = scores[at : at + len(it.options)]
                at += len(it.options)
                predicted.append(it.labels[max(range(len(own)), key=own.__getitem__)])
                per_char = [s / max(len(o.strip()), 1) for s, o in zip(own, it.options)]
                normed.append(it.labels[max(range(len(own)), key=per_char.__getitem__)])
                logged[len(predicted) - 1]["loglik"] = {"logprobs": own, "predicted_norm": normed[-1]}
            metrics["loglik/accuracy_norm"] = accuracy(normed, gold)
        elif mode == "generate":
            said = lm.chat([it.question or it.prompt for it in items], max_new_tokens=max_new_tokens)
            named = [extract(text, it.labels) for it, text in zip(items, said)]
            predicted = [it.read(text) if it.read else label or NONE for it, label, text in zip(items, named, said)]
            metrics["generate/answered"] = sum(label is not None for label in named) / max(len(items), 1)
            for record, text in zip(logged, said):
                record["generate"] = {"answer": text}
        else:
            raise ValueError(f"unknown multiple-choice mode {mode!r}")
        metrics[f"{mode}/accuracy"] = accuracy(predicted, gold)
        if classification:
            for average, value in f1_scores(predicted, gold).items():
                metrics[f"{mode}/f1_{average}"] = value
        per_group[mode] = _by_group(items, predicted, gold)
        for record, p, g in zip(logged, predicted, gold):
            record[mode].update(predicted=p, correct=p == g)
    return {
        "metrics": dict(sorted(metrics.items())),
        "questions": len(items),
        "per_group": per_group if any(it.group for it in items) else {},
        "logged": logged,
    }


def _by_group(items, predicted, gold) -> dict[str, float]:
    right: defaultdict[str, int] = defaultdict(int)
    seen: defaultdict[str, int] = defaultdict(int)
    for it, p, g in zip(items, predicted, gold):
        seen[it.group] += 1
        right[it.group] += int(p == g)
    return {group: right[group] / seen[group] for group in sorted(seen)}


def solved(item: Choice) -> str:
    """A few-shot demonstration: the item's prompt followed by its right answer."""
    return f"{item.prompt} {item.labels[item.gold]}\n\n"


def lettered(question: str, options: list[str], letters: str = "ABCDEFGHIJ") -> str:
    """ "question\\nA. first\\nB. second\\n...\\nAnswer:" (MMLU's layout, Hendrycks et al. 2021)."""
    lines = [question.strip()] + [f"{letters[i]}. {str(o).strip()}" for i, o in enumerate(options)]
    return "\n".join(lines) + "\nAnswer:"


def lettered_choice(
    question: str, options: list[str], gold: int, *, group: str = "", shots: str = "", instruction: str = ""
) -> Choice:
    """A lettered multiple-choice item: loglik compares " A".." D"; generation must name the letter."""
    letters = [chr(ord("A") + i) for i in range(len(options))]
    prompt = instruction + shots + lettered(question, options)
    ask = f"{prompt[: -len('Answer:')]}\nReply with the letter of the correct option ({', '.join(letters)})."
    return Choice(
        prompt=prompt, options=[f" {x}" for x in letters], labels=letters, gold=gold, group=group, question=ask
    )
