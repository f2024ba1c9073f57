"""The one registry of LoRA aggregation methods (`fed.lora_aggregation`), an axis next to the
server algorithms (`fed.algorithm`).

Averaging A and B separately is not averaging the clients' updates: mean(B_i A_i) != mean(B_i)
mean(A_i). Each method here is one small module citing its paper; `aggregation_error` measures,
for any of them, how far the new global adapter (with what went into the frozen weights) is from
the exact mean of the clients' products.
"""

from __future__ import annotations

from ..algorithms import ClientUpdate, StateDict
from ..errors import UserError
from ..names import LoraAggregationName
from .base import LoraAggregation, Outcome, exact_sum
from .factors import Stack, error_norms, modules
from .fedex import FedEx
from .fedsa import FedSA
from .ffa import FFA
from .flora import FLoRA
from .naive import Naive
from .svd import SVD

LORA_AGGREGATIONS: dict[str, type[LoraAggregation]] = {  # in LoraAggregationName's order
    "naive": Naive,
    "ffa": FFA,
    "fedsa": FedSA,
    "flora": FLoRA,
    "svd": SVD,
    "fedex": FedEx,
}


def build(name: str) -> LoraAggregation:
    return LORA_AGGREGATIONS[name]()


def check(config) -> None:
    """One line for a combination that is not sound (or not built): called when the config is read."""
    name, fed = config.fed.lora_aggregation, config.fed
    if fed.client_ranks or fed.rank_by_size:
        if config.model.finetune != "lora":
            raise UserError("fed.client_ranks: per-client LoRA ranks need model.finetune: lora")
        if LORA_AGGREGATIONS[name].freezes_a or LORA_AGGREGATIONS[name].keeps_b:
            raise UserError(f"fed.client_ranks: not with fed.lora_aggregation {name}; use naive, svd, flora or fedex")
    if fed.client_ranks:
        if len(fed.client_ranks) != fed.num_clients:
            raise UserError(f"fed.client_ranks: one rank per client ({fed.num_clients}), got {len(fed.client_ranks)}")
        _check_ranks("fed.client_ranks", fed.client_ranks, config.lora.rank)
    elif fed.rank_by_size:  # resolved into fed.client_ranks once the clients' sizes are known
        if len(fed.rank_by_size) > fed.num_clients:
            raise UserError(f"fed.rank_by_size: {len(fed.rank_by_size)} ranks for {fed.num_clients} clients")
        _check_ranks("fed.rank_by_size", fed.rank_by_size, config.lora.rank)
    if name == "naive":
        return
    method = LORA_AGGREGATIONS[name]
    if config.model.finetune != "lora":
        raise UserError(f"fed.lora_aggregation: {name} aggregates LoRA adapters; it needs model.finetune: lora")
    if method.server_algorithms is not None and fed.algorithm not in method.server_algorithms:
        raise UserError(
            f"fed.lora_aggregation: {name} composes with fed.algorithm {' or '.join(method.server_algorithms)} "
            f"only, not {fed.algorithm} (a server optimizer's step on A and B has no meaning for "
            f"{'the projected product' if name == 'svd' else 'an adapter folded into the base weights'})"
        )
    if method.merges_into_base and config.model.quantization != "none":
        raise UserError(
            f"fed.lora_aggregation: {name} adds to the frozen base weights, which model.quantization: "
            f"{config.model.quantization} keeps quantized; use naive, ffa or svd"
        )
    if method.freezes_a and config.model.adapter:
        raise UserError(
            "fed.lora_aggregation: ffa freezes A at its random initialisation; model.adapter gives a trained A"
        )


def _check_ranks(key: str, ranks: list, largest: int) -> None:
    if any(not isinstance(r, int) or isinstance(r, bool) or not 1 <= r <= largest for r in ranks):
        raise UserError(f"{key}: each rank must be an integer in 1..lora.rank ({largest}), got {ranks}")


def ranks_by_size(tiers: list[int], sizes: list[int]) -> list[int]:
    """fed.rank_by_size: clients sorted by size (ties by id) split into len(tiers) equal groups,
    the smallest group taking the first rank."""
    order = sorted(range(len(sizes)), key=lambda c: (sizes[c], c))
    ranks = [0] * len(sizes)
    for position, client in enumerate(order):
        ranks[client] = tiers[position * len(tiers) // len(sizes)]
    return ranks


def aggregation_error(
    updates: list[ClientUpdate], outcome: Outcome, scale: float, frozen: StateDict
) -> dict[str, float]:
    """Per layer type (q_proj, ...): ||mean_i(s B_i A_i) - (merged + s B A)||_F / ||mean_i(s B_i A_i)||_F,
    summed over the layers of that type; `frozen` supplies factors no client sends (FFA's A)."""
    new = {**frozen, **outcome.state}
    squared: dict[str, list[float]] = {}
    for module in modules(new):  # one layer at a time: its stacks are freed before the next
        target = exact_sum(updates, module, scale, frozen)
        result = Stack.of([(scale, new[module.b_key], new[module.a_key])])
        if module.name in outcome.merged:
            result = result.plus(outcome.merged[module.name])
        err, norm = error_norms(target, result)
        total = squared.setdefault(module.kind, [0.0, 0.0])
        total[0] += err
        total[1] += norm
    return {kind: (e / n) ** 0.5 if n > 0 else 0.0 for kind, (e, n) in sorted(squared.items())}


__all__ = ["LORA_AGGREGATIONS", "LoraAggregation", "LoraAggregationName", "Outcome", "aggregation_error", "build"]
