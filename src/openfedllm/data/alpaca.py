"""Local Alpaca-format files: rows with instruction, optional input, and output (JSON or JSONL)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from .example import Example


def read_rows(path: str) -> list[dict]:
    """The rows of a JSON list or a JSONL file; a parse error names the file and line."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"data.path: file not found: {path}")
    text = file.read_text(encoding="utf-8")
    if file.suffix == ".json" or text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: not valid JSON at line {exc.lineno}: {exc.msg}") from None
        if isinstance(rows, dict) and isinstance(rows.get("data"), list):
            rows = rows["data"]
        if not isinstance(rows, list):
            raise UserError(f"{path}: expected a JSON list of rows")
        return rows
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: line {lineno} is not valid JSON: {exc.msg}") from None
    return rows


def load_alpaca(path: str) -> list[Example]:
    """Examples from an Alpaca file; a row without a string instruction/output is an error."""
    rows = read_rows(path)
    if not rows:
        raise UserError(f"{path}: no rows")
    examples = []
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise UserError(f"{path}: row {i} is not an object with instruction/input/output")
        for key in ("instruction", "output"):
            if not isinstance(row.get(key), str):
                raise UserError(
                    f"{path}: row {i} has no string field {key!r} (has: {', '.join(sorted(row)) or 'nothing'})"
                )
        extra = row.get("input", "")
        if not isinstance(extra, str):
            raise UserError(f"{path}: row {i} field 'input' is not a string")
        domain = row.get("domain") or row.get("category") or "default"
        examples.append(
            Example(instruction=row["instruction"], input=extra, output=row["output"], domain=str(domain), check="none")
        )
    return examples
