"""What the robust rules and differential privacy act on: each client's move y_i - x.

A move is the client's trainable tensors minus the global ones, in float64, seen as one vector
(every tensor of the shared state, in the state's key order) when a rule needs its norm or a
distance. Combining moves and adding the result to x is the same as combining the y_i for the
rules here (median, trimmed mean and Krum commute with a common shift), and it is the Delta the
server optimizers (FedAvgM, FedAdam, ...) step with.
"""

from __future__ import annotations

import torch

from ..algorithms.base import StateDict

Moves = list[StateDict]


def norm(move: StateDict) -> float:
    """||y_i - x||_2 over every tensor of the move together."""
    return float(torch.stack([(t * t).sum() for t in move.values()]).sum().sqrt())


def scaled(move: StateDict, factor: float) -> StateDict:
    return {k: t * factor for k, t in move.items()}


def clip(move: StateDict, bound: float) -> tuple[StateDict, bool]:
    """The move scaled to norm <= bound: move * min(1, bound / ||move||); and whether it was cut."""
    n = norm(move)
    return (scaled(move, bound / n), True) if n > bound else (move, False)


def stacked(moves: Moves, name: str) -> torch.Tensor:
    """Tensor `name` of every move, stacked along a new first axis (clients)."""
    return torch.stack([m[name] for m in moves])


def squared_distances(moves: Moves) -> torch.Tensor:
    """D[i, j] = ||m_i - m_j||^2 over all tensors (n x n, float64)."""
    n = len(moves)
    out = torch.zeros(n, n, dtype=torch.float64)
    for name in moves[0]:
        flat = stacked(moves, name).reshape(n, -1)
        out += torch.cdist(flat, flat).pow(2)
    return out
