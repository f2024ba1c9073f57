"""FedAdagrad, FedYogi and FedAdam: an adaptive optimizer on the server over the clients' Delta.

Reddi et al., "Adaptive Federated Optimization", ICLR 2021, Algorithm 2. With Delta the
example-weighted mean of (y_i - x) over the sampled clients:
    m <- beta1 * m + (1 - beta1) * Delta
    FedAdagrad: v <- v + Delta^2
    FedYogi:    v <- v - (1 - beta2) * Delta^2 * sign(v - Delta^2)
    FedAdam:    v <- beta2 * v + (1 - beta2) * Delta^2
    x <- x + eta * m / (sqrt(v) + tau)
starting from m = 0 and v = tau^2 (the paper asks v_{-1} >= tau^2; we take the smallest), with
no bias correction, as in the paper.

Two conventions of the OpenFedLLM reference code (federated_learning/fed_global.py) are offered for
reproducing results made with it, never the default:
- `second_moment: momentum` replaces Delta^2 by m^2 in the v update;
- `first_moment: delta` takes m = Delta in the first round (the paper starts from m = 0, so its first
  step is (1 - beta1) = 10x smaller at beta1 = 0.9: the reference's eta 1e-3 moves as far in round 1
  as eta 1e-2 here).
The reference and Flower also run FedAdagrad without momentum: `fed.fedopt_beta1 0` gives that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import get_args

import torch

from ..names import FirstMoment, SecondMoment
from .base import Algorithm, ClientUpdate, StateDict, apply_step, to_float64

SECOND_MOMENTS = get_args(SecondMoment)
FIRST_MOMENTS = get_args(FirstMoment)


@dataclass
class _FedOpt(Algorithm):
    server_lr: float = 1e-2  # eta
    beta1: float = 0.9  # decay of the first moment m
    beta2: float = 0.99  # decay of the second moment v (not used by FedAdagrad)
    tau: float = 1e-3  # adaptivity: larger tau behaves more like FedAvgM
    second_moment: SecondMoment = "delta"  # what is squared in the v update: delta (the paper) or momentum
    first_moment: FirstMoment = "zero"  # m before the first round: zero (the paper) or delta (m = Delta in round 1)
    m: StateDict = field(default_factory=dict, repr=False)  # server state, checkpointed (float64)
    v: StateDict = field(default_factory=dict, repr=False)

    @classmethod
    def from_config(cls, fed):
        return cls(
            server_lr=fed.fedopt_server_lr,
            beta1=fed.fedopt_beta1,
            beta2=fed.fedopt_beta2,
            tau=fed.fedopt_tau,
            second_moment=fed.fedopt_second_moment,
            first_moment=fed.fedopt_first_moment,
        )

    def update_v(self, v: torch.Tensor, square: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def aggregate(self, global_state: StateDict, updates: list[ClientUpdate]) -> StateDict:
        delta = self.delta(global_state, updates)
        step = {}
        for name, d in delta.items():
            if name not in self.m and self.first_moment == "delta":
                m = d  # the reference's first round
            else:
                m = self.beta1 * self.m.get(name, torch.zeros_like(d)) + (1 - self.beta1) * d
            square = d * d if self.second_moment == "delta" else m * m
            v = self.update_v(self.v.get(name, torch.full_like(d, self.tau**2)), square)
            self.m[name], self.v[name] = m, v
            step[name] = self.server_lr * m / (v.sqrt() + self.tau)
        return apply_step(global_state, step)

    def state_dict(self) -> dict:
        return {"m": dict(self.m), "v": dict(self.v)}

    def load_state_dict(self, state: dict) -> None:
        self.m = to_float64(state.get("m", {}))
        self.v = to_float64(state.get("v", {}))


class FedAdagrad(_FedOpt):
    """FedAdagrad (Reddi et al. 2021, Algorithm 2): v <- v + Delta^2."""

    def update_v(self, v, square):
        return v + square


class FedYogi(_FedOpt):
    """FedYogi (Reddi et al. 2021, Algorithm 2): v <- v - (1 - beta2) * Delta^2 * sign(v - Delta^2)."""

    def update_v(self, v, square):
        return v - (1 - self.beta2) * square * torch.sign(v - square)


class FedAdam(_FedOpt):
    """FedAdam (Reddi et al. 2021, Algorithm 2): v <- beta2 * v + (1 - beta2) * Delta^2."""

    def update_v(self, v, square):
        return self.beta2 * v + (1 - self.beta2) * square
