"""FLoRA: stack the clients' factors, merge the exact sum into the frozen weights, start afresh.

Wang et al., "FLoRA: Federated Fine-Tuning Large Language Models with Heterogeneous Low-Rank
Adaptations", NeurIPS 2024, section 3: the stacked B = [w_1 B_1, ..., w_N B_N] and A = [A_1; ...;
A_N] multiply to exactly sum_i w_i B_i A_i (any ranks); W <- W + s * B A, and every client starts
the next round from a re-initialised adapter (B = 0, A drawn anew, the same for all clients:
from the run's seed and the round). The base weights change during the run (a quantized base
cannot take it). Composes with FedAvg and FedProx only: the adapter is discarded every round, so
a server optimizer's state on it has nothing to act on.
"""

from __future__ import annotations

import math

import torch

from ..algorithms import Algorithm, ClientUpdate, StateDict
from .base import LoraAggregation, Outcome, exact_sum
from .factors import modules


class FLoRA(LoraAggregation):
    """FLoRA (Wang et al. 2024): stacked factors merged exactly into W; the adapter re-initialised."""

    name = "flora"
    merges_into_base = True
    server_algorithms = ("fedavg", "fedprox")

    def aggregate(
        self, algorithm: Algorithm, global_state: StateDict, updates: list[ClientUpdate], scale: float, seed: int
    ) -> Outcome:
        generator = torch.Generator().manual_seed(seed)
        state, merged = {}, {}
        for module in modules(global_state):
            merged[module.name] = exact_sum(updates, module, scale, global_state)
            a = torch.empty(global_state[module.a_key].shape, dtype=torch.float32)
            # peft's own initialisation of A (kaiming-uniform, a = sqrt(5)); B = 0 makes the product 0
            bound = 1 / math.sqrt(a.shape[1])  # kaiming_uniform_ with a=sqrt(5): gain sqrt(1/3) * sqrt(3/fan_in)
            a.uniform_(-bound, bound, generator=generator)
            state[module.a_key] = a.to(global_state[module.a_key].dtype)
            state[module.b_key] = torch.zeros_like(global_state[module.b_key])
        return Outcome(state, merged)
