"""Malicious clients, for research on robustness (`attack:` section).

A seeded share of the clients (`attack.fraction` of fed.num_clients, chosen from train.seed, the
same on every node) attacks in every round it is sampled:
- model poisoning, on the client's reply (what a compromised client can send):
  sign_flip  x - scale * (y - x)          (Blanchard et al. 2017; Fang et al. 2020's "reverse")
  scale      x + scale * (y - x)          (boosting / model replacement, Bagdasaryan et al. 2020)
  noise      x + N(0, (scale * rms(y - x))^2)  (a random update as large as an honest one, x scale)
- data poisoning, on the client's rows (it trains honestly on bad data):
  harmful_data      sft: `attack.poison_fraction` of its rows replaced by harmful requests answered
                    with compliance (the built-in safety requests; the safety attack on federated
                    instruction tuning, Ye et al. 2024, "Emerging Safety Attack and Defense in
                    Federated Instruction Tuning")
  flip_preferences  dpo: chosen and rejected swapped in every pair it holds (label flipping).
The attackers are marked in metrics.jsonl (`malicious` on their client records) and reported apart.
"""

from __future__ import annotations

import functools
import random

import numpy as np
import torch

from .errors import UserError

UPDATE_ATTACKS = ("sign_flip", "scale", "noise")
HARMFUL = "harmful"  # the training domain of the poisoned rows


def check(config) -> None:
    attack = config.attack
    if not attack.fraction:
        return
    if attack.kind == "harmful_data" and config.train.objective != "sft":
        raise UserError("attack.kind harmful_data poisons instruction data (sft); for dpo use flip_preferences")
    if attack.kind == "flip_preferences" and config.train.objective != "dpo":
        raise UserError("attack.kind flip_preferences swaps preference pairs (dpo); for sft use harmful_data")
    if not malicious_clients(config):
        raise UserError(
            f"attack.fraction {attack.fraction:g} of {config.fed.num_clients} clients rounds to no malicious client"
        )


def malicious_clients(config) -> list[int]:
    """The attackers' client ids: round(fraction * N) of them, a seeded choice."""
    return list(_malicious(config.fed.num_clients, config.attack.fraction, config.train.seed))


@functools.lru_cache(maxsize=8)
def _malicious(n: int, fraction: float, seed: int) -> tuple[int, ...]:
    """Cached: asked for every client of every round."""
    from .rounds import derive_seed

    rng = np.random.default_rng(derive_seed(seed, "attack"))
    return tuple(sorted(int(c) for c in rng.permutation(n)[: int(round(fraction * n))]))


def kind_of(config, client_id: int, phase: str) -> str | None:
    """The attack this client makes in this phase (the baselines are honest references)."""
    if phase != "federated" or not config.attack.fraction:
        return None
    return config.attack.kind if client_id in malicious_clients(config) else None


def attack_update(kind: str, scale: float, x: dict, y: dict, seed: int) -> dict:
    """The attacker's reply, in the dtype of each tensor."""
    from .algorithms.base import move as move_of

    move = move_of(x, y)
    if kind == "sign_flip":
        move = {k: -scale * m for k, m in move.items()}
    elif kind == "scale":
        move = {k: scale * m for k, m in move.items()}
    elif kind == "noise":
        count = sum(m.numel() for m in move.values())
        rms = float((torch.stack([(m * m).sum() for m in move.values()]).sum() / max(count, 1)).sqrt())
        from .privacy.dp_fedavg import gaussian

        move = gaussian(move, scale * rms, seed)
    else:
        raise ValueError(f"not an update attack: {kind}")
    return {k: (x[k].to(torch.float64) + m).to(y[k].dtype) for k, m in move.items()}


def poison(config, data: dict, clients: list[list[int]], harmful_rows: list) -> list[list[int]]:
    """Data poisoning of the malicious clients, before anything is computed on their rows: flipped
    pairs in place (dpo), or a share of their rows swapped for harmful ones appended to
    data["train_rows"] (sft). Returns the clients' row indices."""
    if not config.attack.fraction or config.attack.kind not in ("harmful_data", "flip_preferences"):
        return clients
    rows, domains = data["train_rows"], data["train_domains"]
    clients = [list(c) for c in clients]
    for cid in malicious_clients(config):
        if cid >= len(clients) or not clients[cid]:
            continue
        if config.attack.kind == "flip_preferences":
            for i in clients[cid]:
                r = rows[i]
                r.chosen, r.rejected, r.ref_chosen, r.ref_rejected = r.rejected, r.chosen, r.ref_rejected, r.ref_chosen
            continue
        rng = random.Random(f"{config.train.seed}:poison:{cid}")
        count = max(1, round(config.attack.poison_fraction * len(clients[cid])))
        replaced = set(rng.sample(range(len(clients[cid])), count))
        for k in sorted(replaced):
            rows.append(harmful_rows[(cid * 7919 + k) % len(harmful_rows)])
            domains.append(HARMFUL)
            clients[cid][k] = len(rows) - 1
    return clients
