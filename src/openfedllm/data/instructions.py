"""Instruction data in the formats people keep it in, turned into Examples, with hygiene counts.

Formats (`data.format`, or detected from the columns):
- `alpaca`: instruction, optional input, output (also `response` for output, as Dolly has it);
- `sharegpt`: `conversations`, a list of {from, value} turns (human / gpt / system);
- `messages`: OpenAI chat layout, `messages`, a list of {role, content};
- `prompt_response`: one prompt column and one response column (prompt/response,
  prompt/completion, question/answer, input/output, query/response).

A conversation trains on every assistant turn (`Example.turns`); single-turn rows keep the
instruction / input / output of the suite's examples. Hygiene drops rows with an empty response,
a cell that is not text (a number, list or object where the text goes, in a JSON file) and exact
duplicates, and counts each rule; a dataset with no usable row is an error that names the file
and shows the first bad row.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

from ..errors import UserError
from .example import Example

INSTRUCTION_FORMATS = ("alpaca", "sharegpt", "messages", "prompt_response")
PROMPT_RESPONSE = (
    ("prompt", "response"),
    ("prompt", "completion"),
    ("question", "answer"),
    ("query", "response"),
    ("input", "output"),
)
LABEL_COLUMNS = ("category", "domain", "label", "source")  # tried in order when data.label_column is auto
_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "model": "assistant",
}


@dataclass
class Columns:
    """Where a format's fields live in a table (a registry entry can name them)."""

    instruction: str = "instruction"
    output: str = "output"
    input: str | None = "input"
    conversation: str | None = None  # sharegpt / messages: the column holding the turns


@dataclass
class Hygiene:
    rows: int = 0
    dropped: Counter = field(default_factory=Counter)  # rule -> rows
    first_bad: tuple[int, str, str] | None = None  # (row number, rule, the row as text)
    label: str | None = None  # the column that labels rows (for label-based splits), if any

    def drop(self, number: int, rule: str, row) -> None:
        self.dropped[rule] += 1
        if self.first_bad is None:
            self.first_bad = (number, rule, json.dumps(row, ensure_ascii=False, default=str)[:300])

    def summary(self, usable: int) -> str:
        reasons = ", ".join(f"{n} {why}" for why, n in self.dropped.most_common())
        return f"{self.rows} rows read, {usable} usable" + (f"; dropped: {reasons}" if reasons else "")


def detect(columns: list[str], where: str) -> tuple[str, Columns]:
    names = set(columns)
    if "conversations" in names:
        return "sharegpt", Columns(conversation="conversations")
    if "messages" in names:
        return "messages", Columns(conversation="messages")
    if "instruction" in names and ("output" in names or "response" in names):
        return "alpaca", columns_for("alpaca", columns)
    for prompt, response in PROMPT_RESPONSE:
        if prompt in names and response in names:
            return "prompt_response", Columns(prompt, response, None)
    raise UserError(
        f"{where}: cannot tell the data format from its columns ({', '.join(columns)}); "
        f"expected instruction/output, conversations, messages, or prompt/response "
        f"(declare data.format: {', '.join(INSTRUCTION_FORMATS)})"
    )


def columns_for(fmt: str, columns: list[str]) -> Columns:
    names = set(columns)
    if fmt == "sharegpt":
        return Columns(conversation="conversations")
    if fmt == "messages":
        return Columns(conversation="messages")
    if fmt == "alpaca":
        output = "output" if "output" in names or "response" not in names else "response"
        extra = "input" if "input" in names else ("context" if "context" in names else None)
        return Columns("instruction", output, extra)
    for prompt, response in PROMPT_RESPONSE:
        if prompt in names and response in names:
            return Columns(prompt, response, None)
    return Columns("prompt", "response", None)


def to_examples(table, fmt: str, cols: Columns, label_column: str, where: str) -> tuple[list[Example], Hygiene]:
    """The usable Examples of an Arrow-backed table, and what hygiene dropped."""
    names = list(table.column_names)
    needed = [cols.conversation] if cols.conversation else [cols.instruction, cols.output]
    missing = [c for c in needed if c not in names]
    if missing:
        raise UserError(
            f"{where}: no column {', '.join(repr(c) for c in missing)} for data.format={fmt} "
            f"(columns: {', '.join(names)})"
        )
    label = _label_column(label_column, names, where)
    labels = _column(table, label) if label else None
    hygiene = Hygiene(rows=len(table), label=label)
    seen: set = set()
    out: list[Example] = []
    if cols.conversation:
        column = _column(table, cols.conversation)
        for i, turns in enumerate(column):
            example, why = _conversation(
                turns, "from" if fmt == "sharegpt" else "role", "value" if fmt == "sharegpt" else "content"
            )
            domain = str(labels[i]) if labels and labels[i] is not None else "default"
            _keep(
                example and Example(example[0], example[1], "", domain, "none", example[2]),
                why,
                i,
                turns,
                hygiene,
                seen,
                out,
            )
        return out, hygiene
    instructions = _column(table, cols.instruction, typed=True)
    outputs = _column(table, cols.output, typed=True)
    inputs = _column(table, cols.input, typed=True) if cols.input and cols.input in names else None
    for i in range(len(instructions)):
        instruction, output = instructions[i], outputs[i]
        extra = inputs[i] if inputs else ""
        domain = str(labels[i]) if labels and labels[i] is not None else "default"
        example, why = None, None
        if any(isinstance(v, _NotText) for v in (instruction, output, extra)):
            why = "not text"
        elif not isinstance(instruction, str) or not instruction.strip():
            why = "empty instruction"
        elif not isinstance(output, str) or not output.strip():
            why = "empty response"
        else:
            example = Example(instruction, output, extra if isinstance(extra, str) else "", domain, "none")
        row = {"instruction": instruction, "input": extra, "output": output}
        _keep(
            example, why, i, {k: v.value if isinstance(v, _NotText) else v for k, v in row.items()}, hygiene, seen, out
        )
    return out, hygiene


class _NotText:
    """A cell of a text column that holds a number, list or object (a JSON file mixing types)."""

    def __init__(self, value):
        self.value = value

    def __repr__(self):
        return json.dumps(self.value, ensure_ascii=False)[:100]


def _column(table, name: str, typed: bool = False) -> list:
    """A column as Python values, one column at a time (no per-row dicts).

    `datasets` types a JSON column whose cells mix strings with numbers, lists or objects as Json
    and hands out each cell as JSON text (`"Answer"` with its quotes): decode those cells; with
    `typed`, a decoded cell that is not a string is marked _NotText (dropped and counted), while a
    column that is numbers throughout (a CSV reader's guess) is read as text.
    """
    import datasets

    if "arrow.json" in str(table.data.schema.field(name).type):
        values = table[name][:]  # datasets decodes its Json cells (also inside lists of messages)
        if typed and isinstance(table.features.get(name), datasets.Json):
            values = [v if v is None or isinstance(v, str) else _NotText(v) for v in values]
        return values
    values = table.data.column(name).to_pylist()  # plain Arrow: no per-cell decoding
    if typed:
        values = [str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for v in values]
    return values


def _keep(example, why, i, row, hygiene: Hygiene, seen: set, out: list) -> None:
    if example is None:
        hygiene.drop(i + 1, why, row)
        return
    key = (example.instruction, example.input, example.output, example.turns)
    if key in seen:
        hygiene.drop(i + 1, "exact duplicate", row)
        return
    seen.add(key)
    out.append(example)


def _conversation(turns, role_key: str, text_key: str):
    """(last user text, last assistant text, all turns) of a conversation, or (None, why)."""
    if not isinstance(turns, list):
        return None, "malformed conversation"
    messages = []
    for t in turns:
        if isinstance(t, dict) and t.get(text_key) is not None and not isinstance(t.get(text_key), str):
            return None, "not text"  # a content that is a list of parts or an object
        if not isinstance(t, dict) or not isinstance(t.get(text_key), str) or t.get(role_key) not in _ROLES:
            return None, "malformed conversation"
        messages.append((_ROLES[t[role_key]], t[text_key]))
    while messages and messages[-1][0] != "assistant":
        messages.pop()  # a trailing user turn has no answer to learn
    if not messages or not messages[-1][1].strip():
        return None, "empty response"
    users = [text for role, text in messages if role == "user"]
    if not users or not users[-1].strip():
        return None, "empty instruction"
    return (users[-1], messages[-1][1], tuple(messages)), None


def _label_column(label_column: str, names: list[str], where: str) -> str | None:
    if label_column:
        if label_column not in names:
            raise UserError(f"data.label_column: {where} has no column {label_column!r} (columns: {', '.join(names)})")
        return label_column
    return next((c for c in LABEL_COLUMNS if c in names), None)


def usable_or_error(examples: list[Example], hygiene: Hygiene, where: str) -> list[Example]:
    if not examples:
        number, rule, text = hygiene.first_bad or (0, "no rows", "")
        raise UserError(f"{where}: no usable row ({hygiene.summary(0)}); first bad row {number} ({rule}): {text}")
    return examples
