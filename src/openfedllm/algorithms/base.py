"""What every FL algorithm shares: the round's messages, and example-count weighting.

An algorithm has a server side (`server_message`, `aggregate`, `state_dict`) and a client side
(`client_hooks`, `client_finish`). The client side is a pure function of what the server sent
(`ClientTask`) and the client's own state: it never reads the server's fields, so the simulation
and a Flower node can call it alike. Clients are weighted by their number of training examples
in every algorithm here (`example_weighted_mean`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..client import StepHooks

StateDict = dict[str, torch.Tensor]


@dataclass
class ClientTask:
    """What a sampled client receives for one round."""

    global_state: StateDict  # x: the global trainable tensors
    message: StateDict  # extra tensors the algorithm broadcasts (SCAFFOLD: the server control variate c)
    lr: float  # the round's local learning rate
    steps: int  # K: local optimizer steps this round


@dataclass
class ClientUpdate:
    client_id: int
    weights: StateDict  # y_i: the client's trainable tensors after its local steps
    num_examples: int  # n_i: size of the client's training partition (the aggregation weight)
    metrics: dict[str, Any] = field(default_factory=dict)  # numbers, and per-step series (lists of floats)
    extras: StateDict = field(default_factory=dict)  # algorithm-specific tensors (SCAFFOLD: c_i+ - c_i)
    bytes_up: int = 0  # payload the client sent this round (its update and extras, as serialised)
    bytes_down: int = 0  # payload it received (x, and the algorithm's broadcast)
    wire_up: int = 0  # deployed: the messages it sent as Flower transfers them (payload + framing); 0 simulated
    wire_down: int = 0  # deployed: the messages it received as Flower transfers them; 0 simulated


class Algorithm:
    """The interface, with the defaults of an algorithm that only changes the server's rule:
    no broadcast beyond x, plain local steps, no client state, no server state.

    `combine` (set by the round loop: combine.Combiner) turns the clients' moves into the round's
    Delta when a robust rule, norm bounding or differential privacy replaces the plain
    example-weighted mean; None keeps each algorithm's own exact mean."""

    combine: Callable | None = None  # (global_state, updates) -> Delta (float64), or None: the example-weighted mean

    @classmethod
    def from_config(cls, fed) -> Algorithm:
        """The algorithm with its hyperparameters from the `fed` config section."""
        raise NotImplementedError

    def start(self, client_sizes: list[int]) -> None:
        """Server side, once before a phase's rounds: every client's number of training examples
        (SCAFFOLD weights c's update by them). A node never calls it: the client side needs none."""

    def server_message(self) -> StateDict:
        return {}

    def client_hooks(
        self, params: dict[str, torch.nn.Parameter], task: ClientTask, client_state: StateDict
    ) -> StepHooks:
        """Hooks for the local steps; `params` maps the state's names to the live parameters."""
        return StepHooks()

    def client_finish(
        self, task: ClientTask, weights: StateDict, client_state: StateDict
    ) -> tuple[StateDict, StateDict]:
        """After the local steps: (extras sent to the server, the client's new state)."""
        return {}, client_state

    def aggregate(self, global_state: StateDict, updates: list[ClientUpdate]) -> StateDict:
        raise NotImplementedError

    def delta(self, global_state: StateDict, updates: list[ClientUpdate]) -> StateDict:
        """The round's Delta: the combiner's, or sum_i (n_i / n_S) (y_i - x)."""
        if self.combine is not None:
            return self.combine(global_state, updates)
        return mean_delta(global_state, updates)

    def mean_model(self, global_state: StateDict, updates: list[ClientUpdate]) -> StateDict:
        """FedAvg's next x: the example-weighted mean of the y_i (exact, in each tensor's dtype), or
        x + the combiner's Delta."""
        if self.combine is not None:
            return apply_step(global_state, self.combine(global_state, updates))
        return example_weighted_mean(updates)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def weighted_mean(states: list[StateDict], weights: list[float]) -> StateDict:
    """sum_i w_i * s_i / sum_i w_i, tensor by tensor (float64 accumulation, original dtype)."""
    if not states:
        raise ValueError("no client updates to aggregate")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("aggregation weights sum to zero")
    out = {}
    for name, first in states[0].items():
        acc = torch.zeros_like(first, dtype=torch.float64)
        for state, w in zip(states, weights):
            acc += state[name].to(torch.float64) * (w / total)
        out[name] = acc.to(first.dtype)
    return out


def example_weighted_mean(updates: list[ClientUpdate]) -> StateDict:
    """Every algorithm here weights clients by their number of training examples."""
    return weighted_mean([u.weights for u in updates], [u.num_examples for u in updates])


def mean_delta(global_state: StateDict, updates: list[ClientUpdate]) -> StateDict:
    """Delta = sum_i (n_i / n_S) * (y_i - x) over the sampled clients, in float64.

    Kept in float64 so that x + Delta reproduces the weighted mean of the y_i to the last bit
    of the original dtype (the degenerate cases equal FedAvg exactly).
    """
    return weighted_mean(client_moves(global_state, updates), [u.num_examples for u in updates])


def move(global_state: StateDict, weights: StateDict) -> StateDict:
    """y - x, tensor by tensor, in float64 (over the keys of x)."""
    return {name: weights[name].to(torch.float64) - x.to(torch.float64) for name, x in global_state.items()}


def client_moves(global_state: StateDict, updates: list[ClientUpdate]) -> list[StateDict]:
    """y_i - x of every update, float64: what Delta, the robust rules and DP's clipping combine."""
    x64 = to_float64(global_state)
    return [move(x64, u.weights) for u in updates]


def apply_step(global_state: StateDict, step: StateDict) -> StateDict:
    """x + step, computed in float64, returned in each tensor's own dtype."""
    return {name: (x.to(torch.float64) + step[name]).to(x.dtype) for name, x in global_state.items()}


def to_float64(state: StateDict) -> StateDict:
    return {k: v.to(torch.float64) for k, v in state.items()}
