"""Fault injection: the run kills its own process at a named point, so a test of resume can stop a
run exactly where it means to (not wherever a signal sent from outside happens to land).

OPENFEDLLM_KILL_AT="POINT:ROUND" makes the process that reaches that point SIGKILL itself there:
nothing is flushed, cleaned up or caught, as with a power cut. The points the round loop marks:
    replies:R     round R's client updates are in (on a deployment, the nodes have trained and saved
                  their client state), before the server aggregates or checkpoints round R
    checkpoint:R  round R's checkpoint is on disk, before round R+1 starts
OPENFEDLLM_FAIL_WRITE_AT="checkpoint:R" makes the writing of round R's checkpoint fail with
ENOSPC after its first file, as a full disk would.
OPENFEDLLM_INTERRUPT_AT="prepare" sends the process SIGINT (what Ctrl-C sends) at the start of
`setup.prepare`, while the model and data load.
With OPENFEDLLM_KILL_ONCE=FILE the kill happens only if FILE does not exist yet (it is created first,
holding the pid of the process that kills itself), so a resumed run passes the same point.
Unset (as always outside tests), `point` does nothing.
"""

from __future__ import annotations

import errno
import os
import signal

ENV = "OPENFEDLLM_KILL_AT"
ONCE_ENV = "OPENFEDLLM_KILL_ONCE"
INTERRUPT_ENV = "OPENFEDLLM_INTERRUPT_AT"
FAIL_WRITE_ENV = "OPENFEDLLM_FAIL_WRITE_AT"


def fail_write(name: str, round_number) -> None:
    """Mark a write a test makes fail as on a full disk: OSError(ENOSPC) if OPENFEDLLM_FAIL_WRITE_AT names it."""
    if os.environ.get(FAIL_WRITE_ENV) == f"{name}:{round_number}":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def interrupt(name: str) -> None:
    """Mark a point where a test presses Ctrl-C: SIGINT to this process if OPENFEDLLM_INTERRUPT_AT names it."""
    if os.environ.get(INTERRUPT_ENV) == name:
        os.kill(os.getpid(), signal.SIGINT)


def point(name: str, round_number: int) -> None:
    """Mark a point of the run; the process dies here if OPENFEDLLM_KILL_AT names it."""
    if os.environ.get(ENV) != f"{name}:{round_number}":
        return
    once = os.environ.get(ONCE_ENV)
    if once:
        try:
            fd = os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return  # killed here once already
        os.write(fd, str(os.getpid()).encode())  # who dies: a test waits for exactly this process
        os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)
