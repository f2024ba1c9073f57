"""Reading a user's data: JSON, JSONL, CSV, Parquet, a `datasets` save_to_disk folder, or a folder
of such files, into an Arrow-backed `datasets.Dataset`, which memory-maps the data instead of
loading it whole into RAM; and hub datasets by name when the machine is online.

Every failure is one line that names the file: a missing file, an empty one, a truncated JSON
(with the first line that does not parse), an unknown suffix.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError

KINDS = {".json": "json", ".jsonl": "json", ".ndjson": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}


def read_table(path: str):
    """The rows of a local file or folder as a `datasets.Dataset` (Arrow, memory-mapped)."""
    import datasets

    file = Path(path).expanduser()
    if not file.exists():
        raise UserError(f"data.path: file not found: {path}")
    datasets.disable_progress_bars()
    if file.is_dir() and ((file / "dataset_info.json").is_file() or (file / "dataset_dict.json").is_file()):
        try:
            loaded = datasets.load_from_disk(str(file))
        except Exception as exc:  # noqa: BLE001 - a damaged save_to_disk folder: one line naming it
            first = (str(exc) or type(exc).__name__).splitlines()[0][:200]
            raise UserError(f"data.path: {path}: cannot read as a datasets folder: {first}") from None
        if isinstance(loaded, datasets.DatasetDict):
            split = "train" if "train" in loaded else next(iter(loaded))
            loaded = loaded[split]
        return _nonempty(loaded, path)
    files = sorted(f for f in file.iterdir() if f.suffix.lower() in KINDS) if file.is_dir() else [file]
    if not files:
        raise UserError(f"data.path: {path} holds no .json, .jsonl, .csv or .parquet file")
    if any(f.suffix.lower() not in KINDS for f in files):
        raise UserError(f"data.path: {path}: unknown file type (use .json, .jsonl, .csv, .tsv or .parquet)")
    kinds = {KINDS[f.suffix.lower()] for f in files}
    if len(kinds) > 1:
        raise UserError(f"data.path: {path} mixes file types ({', '.join(sorted(kinds))}); keep one per folder")
    kind = kinds.pop()
    for f in files:
        if f.stat().st_size == 0:
            raise UserError(f"{f}: empty file")
    if kind == "json":
        for f in files:
            _check_json_rows(f)
    if kind == "csv":
        for f in files:
            _check_csv_rows(f, "\t" if f.suffix.lower() == ".tsv" else ",")
    options = {"delimiter": "\t"} if kind == "csv" and files[0].suffix.lower() == ".tsv" else {}
    level = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its reader logs an error line before raising
    try:
        loaded = datasets.load_dataset(kind, data_files=[str(f) for f in files], split="train", **options)
    except Exception as exc:  # noqa: BLE001 - every reader error becomes one line naming the file
        raise UserError(_reader_error(files, kind, exc)) from None
    finally:
        datasets.logging.set_verbosity(level)
    return _nonempty(loaded, path)


MAX_DEPTH = 100  # JSON nesting: rows of real data nest a few levels (messages in a list in an object)


def _scan_text(file: Path) -> int:
    """Check that a file is UTF-8 (pyarrow reads other bytes into text columns that fail later)
    and return its deepest bracket nesting (brackets inside strings count too: an upper bound for
    ordinary text); in 16 MiB chunks with numpy, ~0.2 s per 100 MB."""
    import codecs

    import numpy as np

    step = np.zeros(256, dtype=np.int8)
    step[[ord("["), ord("{")]], step[[ord("]"), ord("}")]] = 1, -1
    deepest = depth = lines = 0
    decoder = codecs.getincrementaldecoder("utf-8")()
    with open(file, "rb") as f:
        while chunk := f.read(16 * 2**20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                line = lines + chunk[: exc.start].count(b"\n") + 1
                raise UserError(f"{file}: line {line} is not UTF-8 text") from None
            lines += chunk.count(b"\n")
            levels = depth + np.cumsum(step[np.frombuffer(chunk, dtype=np.uint8)], dtype=np.int64)
            deepest, depth = max(deepest, int(levels.max())), int(levels[-1])
    return deepest


def _check_json_rows(file: Path) -> None:
    """Rows must be JSON objects: datasets' JSON reader crashes the process (a segmentation fault)
    on a file or a first line holding `null`, or on nesting thousands deep, and fails obscurely on
    other scalars. Cheap: the first character of each line (JSON Lines) or of the document, and a
    bracket count."""
    if _scan_text(file) > MAX_DEPTH:
        raise UserError(f"{file}: JSON nested more than {MAX_DEPTH} levels deep; rows are objects of text fields")
    with open(file, "rb") as f:
        if file.suffix.lower() == ".json":
            head = f.read(4096).lstrip()
            if head[:1] not in (b"[", b"{"):
                raise UserError(
                    f"{file}: not a JSON array of objects or JSON Lines (starts with "
                    f"{head[:20].decode('utf-8', 'replace')!r})"
                )
            return
        for lineno, line in enumerate(f, start=1):
            start = line.lstrip()[:1]
            if start and start not in (b"{", b"["):  # an array: a JSON document in a .jsonl file
                shown = line.strip()[:40].decode("utf-8", "replace")
                try:
                    json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
                    raise UserError(f"{file}: line {lineno} is not valid JSON ({shown!r})") from None
                raise UserError(f"{file}: line {lineno} is not a JSON object ({shown!r})")


def _check_csv_rows(file: Path, delimiter: str) -> None:
    """Every row must have as many fields as the header: a ragged row would shift its columns."""
    import csv

    csv.field_size_limit(2**31 - 1)  # long texts are rows too (the default limit is 128 KiB)
    with open(file, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f, delimiter=delimiter)
        try:
            header = next(reader, None)
            for row in reader:
                if row and header and len(row) != len(header):
                    raise UserError(
                        f"{file}: row {reader.line_num} has {len(row)} fields, the header "
                        f"{len(header)} ({', '.join(header)})"
                    )
        except csv.Error as exc:
            raise UserError(f"{file}: cannot read as csv: line {reader.line_num}: {exc}") from None


def _nonempty(table, path: str):
    if len(table) == 0:
        raise UserError(f"{path}: no rows")
    return table


def _reader_error(files: list[Path], kind: str, exc: Exception) -> str:
    if kind == "json":
        for f in files:  # find the first line that does not parse (only on this error path)
            where = _first_bad_json(f)
            if where:
                return f"{f}: {where}"
    root: BaseException = exc
    while (cause := root.__cause__ or root.__context__) is not None:
        root = cause
    first = (str(root) or type(root).__name__).splitlines()[0]
    place = files[0] if len(files) == 1 else files[0].parent
    if "corresponds to no data" in first:  # e.g. a JSON file holding []
        return f"{place}: no rows"
    return f"{place}: cannot read as {kind}: {first}"


def _first_bad_json(file: Path) -> str | None:
    text = file.read_text(encoding="utf-8", errors="replace")
    if text.lstrip().startswith("["):
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            return f"not valid JSON at line {exc.lineno}: {exc.msg}"
        return None
    for lineno, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                json.loads(line)
            except json.JSONDecodeError as exc:
                return f"line {lineno} is not valid JSON: {exc.msg}"
    return None


def load_hub(name: str, config: str | None, split: str):
    """A hub dataset by name (needs the network, or the Hugging Face cache when offline)."""
    import datasets

    datasets.disable_progress_bars()
    try:
        return datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # noqa: BLE001
        first = (str(exc) or type(exc).__name__).splitlines()[0]
        raise UserError(
            f"data.name: cannot load {name} from the Hugging Face hub ({first}); offline, "
            f"download it elsewhere and pass the file or folder as --data.path"
        ) from None
