"""Naive LoRA aggregation: A and B averaged separately, as every peer framework does.

The server algorithm (FedAvg: the example-weighted mean) acts on each factor on its own, so the
global product is mean(B_i) mean(A_i), not mean(B_i A_i): the gap is the aggregation error this
package reports each round (openfedllm's default, and the OpenFedLLM reference's rule).
"""

from __future__ import annotations

from .base import LoraAggregation


class Naive(LoraAggregation):
    """Naive: A and B each aggregated by the server algorithm; mean(B)mean(A) != mean(BA)."""

    name = "naive"
