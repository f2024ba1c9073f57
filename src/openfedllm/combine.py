"""The server's defences, between the clients' replies and the algorithm's step: norm bounding, a
robust rule (robust/) and differential privacy (privacy/), as one `Combiner` that turns the round's
moves y_i - x into Delta. The algorithm then steps with Delta as it would with the mean (FedAvg:
x + Delta; FedAvgM, FedAdam...: their optimizer over Delta, post-processing that costs no privacy).

The simulation and a Flower deployment run the same round loop, so both use this object; what a
client does itself (local DP's noise, an attacker's update) is in `client_side`, which the shared
client code calls on a node as in the simulation.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

import torch

from .algorithms.base import ClientUpdate, StateDict
from .errors import UserError
from .lora_aggregation import LORA_AGGREGATIONS
from .privacy import dp_fedavg
from .privacy.accountant import Accountant
from .robust import AGGREGATORS, bound, moves_of, norm

DP_SECRET = "dp_secret"  # a client's own noise secret in its state (local mode), beside SCAFFOLD's c_i


def dp_on(config) -> bool:
    return config.dp.noise_multiplier > 0 or config.dp.target_epsilon > 0


def plain(config) -> bool:
    """No defence: every algorithm keeps its own exact mean (bit-identical to a run without them)."""
    return config.fed.aggregator == "mean" and not config.fed.norm_bound and not dp_on(config)


def accountant(config) -> Accountant:
    fed = config.fed
    return Accountant(config.dp.mode, fed.num_clients, fed.sampled(), config.dp.delta)


def check(config) -> None:
    """One line for a combination that is not sound: called when the config is read."""
    fed, dp = config.fed, config.dp
    lora = LORA_AGGREGATIONS[fed.lora_aggregation]
    if not plain(config) and (lora.merges_into_base or lora.server_algorithms is not None):
        what = "differential privacy" if dp_on(config) else f"fed.aggregator {fed.aggregator} / fed.norm_bound"
        raise UserError(
            f"{what}: not with fed.lora_aggregation {fed.lora_aggregation}, which combines the clients' "
            "products, not their moves; use naive, ffa or fedsa"
        )
    if fed.algorithm == "scaffold" and not plain(config):
        raise UserError(
            "fed.algorithm scaffold: its control variate c averages every client's c_i unclipped and "
            "un-noised, so neither a robust fed.aggregator, fed.norm_bound nor dp protects it; use fedavg, "
            "fedprox, fedavgm or a FedOpt algorithm"
        )
    m = fed.sampled()
    if fed.aggregator in ("krum", "multikrum") and fed.krum_byzantine >= m:
        raise UserError(f"fed.krum_byzantine ({fed.krum_byzantine}) must be below the clients per round ({m})")
    if fed.aggregator == "multikrum" and fed.multikrum_keep > m:
        raise UserError(f"fed.multikrum_keep ({fed.multikrum_keep}) is more than the clients per round ({m})")
    if dp.clip_norm and not dp_on(config):
        raise UserError(
            "dp.clip_norm: clipping without noise gives no privacy; set dp.noise_multiplier or "
            "dp.target_epsilon (or fed.norm_bound to only bound the updates)"
        )
    if not dp_on(config):
        return
    if not dp.clip_norm:
        raise UserError(
            "dp: set dp.clip_norm, the L2 norm C each client's update is clipped to (the noise is z * C; "
            "see docs/privacy_robustness.md for how to choose it)"
        )
    if dp.mode == "central" and fed.aggregator != "mean":
        raise UserError(
            f"dp.mode central: the noise is calibrated to a sum of clipped moves, not to fed.aggregator "
            f"{fed.aggregator}; use mean, or dp.mode local (each client's noise, then any rule)"
        )
    if dp.mode == "local" and not dp.noise_multiplier:
        raise UserError(
            "dp.mode local: give dp.noise_multiplier (each client adds the noise itself; dp.target_epsilon then "
            "only checks the budget)"
        )
    if dp.adaptive_clipping:
        if dp.mode == "local":
            raise UserError("dp.adaptive_clipping: central mode only (the unclipped count is noised on the server)")
        if not dp.noise_multiplier:
            raise UserError("dp.adaptive_clipping: give dp.noise_multiplier (calibration to a target is fixed-C only)")
        sigma_b = dp_fedavg.count_stddev(dp.clipped_count_stddev, m)
        if dp.noise_multiplier >= 2 * sigma_b:
            raise UserError(
                f"dp.adaptive_clipping: dp.noise_multiplier {dp.noise_multiplier} leaves no noise for the moves "
                f"(needs z < 2 sigma_b = {2 * sigma_b:g}; raise dp.clipped_count_stddev)"
            )
    if dp.noise_multiplier and dp.target_epsilon:
        spent = accountant(config).epsilon([dp.noise_multiplier] * fed.rounds)
        if spent > dp.target_epsilon:
            fit = accountant(config).rounds_within([], dp.noise_multiplier, dp.target_epsilon, fed.rounds)
            raise UserError(
                f"dp.target_epsilon {dp.target_epsilon:g}: {fed.rounds} rounds at dp.noise_multiplier "
                f"{dp.noise_multiplier:g} spend epsilon {spent:.3g} (delta {dp.delta:g}); {fit} fit. Lower "
                "fed.rounds, raise the noise, or leave dp.noise_multiplier out to have it computed"
            )


@dataclass
class Combiner:
    """Norm bounding -> DP clipping and noise (central) or a robust rule -> Delta, with the
    privacy ledger. Its state (current C, the sigmas spent, the noise secret) is checkpointed."""

    config: Any  # RunConfig
    rounds: int
    secret: int = 0
    clip_norm: float = 0.0
    noise_multiplier: float = 0.0  # z of the rounds still to run
    spent: list[float] = field(default_factory=list)  # z of each round run so far
    round_index: int = 0  # set by the loop before each aggregation (seeds the round's noise)
    last: dict = field(default_factory=dict)  # what the latest round did, for its metrics record

    @classmethod
    def start(cls, config) -> Combiner:
        dp = config.dp
        secret = dp.noise_seed or secrets.randbits(63)
        return cls(config, config.fed.rounds, secret, dp.clip_norm, dp.noise_multiplier)

    @property
    def private(self) -> bool:
        return dp_on(self.config)

    def ensure_noise(self) -> None:
        """z for dp.target_epsilon over the planned rounds (a resumed or extended run keeps its own)."""
        if self.private and not self.noise_multiplier:
            self.noise_multiplier = accountant(self.config).calibrate(self.config.dp.target_epsilon, self.rounds)
            print(
                f"dp: noise multiplier {self.noise_multiplier:.4g} spends epsilon {self.config.dp.target_epsilon:g} "
                f"(delta {self.config.dp.delta:g}) over {self.rounds} rounds"
            )

    def check_budget(self, start_round: int) -> None:
        """Before the phase's first round: the rounds left must fit dp.target_epsilon (an extended run)."""
        target = self.config.dp.target_epsilon
        if not (self.private and target):
            return
        left = self.rounds - start_round
        ledger = accountant(self.config)
        if ledger.epsilon(self.spent + [self.noise_multiplier] * left) > target * (1 + 1e-9):
            fit = ledger.rounds_within(self.spent, self.noise_multiplier, target, left)
            raise UserError(
                f"dp.target_epsilon {target:g}: rounds {start_round + 1}..{self.rounds} at noise multiplier "
                f"{self.noise_multiplier:.4g} would exceed it (epsilon so far {self.epsilon():.3g}); "
                f"{fit} more fit, so the run stops before round {start_round + fit + 1}"
            )

    def epsilon(self) -> float:
        return accountant(self.config).epsilon(self.spent)

    def sampling_seed(self, default: int) -> int:
        """With central DP the sample must be secret for its amplification: drawn from the secret."""
        return self.secret if self.private and self.config.dp.mode == "central" else default

    def seed(self, *what) -> int:
        from .rounds import derive_seed

        return derive_seed(self.secret, self.round_index, *what)

    def __call__(self, global_state: StateDict, updates: list[ClientUpdate]) -> StateDict:
        fed, dp = self.config.fed, self.config.dp
        moves = moves_of(global_state, updates)
        ids = [u.client_id for u in updates]
        names = [str(i) if i >= 0 else "sum" for i in ids]  # SecAgg+: one update, the clients' mean
        self.last = {"update_norms": dict(zip(names, (round(norm(m), 6) for m in moves)))}
        if fed.norm_bound:
            moves, cut = bound(moves, fed.norm_bound)
            self.last["norm_bounded"] = [i for i, c in zip(ids, cut) if c]
        if self.private and dp.mode == "central":
            z = self.noise_multiplier
            sigma_b = dp_fedavg.count_stddev(dp.clipped_count_stddev, fed.sampled())
            z_moves = dp_fedavg.update_noise_multiplier(z, sigma_b) if dp.adaptive_clipping else z
            delta, cut = dp_fedavg.central(
                moves, self.clip_norm, z_moves * self.clip_norm, fed.sampled(), self.seed("noise")
            )
            self.spent.append(z)
            self.last.update(clip_norm=self.clip_norm, clipped=sum(cut) / len(cut), noise_std=z_moves * self.clip_norm)
            if dp.adaptive_clipping:
                self.clip_norm = dp_fedavg.adapt(
                    self.clip_norm, cut, fed.sampled(), sigma_b, dp.target_quantile, dp.clip_lr, self.seed("count")
                )
            return delta
        if self.private:  # local: every move arrived clipped and noised; all count the same
            self.spent.append(self.noise_multiplier)
            self.last.update(clip_norm=self.clip_norm, noise_std=self.noise_multiplier * self.clip_norm)
            sizes = [1] * len(moves) if fed.aggregator == "mean" else [u.num_examples for u in updates]
        else:
            sizes = [u.num_examples for u in updates]
        rule = AGGREGATORS[fed.aggregator]
        delta, used = rule(
            moves,
            sizes,
            trim_fraction=fed.trim_fraction,
            krum_byzantine=fed.krum_byzantine,
            multikrum_keep=fed.multikrum_keep,
        )
        if fed.aggregator in ("krum", "multikrum"):
            self.last["selected"] = [ids[i] for i in used]
        return delta

    def record(self, phase: str, round_number: int) -> dict:
        """The round's `privacy` (with DP) or `robust` record for metrics.jsonl."""
        if self.private:
            return {
                "type": "privacy",
                "phase": phase,
                "round": round_number,
                "epsilon": self.epsilon(),
                "delta": self.config.dp.delta,
                "noise_multiplier": self.spent[-1],
                "mode": self.config.dp.mode,
                **self.last,
            }
        return {
            "type": "robust",
            "phase": phase,
            "round": round_number,
            "aggregator": self.config.fed.aggregator,
            **self.last,
        }

    def state_dict(self) -> dict:
        return {
            DP_SECRET: self.secret,
            "dp_clip_norm": self.clip_norm,
            "dp_noise": self.noise_multiplier,
            "dp_spent": list(self.spent),
        }

    def load_state_dict(self, state: dict) -> None:
        if DP_SECRET in state:
            self.secret = int(state[DP_SECRET])
            self.clip_norm = float(state["dp_clip_norm"])
            self.noise_multiplier = float(state["dp_noise"])
            self.spent = [float(z) for z in state["dp_spent"]]


def client_side(config, task_state: StateDict, weights: StateDict, own_state: dict, attack_kind: str | None, seed: int):
    """What a client does to its own reply before it leaves (shared by the simulation and a node):
    an attacker's update (attacks.py), then local DP's clipping and noise. Returns (weights, own_state)."""
    from . import attacks

    if attack_kind in attacks.UPDATE_ATTACKS:
        weights = attacks.attack_update(attack_kind, config.attack.scale, task_state, weights, seed)
    if dp_on(config) and config.dp.mode == "local":
        secret = int(own_state.get(DP_SECRET, torch.tensor(config.dp.noise_seed or secrets.randbits(63))))
        own_state = {**own_state, DP_SECRET: torch.tensor(secret)}
        from .algorithms.base import apply_step, move
        from .rounds import derive_seed

        step = dp_fedavg.local(
            move(task_state, weights), config.dp.clip_norm, config.dp.noise_multiplier, derive_seed(secret, seed)
        )
        weights = apply_step(task_state, step)  # in the trainable tensors' dtype
    return weights, own_state
