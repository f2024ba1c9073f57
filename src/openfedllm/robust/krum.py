"""Krum and Multi-Krum.

Blanchard, El Mhamdi, Guerraoui and Stainer, "Machine Learning with Adversaries: Byzantine Tolerant
Gradient Descent", NeurIPS 2017, Sec. 4: with n clients of which at most f are Byzantine, client
i's score is the sum of the squared distances from its move to its n - f - 2 nearest neighbours'
(at least one); Krum keeps the move of lowest score; Multi-Krum keeps the m lowest-scoring moves
and averages them (weighted by examples, as Flower's MultiKrum; m = n - f unless
`fed.multikrum_keep` says). Scores and ties follow Flower's `aggregate_krum` (a test compares).
Krum's guarantee needs n > 2f + 2.
"""

from __future__ import annotations

from ..algorithms.base import weighted_mean
from .moves import Moves, squared_distances


def scores(moves: Moves, byzantine: int) -> list[float]:
    """Each client's Krum score."""
    distances = squared_distances(moves)
    closest = max(1, len(moves) - byzantine - 2)
    # column 0 of the sorted row is the client itself (distance 0)
    return [float(row.sort().values[1 : closest + 1].sum()) for row in distances]


def krum(moves: Moves, sizes: list[int], krum_byzantine: int = 0, **_) -> tuple[dict, list[int]]:
    """(the move of the lowest score, [that client's index])."""
    s = scores(moves, krum_byzantine)
    best = min(range(len(s)), key=s.__getitem__)
    return moves[best], [best]


def multikrum(
    moves: Moves, sizes: list[int], krum_byzantine: int = 0, multikrum_keep: int = 0, **_
) -> tuple[dict, list[int]]:
    """(the example-weighted mean of the m lowest-scoring moves, their indices)."""
    s = scores(moves, krum_byzantine)
    keep = multikrum_keep or max(1, len(moves) - krum_byzantine)
    chosen = sorted(sorted(range(len(s)), key=s.__getitem__)[:keep])
    return weighted_mean([moves[i] for i in chosen], [float(sizes[i]) for i in chosen]), chosen
