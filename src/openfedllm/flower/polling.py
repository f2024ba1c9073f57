"""How long to wait before asking again: briefly right after an answer, longer while none comes.

Every ask is an HTTP request the SuperLink answers in Python (~10-15 ms of CPU on this project's
2-core machine, measured with py-spy on an idle federation); on one machine that CPU comes out of
the training and evaluation the asks wait for. Answers cluster (a round's replies, SecAgg+'s stages
a fraction of a second apart), so the wait restarts short after each one.
"""

from __future__ import annotations


class Backoff:
    """Waits of `start` seconds, growing by `growth` per empty ask up to `cap`; `reset` after an answer."""

    def __init__(self, start: float, cap: float, growth: float = 1.5) -> None:
        self.start, self.cap, self.growth = start, max(cap, start), growth
        self.wait = start

    def next(self) -> float:
        wait, self.wait = self.wait, min(self.wait * self.growth, self.cap)
        return wait

    def reset(self) -> None:
        self.wait = self.start
