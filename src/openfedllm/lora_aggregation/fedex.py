"""FedEx-LoRA: average A and B, and fold the averaging's residual into the frozen weights.

Singhal et al., "FedEx-LoRA: Exact Aggregation for Federated and Efficient Fine-Tuning of
Foundation Models", ACL 2025, eq. 5-7: A = mean(A_i), B = mean(B_i) (the example-weighted means),
and W <- W + s * (mean(B_i A_i) - B A), so W + s B A is exactly W + mean of the clients' s B_i A_i.
The residual has rank at most R + r (R = sum r_i): it is kept factored and made dense only where
it is added to W. The base weights change during the run (a quantized base cannot take it).
Composes with FedAvg and FedProx only (the residual is defined against the mean).
"""

from __future__ import annotations

from ..algorithms import Algorithm, ClientUpdate, StateDict, example_weighted_mean
from .base import LoraAggregation, Outcome, exact_sum
from .factors import Stack, modules


class FedEx(LoraAggregation):
    """FedEx-LoRA (Singhal et al. 2025): mean A and B, residual mean(BA) - mean(B)mean(A) into W."""

    name = "fedex"
    merges_into_base = True
    server_algorithms = ("fedavg", "fedprox")

    def aggregate(
        self, algorithm: Algorithm, global_state: StateDict, updates: list[ClientUpdate], scale: float, seed: int
    ) -> Outcome:
        state = example_weighted_mean(updates)
        merged = {}
        for module in modules(global_state):
            mean = Stack.of([(scale, state[module.b_key], state[module.a_key])])
            merged[module.name] = exact_sum(updates, module, scale, global_state).minus(mean)
        return Outcome(state, merged)
