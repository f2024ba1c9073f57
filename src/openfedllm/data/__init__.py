"""Training data: the built-in suite or a user's Alpaca file, split into train and held-out."""

from __future__ import annotations

import random

from .alpaca import load_alpaca
from .example import Example, is_correct
from .suite import DOMAINS, train_and_heldout


def load_examples(data_config, seed: int) -> tuple[list[Example], list[Example]]:
    """(training examples, held-out examples) for a run."""
    if not data_config.path:
        return train_and_heldout(data_config.train_per_domain, data_config.heldout_per_domain, seed)
    return split_heldout(load_alpaca(data_config.path), data_config, seed)


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


__all__ = ["DOMAINS", "Example", "is_correct", "load_examples", "split_heldout"]
