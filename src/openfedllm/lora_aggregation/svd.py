"""FlexLoRA / HLoRA: the exact mean of the clients' products, projected back to rank r by SVD.

Bai et al., "Federated Fine-tuning of Large Language Models under Heterogeneous Tasks and Client
Resources" (FlexLoRA), NeurIPS 2024, section 3.2: W_g = sum_i (n_i / n) B_i A_i, then
B, A = the rank-r truncated SVD of W_g, U_r sqrt(S_r) and sqrt(S_r) V_r^T (eq. 3-4).
W_g is never formed: the clients' factors are stacked (U = [w_i s B_i], V = [A_i]) and
decomposed through two thin QRs and the SVD of an R x R matrix (factors.Stack.svd), R = sum r_i.
At rank r >= R the projection is exact. Composes with FedAvg and FedProx only: a server optimizer's
step on A and B separately has no meaning for the projected product.
"""

from __future__ import annotations

from ..algorithms import Algorithm, ClientUpdate, StateDict
from .base import LoraAggregation, Outcome, exact_sum
from .factors import modules


class SVD(LoraAggregation):
    """FlexLoRA (Bai et al. 2024): exact mean of B_i A_i (stacked QR), truncated SVD back to rank r."""

    name = "svd"
    server_algorithms = ("fedavg", "fedprox")

    def aggregate(
        self, algorithm: Algorithm, global_state: StateDict, updates: list[ClientUpdate], scale: float, seed: int
    ) -> Outcome:
        state = dict(algorithm.aggregate(global_state, updates))  # tensors outside LoRA modules: FedAvg's mean
        for module in modules(global_state):
            rank = global_state[module.a_key].shape[0]
            b, a = exact_sum(updates, module, scale, global_state).factors(rank, scale)
            state[module.b_key] = b.to(global_state[module.b_key].dtype)
            state[module.a_key] = a.to(global_state[module.a_key].dtype)
        return Outcome(state)
