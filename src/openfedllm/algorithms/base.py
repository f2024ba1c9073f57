"""What every FL algorithm shares: the client update it receives and example-count weighting."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

StateDict = dict[str, torch.Tensor]


@dataclass
class ClientUpdate:
    client_id: int
    weights: StateDict  # y_i: the client's trainable tensors after its local steps
    num_examples: int  # n_i: size of the client's training partition (the aggregation weight)
    metrics: dict[str, float] = field(default_factory=dict)


def weighted_mean(states: list[StateDict], weights: list[float]) -> StateDict:
    """sum_i w_i * s_i / sum_i w_i, tensor by tensor (float64 accumulation, original dtype)."""
    if not states:
        raise ValueError("no client updates to aggregate")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("aggregation weights sum to zero")
    out = {}
    for name, first in states[0].items():
        acc = torch.zeros_like(first, dtype=torch.float64)
        for state, w in zip(states, weights):
            acc += state[name].to(torch.float64) * (w / total)
        out[name] = acc.to(first.dtype)
    return out


def example_weighted_mean(updates: list[ClientUpdate]) -> StateDict:
    """Every algorithm here weights clients by their number of training examples."""
    return weighted_mean([u.weights for u in updates], [u.num_examples for u in updates])
