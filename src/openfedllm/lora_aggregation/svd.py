"""FlexLoRA / HLoRA: the exact mean of the clients' products, projected back to rank r by SVD.

Bai et al., "Federated Fine-tuning of Large Language Models under Heterogeneous Tasks and Client
Resources" (FlexLoRA), NeurIPS 2024, section 3.2: W_g = sum_i (n_i / n) B_i A_i, then
B, A = the rank-r truncated SVD of W_g, U_r sqrt(S_r) and sqrt(S_r) V_r^T (eq. 3-4).
W_g is never formed: the clients' factors are stacked (U = [w_i s B_i], V = [A_i]) and its SVD
comes from R x R Gram matrices (factors.best_factors), R = sum r_i.
At rank r >= R the projection is exact. Composes with FedAvg and FedProx only: a server optimizer's
step on A and B separately has no meaning for the projected product.
"""

from __future__ import annotations

from dataclasses import replace

from ..algorithms import Algorithm, ClientUpdate, StateDict
from .base import LoraAggregation, Outcome, client_weights
from .factors import best_factors, group_by_shape, modules, stacked


class SVD(LoraAggregation):
    """FlexLoRA (Bai et al. 2024): exact mean of B_i A_i (stacked factors), truncated SVD back to rank r."""

    name = "svd"
    server_algorithms = ("fedavg", "fedprox")

    def aggregate(
        self, algorithm: Algorithm, global_state: StateDict, updates: list[ClientUpdate], scale: float, seed: int
    ) -> Outcome:
        found = modules(global_state)
        lora_keys = {k for m in found for k in (m.a_key, m.b_key)}
        state = {}
        if set(global_state) - lora_keys:  # tensors outside LoRA modules: the server algorithm's rule
            rest = {k: v for k, v in global_state.items() if k not in lora_keys}
            others = [replace(u, weights={k: u.weights[k] for k in rest}) for u in updates]
            state = dict(algorithm.aggregate(rest, others))
        weights = client_weights(updates)
        for group in group_by_shape(found, global_state):
            rank = global_state[group[0].a_key].shape[0]
            b, a = best_factors(*stacked(weights, group, scale, global_state), rank, scale)
            for layer, module in enumerate(group):
                state[module.b_key] = b[layer].to(global_state[module.b_key].dtype)
                state[module.a_key] = a[layer].to(global_state[module.a_key].dtype)
        return Outcome(state)
