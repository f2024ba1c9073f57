"""`flower-supernode`, with a shorter idle poll and a warm SuperExec: `python -m openfedllm.flower.supernode ARGS`.

Flower 1.41's SuperNode sleeps a fixed 3 s whenever it finds no message for it; a round pays that
wait twice (the training message, then nothing else: the next round's message). Everything else
is the real flower-supernode, with its own arguments, except that the SuperExec it starts is
`openfedllm.flower.superexec` (each ClientApp forked from a parent with Flower imported).
OPENFEDLLM_NODE_POLL sets the wait (seconds, default 0.2); a plain `flower-supernode` works with
the same ClientApp, only slower per round.

The patch reaches into Flower's loop module, so it runs only on the Flower versions it is tested
on (superexec.TESTED_FLOWER); on another, this command stops with one line (use plain `flower-supernode`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import types

from .superexec import COMMAND, PRELOAD_ENV, require_tested_flower


def main() -> None:
    from flwr.supernode import start_client_internal as loop
    from flwr.supernode.cli import flower_supernode

    require_tested_flower(
        "supernode", getattr(loop, "time", None) is time and getattr(loop, "subprocess", None) is subprocess
    )

    poll = float(os.environ.get("OPENFEDLLM_NODE_POLL", "0.2"))
    # The SuperExec it starts for ClientApp tasks: openfedllm's, which forks each one from a parent
    # that has Flower and the ClientApp imported (superexec.py), instead of a cold flwr-clientapp.
    popen = subprocess.Popen

    def start_superexec(command, *args, **kwargs):
        if list(command[:1]) == ["flower-superexec"]:
            command = [*COMMAND, *command[1:]]
        return popen(command, *args, **kwargs)

    shell = types.ModuleType("subprocess")
    shell.__dict__.update(subprocess.__dict__)
    setattr(shell, "Popen", start_superexec)  # noqa: B010 - a module's attribute
    setattr(loop, "subprocess", shell)  # noqa: B010
    os.environ.setdefault(PRELOAD_ENV, "flwr-clientapp")  # the SuperExec inherits it
    # The loop module calls time.sleep(3) when idle (and 0.5 s waits while pushing); cap only its own
    # waits, through a copy of the time module that only that module sees.
    shim = types.ModuleType("time")
    shim.__dict__.update(time.__dict__)
    setattr(shim, "sleep", lambda seconds: time.sleep(min(seconds, poll)))  # noqa: B010 - a module's attribute
    setattr(loop, "time", shim)  # noqa: B010
    sys.argv[0] = "flower-supernode"
    flower_supernode()


if __name__ == "__main__":
    main()
