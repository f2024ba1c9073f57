"""`flower-supernode`, with a shorter idle poll: `python -m openfedllm.flower.supernode ARGS`.

Flower 1.41's SuperNode sleeps a fixed 3 s whenever it finds no message for it; a round pays that
wait twice (the training message, then nothing else: the next round's message). Everything else
is the real flower-supernode, with its own arguments. OPENFEDLLM_NODE_POLL sets the wait (seconds,
default 0.2); a plain `flower-supernode` works with the same ClientApp, only slower per round.
"""

from __future__ import annotations

import os
import sys
import time
import types


def main() -> None:
    from flwr.supernode import start_client_internal as loop
    from flwr.supernode.cli import flower_supernode

    poll = float(os.environ.get("OPENFEDLLM_NODE_POLL", "0.2"))
    # The loop module calls time.sleep(3) when idle (and 0.5 s waits while pushing); cap only its own
    # waits, through a copy of the time module that only that module sees.
    shim = types.ModuleType("time")
    shim.__dict__.update(time.__dict__)
    shim.sleep = lambda seconds: time.sleep(min(seconds, poll))
    loop.time = shim
    sys.argv[0] = "flower-supernode"
    flower_supernode()


if __name__ == "__main__":
    main()
