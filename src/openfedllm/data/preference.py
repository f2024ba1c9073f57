"""Preference data: every format converted to (prompt messages, chosen, rejected).

The formats people keep preference data in, each converted with its multi-turn context kept:

- `hh`: Anthropic HH-RLHF. `chosen` and `rejected` are two whole dialogues in
  "\\n\\nHuman: ... \\n\\nAssistant: ..." text that share everything up to the last assistant turn.
- `ultrafeedback`: HuggingFaceH4/ultrafeedback_binarized. `chosen` and `rejected` are message lists
  (role/content) that share every message but the last assistant one; `prompt` is the first turn.
- `sharegpt`: LLaMA-Factory's preference layout. `conversations` (from/value turns, human/gpt/
  system), plus `chosen` and `rejected` turns ({"from": "gpt", "value": ...}); optional `system`.
- `plain`: `prompt`, `chosen`, `rejected`, each a string or (trl's conversational layout) a list
  of messages, of which a response's last assistant message counts.

Rows that cannot be a preference (a missing response, chosen == rejected, an empty prompt, two
dialogues that do not share a prompt) are dropped and counted by reason; a file with no usable
row is an error that names the file and shows the first bad row.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from .alpaca import read_rows
from .templates import IGNORE, Message, Tokenized, encode_head, encode_tail, render_dialogue

FORMATS = ("hh", "ultrafeedback", "sharegpt", "plain")


@dataclass(frozen=True)
class Preference:
    prompt: tuple[tuple[str, str], ...]  # (role, content) turns; the last one is the user's
    chosen: str
    rejected: str
    domain: str = "default"

    def messages(self) -> list[Message]:
        return [{"role": role, "content": content} for role, content in self.prompt]


class BadRow(ValueError):
    """Why a row is not a usable preference; the message is the reason counted in the report."""


def detect_format(row) -> str:
    """The format of a row, from its keys."""
    if not isinstance(row, dict):
        raise BadRow("not a JSON object")
    if "conversations" in row:
        return "sharegpt"
    chosen = row.get("chosen")
    if isinstance(chosen, list) and not isinstance(row.get("prompt"), list):
        return "ultrafeedback"
    if isinstance(chosen, str) and "prompt" not in row and "\n\nHuman:" in chosen:
        return "hh"
    return "plain"


_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
}
_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
_HH_ASSISTANT = "\n\nAssistant:"


def from_hh(row: dict) -> tuple[list[Message], str, str]:
    chosen, rejected = _text(row, "chosen"), _text(row, "rejected")
    cut = chosen.rfind(_HH_ASSISTANT)
    if cut < 0:
        raise BadRow("no Assistant turn in chosen")
    prefix = chosen[: cut + len(_HH_ASSISTANT)]
    if not rejected.startswith(prefix):
        raise BadRow("chosen and rejected do not share a prompt")
    parts = _HH_TURN.split(chosen[:cut])
    if parts[0].strip():  # text before the first marker: the dialogue does not start with a turn
        parts = ["", "Human", parts[0]] + parts[1:]
    messages = [
        {"role": "user" if who == "Human" else "assistant", "content": text.strip()}
        for who, text in zip(parts[1::2], parts[2::2])
    ]
    return messages, chosen[len(prefix) :].strip(), rejected[len(prefix) :].strip()


def from_ultrafeedback(row: dict) -> tuple[list[Message], str, str]:
    chosen, rejected = _messages(row, "chosen"), _messages(row, "rejected")
    if not chosen or chosen[-1]["role"] != "assistant" or not rejected or rejected[-1]["role"] != "assistant":
        raise BadRow("missing chosen or rejected")
    prompt = chosen[:-1]
    if rejected[:-1] != prompt:
        raise BadRow("chosen and rejected do not share a prompt")
    if not prompt and isinstance(row.get("prompt"), str):
        prompt = [{"role": "user", "content": row["prompt"]}]
    return prompt, chosen[-1]["content"], rejected[-1]["content"]


def from_sharegpt(row: dict) -> tuple[list[Message], str, str]:
    turns = row.get("conversations")
    if not isinstance(turns, list):
        raise BadRow("conversations is not a list")
    messages = [_sharegpt_turn(t) for t in turns]
    if isinstance(row.get("system"), str) and row["system"].strip():
        messages = [{"role": "system", "content": row["system"]}] + messages
    responses = []
    for key in ("chosen", "rejected"):
        value = row.get(key)
        if isinstance(value, dict):
            value = _sharegpt_turn(value)["content"]
        if not isinstance(value, str):
            raise BadRow("missing chosen or rejected")
        responses.append(value)
    return messages, responses[0], responses[1]


def from_plain(row: dict) -> tuple[list[Message], str, str]:
    prompt = row.get("prompt")
    if isinstance(prompt, list):
        messages = [_message(m) for m in prompt]
    elif isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    else:
        raise BadRow("empty prompt")
    if isinstance(row.get("system"), str) and row["system"].strip():
        messages = [{"role": "system", "content": row["system"]}] + messages
    responses = []
    for key in ("chosen", "rejected"):
        value = row.get(key)
        if isinstance(value, list):  # trl's conversational layout: the last assistant message
            said = [m for m in map(_message, value) if m["role"] == "assistant"]
            value = said[-1]["content"] if said else None
        if not isinstance(value, str):
            raise BadRow("missing chosen or rejected")
        responses.append(value)
    return messages, responses[0], responses[1]


CONVERTERS = {"hh": from_hh, "ultrafeedback": from_ultrafeedback, "sharegpt": from_sharegpt, "plain": from_plain}


def convert(row, fmt: str, domain: str = "default") -> Preference:
    """One row as a Preference, or BadRow naming why it cannot be one."""
    if not isinstance(row, dict):
        raise BadRow("not a JSON object")
    messages, chosen, rejected = CONVERTERS[fmt](row)
    if not any(m["role"] == "user" and m["content"].strip() for m in messages):
        raise BadRow("empty prompt")
    if messages[-1]["role"] != "user":
        raise BadRow("prompt does not end with a user turn")
    if not chosen.strip() or not rejected.strip():
        raise BadRow("missing chosen or rejected")
    if chosen.strip() == rejected.strip():
        raise BadRow("chosen equals rejected")
    return Preference(tuple((m["role"], m["content"]) for m in messages), chosen, rejected, domain)


@dataclass
class LoadReport:
    rows: int  # rows in the file
    dropped: Counter  # reason -> rows
    first_bad: tuple[int, str, str] | None  # (row number, reason, the row as text)

    def summary(self, usable: int) -> str:
        reasons = ", ".join(f"{n} {why}" for why, n in self.dropped.most_common())
        return f"{self.rows} rows read, {usable} usable" + (f"; dropped: {reasons}" if reasons else "")


def load_preferences(path: str, fmt: str = "auto") -> tuple[list[Preference], LoadReport]:
    """The usable preferences of a JSON/JSONL file, and what was dropped and why."""
    return convert_rows(read_rows(path), fmt, path)


def load_preference_data(data_config) -> tuple[list[Preference], LoadReport, str]:
    """Preferences of `data.path` (any file type) or of a known dataset (`data.name`)."""
    from . import source_table

    local_json = Path(data_config.path).suffix.lower() in (".json", ".jsonl")
    if data_config.path and local_json and not data_config.name:
        # read row by row: preference files mix strings and message lists in one column
        prefs, report = load_preferences(data_config.path, data_config.format)
        return prefs, report, data_config.path
    table, where, entry = source_table(data_config, "dpo")
    fmt = data_config.format if data_config.format != "auto" else (entry.format if entry else "auto")
    prefs, report = convert_rows(table.to_list(), fmt, where)
    return prefs, report, where


def convert_rows(rows: list, fmt: str, path: str) -> tuple[list[Preference], LoadReport]:
    if not rows:
        raise UserError(f"{path}: no rows")
    if fmt == "auto":
        try:
            fmt = detect_format(rows[0])
        except BadRow as exc:
            raise UserError(f"{path}: row 1 {exc}") from None
    if fmt not in CONVERTERS:
        raise UserError(f"data.format: {fmt!r} is not a preference format; valid: auto, {', '.join(FORMATS)}")
    out: list[Preference] = []
    dropped: Counter[str] = Counter()
    first_bad: tuple[int, str, str] | None = None
    for number, row in enumerate(rows, start=1):
        try:
            out.append(convert(row, fmt))
        except BadRow as exc:
            dropped[str(exc)] += 1
            if first_bad is None:
                first_bad = (number, str(exc), json.dumps(row, ensure_ascii=False)[:300])
    report = LoadReport(len(rows), dropped, first_bad)
    if not out:
        number, why, text = first_bad or (0, "no rows", "")
        raise UserError(
            f"{path}: no usable preference pair as {fmt} ({report.summary(0)}); first bad row {number} ({why}): {text}"
        )
    return out, report


@dataclass
class PairRow:
    """A tokenized preference pair, with the reference model's log-probabilities of each response."""

    chosen: Tokenized
    rejected: Tokenized
    ref_chosen: float = 0.0  # sum of the reference's token log-probs of the chosen response
    ref_rejected: float = 0.0


def tokenize_pair(
    pref: Preference, template: str, tokenizer, max_length: int, max_prompt_length: int
) -> PairRow | None:
    """Prompt + each response as token ids, loss on the response; None if a response is cut away.

    An over-long prompt keeps its end (the latest turns, where the question is) within
    `max_prompt_length`; a response is then cut at the end to fit `max_length` in total.
    """
    rows = []
    for response in (pref.chosen, pref.rejected):
        prompt, completion = render_dialogue(template, pref.messages(), response, tokenizer)
        prompt_ids = encode_tail(tokenizer, prompt, template != "chat", max_prompt_length)
        room = max(0, max_length - len(prompt_ids))
        completion_ids = encode_head(tokenizer, completion, False, room)[:room] if room else []
        if not completion_ids:
            return None
        rows.append(
            Tokenized(prompt_ids + completion_ids, [IGNORE] * len(prompt_ids) + completion_ids, len(prompt_ids))
        )
    return PairRow(rows[0], rows[1])


def _text(row: dict, key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise BadRow("missing chosen or rejected")
    return value


def _message(m) -> Message:
    if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in _ROLES:
        raise BadRow("a message without role/content")
    return {"role": _ROLES[m["role"]], "content": m["content"]}


def _messages(row: dict, key: str) -> list[Message]:
    value = row.get(key)
    if not isinstance(value, list):
        raise BadRow("missing chosen or rejected")
    return [_message(m) for m in value]


def _sharegpt_turn(turn) -> Message:
    if not isinstance(turn, dict) or not isinstance(turn.get("value"), str) or turn.get("from") not in _ROLES:
        raise BadRow("a turn without from/value")
    return {"role": _ROLES[turn["from"]], "content": turn["value"]}
