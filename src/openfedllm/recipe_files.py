"""The recipes shipped inside the package (src/openfedllm/recipes, `configs/` in a checkout): found by
name, listed and copied, as torchtune's `tune ls` / `tune cp`, so that they work from a wheel install
and from any directory."""

from __future__ import annotations

import shutil
from pathlib import Path

from .errors import UserError

RECIPES = Path(__file__).resolve().parent / "recipes"


def names() -> list[str]:
    """Every recipe's name: its path under the recipes folder, without .yaml (e.g. paper/sft_llama2_7b)."""
    return sorted(str(p.relative_to(RECIPES).with_suffix("")) for p in RECIPES.rglob("*.yaml"))


def find(name: str, objective: str | None = None) -> Path | None:
    """The shipped recipe called `name` (`quick` means `sft_quick` for sft), or None."""
    candidates = [name] + ([f"{objective}_{name}"] if objective else [])
    for candidate in candidates:
        path = RECIPES / f"{candidate.removesuffix('.yaml')}.yaml"
        if path.is_file() and RECIPES in path.resolve().parents:
            return path
    return None


def about(path: Path) -> str:
    """The recipe's first comment line: what it is."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def copy(name: str, dest: Path) -> Path:
    path = find(name)
    if path is None:
        raise UserError(f"recipes cp: no recipe {name!r}; see openfedllm recipes")
    if dest.is_dir():
        dest = dest / path.name
    if dest.exists():
        raise UserError(f"recipes cp: {dest} exists; not overwriting it")
    shutil.copyfile(path, dest)
    return dest
