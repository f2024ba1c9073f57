"""Training data: the built-in suite, a known dataset, or a user's files, split into train and held-out."""

from __future__ import annotations

import random
from dataclasses import replace

from ..errors import UserError
from .example import Example, is_correct
from .instructions import LABEL_COLUMNS, Hygiene, columns_for, detect, to_examples, usable_or_error
from .registry import known
from .sources import load_hub, read_table
from .suite import DOMAINS, train_and_heldout

# Splits that mean nothing without labels (the domain split of unlabelled rows is an even, iid split)
LABEL_SPLITS = ("dirichlet", "key", "shards")
FEW_HELDOUT = 20  # below this, an accuracy moves in steps of 5 points or more: say so


def load_examples(data_config, seed: int, split: str = "iid") -> tuple[list[Example], list[Example]]:
    """(training examples, held-out examples) for a run; `split` (fed.split) says whether rows need labels."""
    if not data_config.path and not data_config.name:
        return train_and_heldout(
            data_config.train_per_domain, data_config.heldout_per_domain, seed, tuple(data_config.domains) or DOMAINS
        )
    examples, hygiene, where = load_instruction_data(data_config)
    labels = f"labels from column {hygiene.label!r}" if hygiene.label else "no label column"
    print(f"Data {where}: {hygiene.summary(len(examples))}; {labels}")
    if split == "domain" and not hygiene.label:
        print("(no label column: the domain split deals the rows out evenly, as iid does)")
    if split in LABEL_SPLITS and not hygiene.label:
        raise UserError(
            f"fed.split {split} deals rows out by label, but {where} has no label column: set data.label_column, "
            f"or give the rows one of the columns {', '.join(LABEL_COLUMNS)} (or use fed.split iid or quantity)"
        )
    if data_config.eval_path:
        held, held_hygiene, held_where = load_instruction_data(
            replace(data_config, path=data_config.eval_path, name="")
        )
        print(f"Validation data {held_where}: {held_hygiene.summary(len(held))}")
        train = examples
    else:
        train, held = split_heldout(examples, data_config, seed)
        print(
            f"Held out {len(held)} of {len(examples)} rows for evaluation (data.heldout_fraction "
            f"{data_config.heldout_fraction:g}, at most data.max_heldout {data_config.max_heldout}; "
            "or give data.eval_path)"
        )
    if 0 < len(held) < FEW_HELDOUT:
        print(f"warning: {len(held)} held-out rows: each moves an accuracy by {100 / len(held):.0f} points")
    return train, held


def source_table(data_config, objective: str):
    """(the rows as an Arrow-backed table, where they came from, the registry entry or None); a named
    dataset must hold `objective`'s kind of data."""
    entry = known(data_config.name, objective) if data_config.name else None
    if data_config.path:
        return read_table(data_config.path), data_config.path, entry
    if entry is None:
        raise UserError("data: give data.path or data.name")
    return load_hub(entry.hub[0], entry.config, entry.split), entry.hub[0], entry


def load_instruction_data(data_config) -> tuple[list[Example], Hygiene, str]:
    """The usable Examples of a named dataset or a local file/folder, what hygiene dropped, and where."""
    table, where, entry = source_table(data_config, "sft")
    fmt = data_config.format if data_config.format != "auto" else (entry.format if entry else "auto")
    if fmt == "auto":
        fmt, cols = detect(list(table.column_names), where)
    elif entry is not None and fmt == entry.format and entry.columns is not None:
        cols = entry.columns
    else:
        cols = columns_for(fmt, list(table.column_names))
    label = data_config.label_column or (entry.label if entry else "")
    examples, hygiene = to_examples(table, fmt, cols, label, where)
    return usable_or_error(examples, hygiene, where), hygiene, where


def split_heldout(items: list, data_config, seed: int) -> tuple[list, list]:
    """(training items, held-out items) of a user's file: a seeded share, at most data.max_heldout."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_held = min(data_config.max_heldout, max(1, round(len(items) * data_config.heldout_fraction)))
    if len(items) - n_held < 1:
        n_held = 0  # a one-row file trains; it just has nothing held out
    held = [items[i] for i in sorted(order[:n_held])]
    train = [items[i] for i in sorted(order[n_held:])]
    return train, held


__all__ = [
    "DOMAINS",
    "Example",
    "is_correct",
    "load_examples",
    "load_instruction_data",
    "source_table",
    "split_heldout",
]
