"""Coordinate-wise trimmed mean.

Yin, Chen, Ramchandran and Bartlett, ICML 2018, Definition 2: for each coordinate, drop the
floor(beta * n) largest and the floor(beta * n) smallest values over the clients and average the
rest (beta = `fed.trim_fraction`, in [0, 0.5); scipy.stats.trim_mean's and Flower's FedTrimmedAvg
rule). Unweighted, like the median.
"""

from __future__ import annotations

from .moves import Moves, stacked


def trimmed_mean(moves: Moves, sizes: list[int], trim_fraction: float = 0.1, **_) -> tuple[dict, list[int]]:
    """(the coordinate-wise trimmed mean move, the clients used: all, coordinate by coordinate)."""
    n = len(moves)
    cut = int(trim_fraction * n)
    out = {}
    for name in moves[0]:
        values = stacked(moves, name).sort(dim=0).values
        out[name] = values[cut : n - cut].mean(dim=0)
    return out, list(range(n))
