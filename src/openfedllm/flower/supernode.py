"""`flower-supernode`, with a shorter idle poll and a warm SuperExec: `python -m openfedllm.flower.supernode ARGS`.

Flower 1.41's SuperNode sleeps a fixed 3 s whenever it finds no message for it; a round pays that
wait twice (the training message, then nothing else: the next round's message). Here the wait
after a message starts at OPENFEDLLM_NODE_POLL (seconds, default 0.2: SecAgg+'s stages follow each
other within a second) and grows 1.5x per empty poll up to OPENFEDLLM_NODE_POLL_MAX (default 1): an
idle node asks the SuperLink once a second, not five times, and the SuperLink's cost of answering
(~6% of a core per node at 0.2 s, measured here) does not sit beside the server's evaluation. A
round's first message waits at most that cap.

Everything else is the real flower-supernode, with its own arguments, except that the SuperExec it
starts is `openfedllm.flower.superexec` (each ClientApp forked from a parent with Flower imported),
woken through a pipe as soon as a message is stored instead of polling for it. A plain
`flower-supernode` works with the same ClientApp, only slower per round.

The patch reaches into Flower's loop module, so it runs only on the Flower versions it is tested
on (superexec.TESTED_FLOWER); on another, this command stops with one line (use plain `flower-supernode`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from .polling import Backoff
from .superexec import COMMAND, PRELOAD_ENV, WAKE_ENV, module_with, require_tested_flower

POLL_ENV, POLL_MAX_ENV = "OPENFEDLLM_NODE_POLL", "OPENFEDLLM_NODE_POLL_MAX"


class Waits:
    """The loop's waits. Flower's idle wait (3 s, between pulls that found nothing) becomes `poll`
    right after a message and grows 1.5x per empty pull up to `cap`; its waits for the
    ClientApp's reply (0.5 s, an in-process check) become at most `poll`."""

    IDLE = 3.0  # what start_client_internal sleeps when a pull found nothing

    def __init__(self, poll: float, cap: float) -> None:
        self.poll, self.idle = poll, Backoff(poll, cap)

    def seconds(self, asked: float) -> float:
        return min(asked, self.poll) if asked < self.IDLE else self.idle.next()

    def message(self) -> None:
        self.idle.reset()


def main() -> None:
    from flwr.supernode import start_client_internal as loop
    from flwr.supernode.cli import flower_supernode

    require_tested_flower(
        "supernode",
        getattr(loop, "time", None) is time
        and getattr(loop, "subprocess", None) is subprocess
        and callable(getattr(loop, "_pull_and_store_message", None)),
    )
    patch(loop)
    sys.argv[0] = "flower-supernode"
    flower_supernode()


def patch(loop) -> Waits:
    """Rewire Flower's SuperNode loop module (`flwr.supernode.start_client_internal`): its
    SuperExec, its pulls (which wake that SuperExec) and its waits. Returns the waits."""
    waits = Waits(float(os.environ.get(POLL_ENV, "0.2")), float(os.environ.get(POLL_MAX_ENV, "1")))
    # The SuperExec it starts for ClientApp tasks: openfedllm's, which forks each one from a parent
    # that has Flower and the ClientApp imported (superexec.py), instead of a cold flwr-clientapp,
    # and which this process wakes through a pipe when it stores a message.
    popen = subprocess.Popen
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)  # a full pipe already holds a wake-up: never block the node

    def start_superexec(command, *args, **kwargs):
        if list(command[:1]) == ["flower-superexec"]:
            command = [*COMMAND, *command[1:]]
            kwargs["pass_fds"] = (*kwargs.get("pass_fds", ()), wake_read)
            env = {PRELOAD_ENV: "flwr-clientapp", **(kwargs.get("env") or os.environ)}
            kwargs["env"] = {**env, WAKE_ENV: str(wake_read)}
        return popen(command, *args, **kwargs)

    pull = loop._pull_and_store_message

    def pull_and_wake(*args, **kwargs):
        run_id = pull(*args, **kwargs)
        if run_id is not None:  # a message (or Flower's error reply to it) is stored: a task is due
            waits.message()
            try:
                os.write(wake_write, b"!")
            except (BlockingIOError, BrokenPipeError):  # already pending, or the SuperExec is gone
                pass
        return run_id

    setattr(loop, "subprocess", module_with(subprocess, Popen=start_superexec))  # noqa: B010 - a module's attribute
    setattr(loop, "_pull_and_store_message", pull_and_wake)  # noqa: B010 - looked up by the loop per pull
    # The loop module calls time.sleep(3) when idle (and 0.5 s waits while pushing): shorten its waits only.
    setattr(loop, "time", module_with(time, sleep=lambda seconds: time.sleep(waits.seconds(seconds))))  # noqa: B010
    return waits


if __name__ == "__main__":
    main()
