"""The byte ledger: what the federation's clients sent and received, and `comm.budget_mb`.

Every federated client record in metrics.jsonl carries `bytes_up` (its update and extras, as
serialised) and `bytes_down` (x and the algorithm's broadcast). The simulation computes them with
`compression.array_bytes` on the arrays a deployment would send, exactly what a deployment's
records measure (tested). A run's total,
up + down over all clients and rounds, is FlowerTune's "communication cost".

With a budget, the run stops with one line before the round that would pass it, its last
checkpoint kept. A round is predicted to cost what the last one did, or before any round x and
the algorithm's broadcast down and y_i (SCAFFOLD: and its c_i change) up, per sampled client. A
fresh run whose plan cannot fit is refused at its start. Under SecAgg+ the prediction counts the
masked vector as int64 (twice float32); its keys and shares (a few kB per node) count once a
round has measured them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UserError

MB = 1e6  # the budget's unit: 10^6 bytes, as FlowerTune reports communication


def mb(n: float) -> str:
    return f"{n / MB:.2f} MB" if n < 10 * MB else f"{n / MB:.0f} MB"


@dataclass
class Ledger:
    budget: float  # bytes; 0: none
    spent: int = 0  # up + down so far, this phase
    last_round: int = 0  # the latest round's bytes, the prediction for the next

    @classmethod
    def start(cls, config, log) -> Ledger:
        """The ledger of the federated phase, with what metrics.jsonl (`log`, as resumed) already holds."""
        ledger = cls(config.comm.budget_mb * MB)
        rounds: dict[int, int] = {}
        for r in log.records():
            if r.get("type") == "client" and r.get("phase") == "federated" and "bytes_up" in r:
                rounds[r["round"]] = rounds.get(r["round"], 0) + r["bytes_up"] + r["bytes_down"]
        ledger.spent = sum(rounds.values())
        ledger.last_round = rounds[max(rounds)] if rounds else 0
        return ledger

    def check_plan(self, start_round: int, rounds: int, first_round: int) -> None:
        """A run that starts afresh: refused at once if its planned rounds cannot fit the budget."""
        if not self.budget or start_round or rounds * first_round <= self.budget:
            return
        fit = int(self.budget // first_round)
        raise UserError(
            f"comm.budget_mb {self.budget / MB:g}: {rounds} rounds of about {mb(first_round)} each (up + down, "
            f"all sampled clients) need {mb(rounds * first_round)}; {fit} fit. Lower fed.rounds or "
            "fed.clients_per_round, or raise the budget"
        )

    def check(self, round_index: int, first_round: int) -> None:
        """Before round `round_index` (0-based): stop if it would take the run past the budget."""
        predicted = self.last_round or first_round
        if self.budget and self.spent + predicted > self.budget:
            raise UserError(
                f"comm.budget_mb {self.budget / MB:g}: round {round_index + 1} would bring the run's communication "
                f"to {mb(self.spent + predicted)} ({mb(self.spent)} so far); stopped before it, the last "
                "checkpoint is kept"
            )

    def add(self, updates) -> int:
        """A round's clients: their bytes, up + down."""
        total = sum(u.bytes_up + u.bytes_down for u in updates)
        self.spent += total
        self.last_round = total
        return total
