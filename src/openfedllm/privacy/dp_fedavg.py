"""DP-FedAvg: client-level differential privacy by clipping each client's move and adding noise.

McMahan, Ramage, Talwar and Zhang, "Learning Differentially Private Recurrent Language Models",
ICLR 2018, Algorithm 1 (with a fixed-size sample, as this tool samples):
    Delta_i <- (y_i - x) * min(1, C / ||y_i - x||)              (clip each client's move to norm C)
    Delta   <- (sum_i Delta_i + N(0, sigma^2 C^2 I)) / m          (central: the server adds the noise)
Every client counts the same (m = clients sampled per round, whether or not all replied): weighting
by examples would let one client's share, and so its sensitivity, exceed C / m.
Local mode: each client adds N(0, sigma^2 C^2 I) to its own clipped move before it leaves, and the
server averages what it receives (each message is private on its own; the sum carries m times the
noise variance of the central mode).

Adaptive clipping, Andrew, Thakkar, McMahan and Ramaswamy, "Differentially Private Learning with
Adaptive Clipping", NeurIPS 2021, Algorithm 1 (geometric update): with b_i = 1 if ||y_i - x|| <= C,
    b~ = (sum_i b_i + N(0, sigma_b^2)) / m;    C <- C * exp(-eta_C (b~ - gamma)),
so C tracks the gamma-quantile of the update norms. The count query spends privacy too: the moves
get the noise multiplier z_Delta = (z^-2 - (2 sigma_b)^-2)^(-1/2), so that both together are one
Gaussian mechanism of multiplier z (their Theorem 1) -- what the accountant counts.
"""

from __future__ import annotations

import math

import torch

from ..algorithms.base import StateDict
from ..robust.moves import Moves, clip
from ..robust.norm_bound import bound


def gaussian(like: StateDict, std: float, seed: int) -> StateDict:
    """N(0, std^2) for every coordinate, float64, from a generator seeded with `seed`; drawn in sorted
    key order, so a state read back from a checkpoint (keys sorted) gets the same noise."""
    generator = torch.Generator().manual_seed(seed)
    return {k: torch.randn(like[k].shape, dtype=torch.float64, generator=generator) * std for k in sorted(like)}


def central(
    moves: Moves, clip_norm: float, noise_std: float, per_round: int, seed: int
) -> tuple[StateDict, list[bool]]:
    """(sum_i clip(m_i) + N(0, noise_std^2)) / per_round, and which moves were clipped; `noise_std`
    is z_Delta * C (z * C with fixed clipping)."""
    clipped, cut = bound(moves, clip_norm)  # the same clipping as fed.norm_bound; cut: b_i = not cut
    total = {k: torch.stack([m[k] for m in clipped]).sum(0) for k in clipped[0]}
    noise = gaussian(total, noise_std, seed)
    return {k: (t + noise[k]) / per_round for k, t in total.items()}, cut


def local(move: StateDict, clip_norm: float, noise_multiplier: float, seed: int) -> StateDict:
    """A client's own move, clipped to C, plus N(0, (z C)^2): what a client sends in local mode."""
    clipped, _ = clip(move, clip_norm)
    noise = gaussian(clipped, noise_multiplier * clip_norm, seed)
    return {k: t + noise[k] for k, t in clipped.items()}


def count_stddev(configured: float, per_round: int) -> float:
    """sigma_b: as configured, or m / 20 (Andrew et al.'s recommendation)."""
    return configured or per_round / 20


def update_noise_multiplier(z: float, sigma_b: float) -> float:
    """z_Delta = (z^-2 - (2 sigma_b)^-2)^(-1/2): the moves' share of the noise under adaptive clipping."""
    rest = z**-2 - (2 * sigma_b) ** -2
    if rest <= 0:
        raise ValueError(f"noise multiplier {z} is too small for clipped-count noise {sigma_b}: need z < 2 sigma_b")
    return rest**-0.5


def adapt(
    clip_norm: float, cut: list[bool], per_round: int, sigma_b: float, quantile: float, lr: float, seed: int
) -> float:
    """The next round's C: C * exp(-eta_C (b~ - gamma)), b~ the noised share of unclipped moves."""
    generator = torch.Generator().manual_seed(seed)
    unclipped = sum(not c for c in cut) + float(torch.randn((), dtype=torch.float64, generator=generator)) * sigma_b
    return clip_norm * math.exp(-lr * (unclipped / per_round - quantile))
