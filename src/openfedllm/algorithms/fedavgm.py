"""FedAvgM: FedAvg with server momentum.

Hsu, Qi and Brown, "Measuring the Effects of Non-Identical Data Distribution for Federated Visual
Classification", 2019, Sec. 3: with Delta the example-weighted mean of (y_i - x),
    v <- beta * v + Delta;   x <- x + eta_s * v.
With beta = 0 and eta_s = 1 this is FedAvg. Flower's FedAvgM is the same rule.

`damped: true` is the OpenFedLLM reference's convention (federated_learning/fed_global.py):
    v <- Delta in the first round, then v <- beta * v + (1 - beta) * Delta;   x <- x + eta_s * v,
an exponential moving average of the updates, whose steps stay the size of one Delta; undamped,
the steady-state step is 1 / (1 - beta) = 10 Deltas at beta = 0.9.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .base import Algorithm, ClientUpdate, StateDict, apply_step, to_float64


@dataclass
class FedAvgM(Algorithm):
    """FedAvgM (Hsu et al. 2019): v <- beta * v + Delta; x <- x + eta_s * v."""

    server_lr: float = 1.0  # eta_s
    momentum: float = 0.9  # beta
    damped: bool = False  # v <- beta * v + (1 - beta) * Delta, v = Delta first (the reference's convention)
    velocity: StateDict = field(default_factory=dict, repr=False)  # v, checkpointed (float64)

    @classmethod
    def from_config(cls, fed) -> FedAvgM:
        return cls(server_lr=fed.fedavgm_server_lr, momentum=fed.fedavgm_momentum, damped=fed.fedavgm_damped)

    def aggregate(self, global_state: StateDict, updates: list[ClientUpdate]) -> StateDict:
        delta = self.delta(global_state, updates)
        for name, d in delta.items():
            if not self.damped:
                self.velocity[name] = self.momentum * self.velocity.get(name, torch.zeros_like(d)) + d
            elif name not in self.velocity:
                self.velocity[name] = d  # the reference's first round
            else:
                self.velocity[name] = self.momentum * self.velocity[name] + (1 - self.momentum) * d
        return apply_step(global_state, {name: self.server_lr * v for name, v in self.velocity.items()})

    def state_dict(self) -> dict:
        return {"velocity": dict(self.velocity)}

    def load_state_dict(self, state: dict) -> None:
        self.velocity = to_float64(state.get("velocity", {}))
