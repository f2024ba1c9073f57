"""The one registry of FL algorithm names.

A name is checked when the config is read; a misspelling fails there, listing the valid names.
Each algorithm is a small module on the interface of `base.Algorithm`: a server side
(`server_message`, `aggregate`, `state_dict`) and a client side (`client_hooks`,
`client_finish`) that the simulation and a deployment call alike.
"""

from __future__ import annotations

from ..errors import UserError
from .base import Algorithm, ClientTask, ClientUpdate, StateDict, example_weighted_mean, weighted_mean
from .fedavg import FedAvg
from .fedavgm import FedAvgM
from .fedopt import FIRST_MOMENTS, SECOND_MOMENTS, FedAdagrad, FedAdam, FedYogi
from .fedprox import FedProx
from .scaffold import CORRECTIONS, Scaffold

ALGORITHMS: dict[str, type[Algorithm]] = {  # in names.AlgorithmName's order (a test keeps them equal)
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "scaffold": Scaffold,
    "fedavgm": FedAvgM,
    "fedadagrad": FedAdagrad,
    "fedyogi": FedYogi,
    "fedadam": FedAdam,
}


def check_algorithm(name: str) -> None:
    if name not in ALGORITHMS:
        raise UserError(f"fed.algorithm: unknown algorithm {name!r}; valid: {', '.join(ALGORITHMS)}")


def build_algorithm(fed_config) -> Algorithm:
    """The configured algorithm, both halves; the server side then calls `start(client_sizes)`."""
    check_algorithm(fed_config.algorithm)
    return ALGORITHMS[fed_config.algorithm].from_config(fed_config)


def describe(name: str) -> str:
    """The algorithm's one-line docstring: its paper and rule."""
    return (ALGORITHMS[name].__doc__ or name).strip().splitlines()[0]


__all__ = [
    "ALGORITHMS",
    "CORRECTIONS",
    "FIRST_MOMENTS",
    "SECOND_MOMENTS",
    "Algorithm",
    "ClientTask",
    "ClientUpdate",
    "StateDict",
    "build_algorithm",
    "check_algorithm",
    "describe",
    "example_weighted_mean",
    "weighted_mean",
]
