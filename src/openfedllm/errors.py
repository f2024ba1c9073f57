"""Errors a user can cause.

Anything raised as `UserError` is printed by the CLI as one line and exits non-zero, with no
traceback: the message itself must name the key, file or row that is wrong.
"""


class UserError(Exception):
    """Bad input from the user: a config key, a file, a row, an impossible setting."""


def read_text(path, what: str) -> str:
    """A text file's content, or one UserError naming `what` and the file (missing, a folder,
    unreadable, not UTF-8)."""
    from pathlib import Path

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
    import json

    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{what}: {path}: not valid JSON at line {exc.lineno}: {exc.msg}") from None
    except RecursionError:
        raise UserError(f"{what}: {path}: nested too deeply to read") from None
