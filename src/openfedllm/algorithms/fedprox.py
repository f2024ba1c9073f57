"""FedProx: local steps on the loss plus a proximal term that keeps the client near x.

Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020, Eq. (2) / Algorithm 2:
each client minimises h_i(w) = F_i(w) + (mu / 2) * ||w - x||^2 over the trainable tensors; the
server aggregates as FedAvg (example-weighted mean of the y_i).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..client import StepHooks
from .base import Algorithm, ClientTask, ClientUpdate, StateDict


@dataclass
class FedProx(Algorithm):
    """FedProx (Li et al. 2020): local loss + (mu/2) * ||w - x||^2; server aggregates as FedAvg."""

    mu: float = 0.01  # weight of the proximal term; 0 is FedAvg

    @classmethod
    def from_config(cls, fed) -> FedProx:
        return cls(mu=fed.fedprox_mu)

    def client_hooks(
        self, params: dict[str, torch.nn.Parameter], task: ClientTask, client_state: StateDict
    ) -> StepHooks:
        anchor = {name: task.global_state[name].to(device=p.device, dtype=p.dtype) for name, p in params.items()}

        def proximal_term() -> torch.Tensor:
            # (mu / 2) * ||w - x||^2; its gradient mu * (w - x) joins the loss's gradient before
            # clipping and the optimizer, exactly as if it were part of the loss.
            total = torch.stack([((p - anchor[name]) ** 2).sum() for name, p in params.items()]).sum()
            return 0.5 * self.mu * total

        return StepHooks(extra_loss=proximal_term if self.mu else None)

    def aggregate(self, global_state: StateDict, updates: list[ClientUpdate]) -> StateDict:
        return self.mean_model(global_state, updates)
