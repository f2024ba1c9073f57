"""Running generated code: one fresh process per sample, limited, so a bad sample fails alone.

Each program runs in `python -I` (no user site, no PYTHON* variables) in its own temporary
working directory and process group, with:
- a wall-clock limit (the whole process group is killed) and a CPU-time limit;
- an address-space limit (allocation without bound ends in MemoryError) and a file-size limit;
- an audit hook (PEP 578), installed before the sample's code runs and impossible to remove,
  that refuses new processes (fork, exec, spawn, subprocess, os.system), signals to other
  processes, every network socket, native code through ctypes, and writing, deleting or renaming
  anything outside the working directory.

This is the protection HumanEval's own harness asks for (its `reliability_guard`), made
stronger by the process boundary and the limits; it is not a security boundary against a
determined attacker (a kernel sandbox such as a container is), and the docs say so.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

GUARD = r'''
import os as _os, sys as _sys
_ROOT = _os.path.realpath(_os.getcwd())
_DENY = {"os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.kill", "os.killpg",
         "subprocess.Popen", "pty.spawn", "os.startfile", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata"}
_WRITES = {"os.remove", "os.rmdir", "os.rename", "os.truncate", "os.chmod", "os.chown", "os.mkdir",
           "os.symlink", "os.link", "os.utime", "shutil.rmtree", "shutil.move", "shutil.copyfile"}
def _inside(path):
    try:
        full = _os.path.realpath(_os.fsdecode(path) if not isinstance(path, int) else ".")
    except Exception:
        return False
    return full == _ROOT or full.startswith(_ROOT + _os.sep)
def _guard(event, args):
    if event in _DENY or event.startswith("socket.") and event != "socket.gethostname":
        raise PermissionError("sandbox: " + event + " is not allowed")
    if event in _WRITES and not all(_inside(a) for a in args[:2] if isinstance(a, (str, bytes, _os.PathLike))):
        raise PermissionError("sandbox: " + event + " outside the working directory")
    if event == "open" and len(args) > 1 and args[1] is not None:
        mode, flags = args[1], args[2] if len(args) > 2 else 0
        writing = any(c in str(mode) for c in "wax+") or (isinstance(flags, int) and flags & 3)
        if writing and not _inside(args[0]):
            raise PermissionError("sandbox: writing outside the working directory")
_sys.addaudithook(_guard)
del _guard
'''


@dataclass
class Outcome:
    passed: bool
    status: str  # passed, failed, timeout
    detail: str = ""  # the last line of the error output, for a failed sample


def _limits(memory_mb: int, cpu_seconds: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (memory_mb * 2**20, memory_mb * 2**20))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 2**20, 16 * 2**20))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


def run_program(program: str, timeout: float = 5.0, memory_mb: int = 1024) -> Outcome:
    """Run `program`; it passes when it exits with status 0 within the limits."""
    with tempfile.TemporaryDirectory(prefix="openfedllm-sandbox-") as work:
        script = Path(work) / "program.py"
        script.write_text(GUARD + "\n" + program)
        env = {"PATH": "/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8",
               "OMP_NUM_THREADS": "1", "no_proxy": "*"}
        proc = subprocess.Popen([sys.executable, "-I", str(script)], cwd=work, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                                preexec_fn=_limits(memory_mb, int(timeout) + 1))
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            return Outcome(False, "timeout", f"no result within {timeout:g} s")
        finally:
            _kill_group(proc)  # anything the sample left behind in its group
        if proc.returncode == 0:
            return Outcome(True, "passed")
        lines = err.decode("utf-8", "replace").strip().splitlines()
        return Outcome(False, "failed", lines[-1] if lines else f"exit status {proc.returncode}")


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def run_programs(programs: list[str], timeout: float = 5.0, memory_mb: int = 1024, workers: int = 2) -> list[Outcome]:
    """Each program in its own sandboxed process, `workers` at a time, in order."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: run_program(p, timeout, memory_mb), programs))
