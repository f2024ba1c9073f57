"""FedAvg: the global model becomes the example-weighted mean of the client models.

McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data",
AISTATS 2017, Algorithm 1: x <- sum_i (n_i / n) * y_i over the sampled clients.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..client import StepHooks
from .base import ClientUpdate, StateDict, example_weighted_mean


@dataclass
class FedAvg:
    def client_hooks(self, model, global_state: StateDict, client_id: int) -> StepHooks:
        return StepHooks()  # plain local SGD/AdamW steps

    def aggregate(self, global_state: StateDict, updates: list[ClientUpdate]) -> StateDict:
        return example_weighted_mean(updates)

    def state_dict(self) -> dict:
        return {}  # FedAvg keeps no server state

    def load_state_dict(self, state: dict) -> None:
        pass
