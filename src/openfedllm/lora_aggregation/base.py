"""What every LoRA aggregation method shares: the round's outcome and the clients' weights.

A method turns the clients' adapters into the next global adapter, and may also fold an exact
correction into the frozen base weights (`Outcome.merged`, in factored form). Clients are weighted
by their number of training examples, as every server algorithm here weights them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..algorithms import Algorithm, ClientUpdate, StateDict
from .factors import Module, Stack, client_terms


@dataclass
class Outcome:
    state: StateDict  # the next global shared tensors
    merged: dict[str, Stack] = field(default_factory=dict)  # module name -> what this round added to its frozen W


LOCAL = "lora_local/"  # the prefix of what a method keeps on a client, beside the algorithm's client state


class LoraAggregation:
    """The interface, with the defaults of the naive rule: A and B both trained, both sent, and
    aggregated by the server algorithm tensor by tensor.

    Server side: `shared` (which trainable tensors the federation shares), `aggregate`. Client side,
    a pure function of what the server sent and what the client keeps (as SCAFFOLD's c_i):
    `client_start` (the tensors to load before the local steps) and `client_finish` (what is sent,
    and what the client keeps)."""

    name = "naive"
    freezes_a = False  # A stays at its shared initialisation and is neither trained nor sent (FFA-LoRA)
    merges_into_base = False  # the frozen weights change during the run (FLoRA, FedEx-LoRA)
    keeps_b = False  # each client's B stays with it: personalized models (FedSA-LoRA)
    server_algorithms: tuple[str, ...] | None = None  # the fed.algorithm values it composes with (None: all)

    def shared(self, state: StateDict) -> StateDict:
        """The part of the trainable tensors the server holds, sends and receives."""
        return state

    def client_start(self, shared: StateDict, initial: StateDict, kept: StateDict) -> StateDict:
        """What a client loads before its local steps: the server's tensors (and its own kept ones;
        `initial`: the run's initial trainable tensors, for what it has not kept yet)."""
        return shared

    def client_finish(self, weights: StateDict, kept: StateDict) -> tuple[StateDict, StateDict]:
        """After the local steps: (what the client sends, what it keeps)."""
        return weights, kept

    def aggregate(
        self, algorithm: Algorithm, global_state: StateDict, updates: list[ClientUpdate], scale: float, seed: int
    ) -> Outcome:
        """The next global state. `scale` is s = lora.alpha / lora.rank; `seed` this round's (for
        a re-initialised adapter)."""
        return Outcome(algorithm.aggregate(global_state, updates))


def client_weights(updates: list[ClientUpdate]) -> list[tuple[float, StateDict]]:
    """(n_i / n, y_i) per client: the example weights, normalised."""
    total = float(sum(u.num_examples for u in updates))
    if total <= 0:
        raise ValueError("aggregation weights sum to zero")
    return [(u.num_examples / total, u.weights) for u in updates]


def exact_sum(updates: list[ClientUpdate], module: Module, scale: float, frozen: StateDict) -> Stack:
    """sum_i (n_i / n) * s * B_i A_i, the mean of the clients' products, stacked."""
    return Stack.of(client_terms(client_weights(updates), module, scale, frozen))
