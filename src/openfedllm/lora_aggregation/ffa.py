"""FFA-LoRA: A frozen at its shared random initialisation; only B is trained and sent.

Sun et al., "Improving LoRA in Privacy-preserving Federated Learning", ICLR 2024, section 4:
with A_i = A_0 for every client, mean_i(B_i A_0) = mean_i(B_i) A_0, so averaging B alone is
averaging the clients' updates exactly, and each message carries half the adapter. A_0 is the
adapter's seeded initialisation (train.seed), the same on every client and node; it is never
sent. Every server algorithm composes with it (it acts on B, a plain linear parameter).
"""

from __future__ import annotations

from .base import LoraAggregation


class FFA(LoraAggregation):
    """FFA-LoRA (Sun et al. 2024): A frozen at its shared init, B alone trained and averaged: exact."""

    name = "ffa"
    freezes_a = True
