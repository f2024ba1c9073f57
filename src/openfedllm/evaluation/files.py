"""Reading a benchmark's native files (or its hub copy when online), with one-line errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ..errors import UserError

_READ: list[str] = []  # where the benchmark being run read its data from (see `sources_read`)


def note_source(where: str) -> None:
    """Record a file or hub dataset a benchmark read, for the settings OUT.json states."""
    if where not in _READ:
        _READ.append(where)


def sources_read(start: bool = False) -> list[str]:
    """What was read since the last `sources_read(start=True)` (which also empties the record)."""
    found = list(_READ)
    if start:
        _READ.clear()
    return found


def table_rows(benchmark: str, data: str | None, hub: tuple[str, str | None, str] | None = None) -> list[dict]:
    """The rows of `--data` (JSON, JSONL, CSV, Parquet, a folder of them), else of the hub dataset."""
    from ..data.sources import load_hub, read_table

    try:
        if data:
            rows = read_table(data).to_list()
            note_source(str(Path(data).expanduser().resolve()))
            return rows
        if hub is None:
            raise UserError(f"{benchmark}: needs --data (no hub copy is wired in for it)")
        rows = load_hub(*hub).to_list()
        name, config, split = hub
        note_source(f"hub:{name}" + (f"/{config}" if config else "") + f" ({split})")
        return rows
    except UserError as exc:
        message = str(exc).replace("data.path: ", "").replace("data.name: ", "").replace("--data.path", "--data")
        raise UserError(message if message.startswith(benchmark) else f"{benchmark}: {message}") from None


def read_json(benchmark: str, path: str | Path):
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"{benchmark}: {path}: file not found")
    try:
        found = json.loads(file.read_text(encoding="utf-8"))
        note_source(str(file.resolve()))
        return found
    except json.JSONDecodeError as exc:
        raise UserError(f"{benchmark}: {path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None


def read_csv(benchmark: str, path: str | Path, delimiter: str = ",", header: bool = True) -> list:
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"{benchmark}: {path}: file not found")
    with open(file, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter=delimiter) if header else csv.reader(f, delimiter=delimiter)
        rows = list(reader)
    if not rows:
        raise UserError(f"{benchmark}: {path}: no rows")
    note_source(str(file.resolve()))
    return rows


def need(benchmark: str, rows: list[dict], columns: tuple[str, ...], where: str, layout: str) -> None:
    """Every row has the columns, else one line naming the first row that lacks one."""
    for i, row in enumerate(rows, start=1):
        missing = [c for c in columns if row.get(c) in (None, "")]
        if missing:
            raise UserError(f"{benchmark}: {where}: row {i} has no {', '.join(missing)} (expected {layout})")


def first_per_group(items: list, limit: int | None, key) -> list:
    """At most `limit` items of each group (subject, task), in order; all when limit is None."""
    if not limit:
        return items
    seen: dict = {}
    kept = []
    for it in items:
        group = key(it)
        if seen.get(group, 0) < limit:
            seen[group] = seen.get(group, 0) + 1
            kept.append(it)
    return kept


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """One JSON object per line, written atomically (a temporary file, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(path)
