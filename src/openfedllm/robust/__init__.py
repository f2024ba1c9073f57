"""The one registry of aggregation rules (`fed.aggregator`): how the clients' moves y_i - x become
the round's Delta, before the server algorithm (FedAvg adds it to x; FedAvgM and FedAdam step with
it). `mean` is every algorithm's own example-weighted mean; the others resist malicious clients,
each in its own module citing its paper. `fed.norm_bound` (norm_bound.py) clips every move first.
"""

from __future__ import annotations

from collections.abc import Callable

from ..algorithms.base import client_moves as moves_of
from ..names import AggregatorName
from .krum import krum, multikrum
from .mean import mean
from .median import median
from .moves import Moves, clip, norm, squared_distances
from .norm_bound import bound
from .trimmed_mean import trimmed_mean

AGGREGATORS: dict[str, Callable] = {  # in AggregatorName's order
    "mean": mean,
    "median": median,
    "trimmed_mean": trimmed_mean,
    "krum": krum,
    "multikrum": multikrum,
}
DESCRIPTIONS = {
    "mean": "example-weighted mean (McMahan et al. 2017): the algorithms' own rule",
    "median": "coordinate-wise median (Yin et al. 2018)",
    "trimmed_mean": "coordinate-wise mean without the fed.trim_fraction largest and smallest (Yin et al. 2018)",
    "krum": "the move closest to its n - f - 2 nearest neighbours (Blanchard et al. 2017)",
    "multikrum": "the mean of the m best-scoring moves by Krum's score (Blanchard et al. 2017)",
}

__all__ = ["AGGREGATORS", "AggregatorName", "Moves", "bound", "clip", "moves_of", "norm", "squared_distances"]
