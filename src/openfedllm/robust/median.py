"""Coordinate-wise median.

Yin, Chen, Ramchandran and Bartlett, "Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates", ICML 2018, Definition 1: each coordinate of the aggregate is the median of that
coordinate over the clients (with an even number of clients, the mean of the two middle values, as
numpy's and Flower's FedMedian). Clients are not weighted by size: a weight would let one client
buy the median.
"""

from __future__ import annotations

from .moves import Moves, stacked


def median(moves: Moves, sizes: list[int], **_) -> tuple[dict, list[int]]:
    """(the coordinate-wise median move, the clients used: all)."""
    out = {}
    for name in moves[0]:
        values = stacked(moves, name).sort(dim=0).values
        n = values.shape[0]
        out[name] = values[n // 2] if n % 2 else (values[n // 2 - 1] + values[n // 2]) / 2
    return out, list(range(len(moves)))
