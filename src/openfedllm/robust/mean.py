"""The mean: every algorithm's default, clients weighted by their number of training examples.

McMahan et al. 2017 (FedAvg, Algorithm 1): Delta = sum_i (n_i / n) (y_i - x). Not robust: one
client can move it anywhere (Blanchard et al. 2017, Lemma 1).
"""

from __future__ import annotations

from ..algorithms.base import weighted_mean
from .moves import Moves


def mean(moves: Moves, sizes: list[int], **_) -> tuple[dict, list[int]]:
    """(the example-weighted mean move, the clients used: all)."""
    return weighted_mean(moves, [float(n) for n in sizes]), list(range(len(moves)))
