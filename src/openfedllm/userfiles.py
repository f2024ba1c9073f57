"""Reading and writing the user's files with one-line errors: text, YAML and JSON that may be
missing, a folder, not UTF-8, invalid or nested without end; safetensors files that may be
truncated; output places that may be files, full or read-only."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import UserError


def read_text(path, what: str) -> str:
    """A text file's content, or one UserError naming `what` and the file (missing, a folder,
    unreadable, not UTF-8)."""
    file = Path(path).expanduser()
    try:
        return file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{what}: file not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{what}: {path} is a folder, not a file") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{what}: {path} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise UserError(f"{what}: cannot read {path}: {exc.strerror}") from None


def read_yaml(path, what: str):
    """A YAML file's content, or one UserError (as read_text, plus invalid or endlessly nested YAML)."""
    import yaml

    text = read_text(path, what)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"{what}: {path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise UserError(f"{what}: {path}: nested too deeply to read") from None


def read_json(path, what: str):
    """A JSON file's content, or one UserError (as read_text, plus invalid or endlessly nested JSON)."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{what}: {path}: not valid JSON at line {exc.lineno}: {exc.msg}") from None
    except RecursionError:
        raise UserError(f"{what}: {path}: nested too deeply to read") from None


def check_safetensors(file: Path, what: str) -> None:
    """A safetensors file whose header parses and whose size matches it (a truncated or foreign
    file fails here, with one line, instead of deep inside a loader)."""
    try:
        with open(file, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size)) if 0 < size < 100 * 2**20 else None
    except FileNotFoundError:
        raise UserError(f"{what}: {file} is missing") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{what}: {file} is not a safetensors file ({exc})") from None
    if not isinstance(header, dict):
        raise UserError(f"{what}: {file} is not a safetensors file")
    ends = [
        v["data_offsets"][1]
        for k, v in header.items()
        if k != "__metadata__"
        and isinstance(v, dict)
        and isinstance(v.get("data_offsets"), list)
        and len(v["data_offsets"]) == 2
    ]
    expected = 8 + size + max(ends, default=0)
    actual = file.stat().st_size
    if actual != expected:
        raise UserError(f"{what}: {file} is truncated or damaged ({actual} bytes, its header says {expected})")


def check_output_file(path: Path, what: str) -> None:
    """A file the command will write: not a folder, in a folder that exists or can be made, writable."""
    import tempfile

    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give a file name")
    parent = next((p for p in path.absolute().parents if p.exists()), Path("/"))
    if not parent.is_dir():
        raise UserError(f"{what} {path}: {parent} is a file, not a folder")
    try:
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as exc:
        raise UserError(f"{what} {path}: cannot write in {parent} ({exc.strerror})") from None


def check_output_dir(path: Path, what: str = "--output-dir") -> None:
    """A folder a run or export may create: not a file, empty if it exists, and on a writable
    filesystem (tried with a temporary folder that is removed at once)."""
    import tempfile

    if path.exists():
        if not path.is_dir():
            raise UserError(f"{what} {path} is a file, not a folder")
        if any(path.iterdir()):
            raise UserError(f"{what} {path} already holds files; pick another")
    parent = path if path.exists() else next((p for p in path.absolute().parents if p.exists()), Path("/"))
    if not parent.is_dir():
        raise UserError(f"{what} {path}: {parent} is a file, not a folder")
    try:
        tempfile.TemporaryDirectory(dir=parent, prefix=".openfedllm-probe-").cleanup()
    except OSError as exc:
        raise UserError(f"{what} {path}: cannot write in {parent} ({exc.strerror})") from None
