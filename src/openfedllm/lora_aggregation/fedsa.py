"""FedSA-LoRA: A is shared and averaged; B stays with each client (a personalized model).

Guo et al., "Selective Aggregation for Low-Rank Adaptation in Federated Learning", ICLR 2025,
section 4: A learns what the clients have in common, B what is their own, so only A is sent and
aggregated (A <- sum_i (n_i / n) A_i; eq. 4) and client i's model is W + s B_i A. Nothing of B
leaves a client: B_i is client state (kept by the simulation per client, on a node's disk in a
deployment), starting at the adapter's initial B (peft's 0, or model.adapter's). The server's
model is A with that initial B, the start of a new client (with peft's B = 0: the base model's
outputs); what FedSA-LoRA is judged on are the personalized models (`personal` records). Every
server algorithm composes with it (it acts on A alone).
"""

from __future__ import annotations

from ..algorithms import StateDict
from .base import LoraAggregation
from .factors import B_PART


class FedSA(LoraAggregation):
    """FedSA-LoRA (Guo et al. 2025): A shared and averaged; each client's B stays with it (personalized)."""

    name = "fedsa"
    keeps_b = True

    def shared(self, state: StateDict) -> StateDict:
        return {k: v for k, v in state.items() if B_PART not in k}

    def client_start(self, shared: StateDict, initial: StateDict, kept: StateDict) -> StateDict:
        own_b = {k: kept.get(k, v) for k, v in initial.items() if B_PART in k}  # round 1: the shared init
        return {**shared, **own_b}

    def client_finish(self, weights: StateDict, kept: StateDict) -> tuple[StateDict, StateDict]:
        return self.shared(weights), {**kept, **{k: v for k, v in weights.items() if B_PART in k}}
