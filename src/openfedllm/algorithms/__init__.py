"""The one registry of FL algorithm names.

A name is checked when the config is read; a misspelling fails there, listing the valid names.
Each algorithm is a small module with `client_hooks`, `aggregate` and `state_dict` /
`load_state_dict` (its server state, saved in every checkpoint).
"""

from __future__ import annotations

from ..errors import UserError
from .base import ClientUpdate, StateDict, example_weighted_mean, weighted_mean
from .fedavg import FedAvg

ALGORITHMS = {
    "fedavg": FedAvg,
}


def check_algorithm(name: str) -> None:
    if name not in ALGORITHMS:
        raise UserError(f"fed.algorithm: unknown algorithm {name!r}; valid: {', '.join(ALGORITHMS)}")


def build_algorithm(fed_config):
    check_algorithm(fed_config.algorithm)
    return ALGORITHMS[fed_config.algorithm]()


__all__ = ["ALGORITHMS", "ClientUpdate", "StateDict", "build_algorithm", "check_algorithm",
           "example_weighted_mean", "weighted_mean"]
