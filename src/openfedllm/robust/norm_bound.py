"""Norm bounding.

Sun, Kairouz, Suresh and McMahan, "Can You Really Backdoor Federated Learning?", 2019, Sec. 3:
every client's move is scaled down to L2 norm at most M before it is combined,
    y_i - x  <-  (y_i - x) * min(1, M / ||y_i - x||),
which caps what a boosted (scaled) update can do. It runs before any rule (`fed.norm_bound` M;
0: off). Differential privacy's clipping (dp.clip_norm) is the same operation with noise after it.
"""

from __future__ import annotations

from .moves import Moves, clip


def bound(moves: Moves, limit: float) -> tuple[Moves, list[bool]]:
    """(every move clipped to norm <= limit, whether each was cut)."""
    out = [clip(m, limit) for m in moves]
    return [m for m, _ in out], [cut for _, cut in out]
