"""The privacy accountant: (epsilon, delta) of a run's rounds, from Google's dp-accounting (RDP).

Client-level differential privacy: neighbouring federations differ in one client's whole data. Each
round releases the clipped moves' sum plus Gaussian noise of std sigma * C. How it is counted:
- central (the server adds the noise): this tool samples a fixed number m of the N clients without
  replacement, so the relation is "replace one client" and one client can move the clipped sum by
  up to 2C: each round is a Gaussian mechanism of noise multiplier sigma / 2, amplified by sampling
  m of N without replacement (Wang, Balle and Kasiviswanathan, AISTATS 2019, Theorem 27:
  dp-accounting's SampledWithoutReplacementDpEvent). The amplification assumes the sample is
  secret: with DP on, clients are drawn from the DP secret, not from train.seed.
- local (each client adds the noise to its own move): the server sees every message and who sent
  it, so there is no amplification; a client may be sampled every round, so its epsilon is that of
  `rounds` Gaussian mechanisms of multiplier sigma / 2 composed.
Rounds with different sigmas (an extended run keeps the sigma it started with) compose as they ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import UserError

if TYPE_CHECKING:
    import dp_accounting

# dp-accounting (and the scipy it pulls in) is imported where a run with DP counts: ~1.4 s of
# start-up that every process importing the rounds (a CLI run, a deployed server, each node's
# worker) would otherwise pay with DP off.


def _rdp():
    """A fresh RDP accountant under the replace-one relation (see the module docstring)."""
    import dp_accounting
    from dp_accounting.rdp import RdpAccountant

    return RdpAccountant(neighboring_relation=dp_accounting.privacy_accountant.NeighboringRelation.REPLACE_ONE)


@dataclass(frozen=True)
class Accountant:
    mode: str  # central | local
    num_clients: int  # N: the population sampled from
    per_round: int  # m: clients sampled each round
    delta: float

    def event(self, noise_multiplier: float) -> dp_accounting.DpEvent:
        """One round's release, as dp-accounting describes it (sensitivity 2C under replace-one)."""
        import dp_accounting

        gaussian = dp_accounting.GaussianDpEvent(noise_multiplier / 2)
        if self.mode == "local":
            return gaussian
        return dp_accounting.SampledWithoutReplacementDpEvent(self.num_clients, self.per_round, gaussian)

    def epsilon(self, noise_multipliers: list[float]) -> float:
        """Epsilon at `delta` after rounds run with these sigmas (0.0 before any round)."""
        if not noise_multipliers:
            return 0.0
        accountant = _rdp()
        for sigma in sorted(set(noise_multipliers)):
            accountant.compose(self.event(sigma), noise_multipliers.count(sigma))
        return float(accountant.get_epsilon(self.delta))

    def calibrate(self, target_epsilon: float, rounds: int) -> float:
        """The smallest sigma whose `rounds` rounds stay within target_epsilon (Brent's method over
        the accountant, dp-accounting's calibrate_dp_mechanism)."""
        import dp_accounting
        from dp_accounting import mechanism_calibration

        try:
            return float(
                mechanism_calibration.calibrate_dp_mechanism(
                    _rdp,
                    lambda sigma: dp_accounting.SelfComposedDpEvent(self.event(sigma), rounds),
                    target_epsilon,
                    self.delta,
                    bracket_interval=mechanism_calibration.ExplicitBracketInterval(1e-3, 1e4),
                    tol=1e-3,
                )
            )
        except (ValueError, RuntimeError) as exc:  # no sigma in the bracket reaches the target
            raise UserError(
                f"dp.target_epsilon {target_epsilon}: no noise multiplier up to 1e4 keeps {rounds} rounds "
                f"within it at delta {self.delta} ({exc})"
            ) from None

    def rounds_within(self, spent: list[float], sigma: float, target_epsilon: float, limit: int) -> int:
        """How many more rounds at `sigma` fit in target_epsilon after `spent` (at most `limit`);
        epsilon grows with every round, so a binary search."""
        low, high = 0, limit  # low fits; find the largest count that does
        while low < high:
            mid = (low + high + 1) // 2
            if self.epsilon(spent + [sigma] * mid) <= target_epsilon:
                low = mid
            else:
                high = mid - 1
        return low
