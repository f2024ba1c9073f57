"""FedAvg: the global model becomes the example-weighted mean of the client models.

McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data",
AISTATS 2017, Algorithm 1: x <- sum_i (n_i / n) * y_i over the sampled clients.
"""

from __future__ import annotations

from .base import Algorithm, ClientUpdate, StateDict


class FedAvg(Algorithm):
    """FedAvg (McMahan et al. 2017): x <- the example-weighted mean of the client models y_i."""

    @classmethod
    def from_config(cls, fed) -> FedAvg:
        return cls()

    def aggregate(self, global_state: StateDict, updates: list[ClientUpdate]) -> StateDict:
        return self.mean_model(global_state, updates)
