"""`flower-superexec` that forks each app process from a warm parent: `python -m openfedllm.flower.superexec`.

Flower 1.41's SuperExec starts a fresh `flwr-clientapp` (on a SuperNode) or `flwr-serverapp` (on
the SuperLink) for every task, and each one imports Flower (1.2-2 s of CPU here) before it reads its
message; a ServerApp then imports torch and transformers too. On a 2-core machine two nodes' imports
take the cores from the training they sit in front of, every round. This SuperExec is Flower's own
(its task loop, its auth, its arguments) with one change: its executor imports the app's modules
once, then runs each task in a child forked from itself, calling the same entry point
(`flwr-clientapp` / `flwr-serverapp`) with the arguments Flower's SubprocessExecutor would have
passed. Each task still runs in a process of its own that exits when the task ends; only the
imports are shared (copy-on-write). Other task types (simulation, ...) start as Flower starts them.

A second change on a SuperNode: Flower's loop asks the SuperNode for work every
FLWR_SUPEREXEC_TASK_POLL_INTERVAL seconds (at 0.1 s, ~3% of a core for the SuperExec and ~5% for
the SuperNode answering it, measured here). When started with WAKE_ENV naming a pipe, its wait ends as
soon as the SuperNode writes to that pipe (it does for each message it stores), so the poll itself
can stay at Flower's 1 s while a ClientApp still starts at once.

The SuperLink and SuperNode wrappers (`superlink.py`, `supernode.py`) start this in place of
`flower-superexec`. It patches Flower's executor factory, so it runs only on the Flower versions it
is tested on (TESTED_FLOWER), like the SuperNode wrapper.
"""

from __future__ import annotations

import functools
import importlib
import os
import select
import signal
import sys
import time
import types

TESTED_FLOWER = ("1.41.0",)
COMMAND = [sys.executable, "-m", "openfedllm.flower.superexec"]  # what the wrappers start instead

# What each task type's process imports, loaded once in this parent. The ServerApp's list is the
# heavy one (torch, transformers, peft): a run's server would otherwise spend seconds on it.
PRELOAD = {
    "flwr-clientapp": ["flwr.supernode.cli", "openfedllm.flower.node"],
    "flwr-serverapp": [
        "flwr.superlink.cli",
        "torch",
        "transformers",
        "peft",
        "openfedllm.flower.server",
        "openfedllm.setup",
        "openfedllm.rounds",
    ],
}
# Which PRELOAD a SuperExec takes: set by the wrapper that starts it (one SuperExec serves one side).
PRELOAD_ENV = "OPENFEDLLM_SUPEREXEC_PRELOAD"
# The read end of a pipe this SuperExec's parent writes to when a task may be waiting (supernode.py).
WAKE_ENV = "OPENFEDLLM_SUPEREXEC_WAKE_FD"


def require_tested_flower(wrapper: str, patched_in_place: bool) -> None:
    """Stop with one line unless this is a Flower version the wrapper's patch is tested on, with the
    attribute it patches still there; the plain Flower command works instead, only slower."""
    import flwr

    if flwr.__version__ not in TESTED_FLOWER or not patched_in_place:
        sys.exit(
            f"openfedllm.flower.{wrapper}: patches Flower {', '.join(TESTED_FLOWER)}'s {wrapper}; this is "
            f"Flower {flwr.__version__}: run plain flower-{wrapper} instead"
        )


def preload(command: str) -> None:
    """Import what `command`'s process would; one that fails is left to the task, which reports it."""
    for module in PRELOAD.get(command, []):
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - the forked task imports it again and fails where it is seen
            return


@functools.cache  # looked up once: scanning the installed packages' entry points is not free per message
def entry_point(command: str):
    """The function the console script `command` runs (flwr-clientapp, flwr-serverapp)."""
    from importlib.metadata import entry_points

    (found,) = entry_points(group="console_scripts", name=command)
    return found.load()


class ForkExecutor:
    """Flower's SubprocessExecutor, with `fork` + the entry point in place of `Popen(command)`."""

    def __init__(self, fallback) -> None:
        self.fallback = fallback  # Flower's SubprocessExecutor, for task types this does not preload
        self.children: set[int] = set()
        self.loaded: set[str] = set()

    def get_eligible_capacity(self, supported_task_types, **kwargs):
        return self.fallback.get_eligible_capacity(supported_task_types, **kwargs)

    def wait_for_capacity(self, task_type=None, **kwargs) -> None:
        self.fallback.wait_for_capacity(task_type, **kwargs)

    def close(self) -> None:
        self.fallback.close()

    def reconcile(self) -> None:
        """Reap the children that ended (a forked child is this process's to wait for)."""
        for pid in list(self.children):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self.children.discard(pid)
        self.fallback.reconcile()

    def launch(self, spec):
        from flwr.supercore.constant import TASK_TYPE_TO_APPIO_API_ADDRESS_ARG, TASK_TYPE_TO_COMMAND
        from flwr.supercore.superexec.executor import LaunchResult

        command = TASK_TYPE_TO_COMMAND[spec.task_type]
        if command not in PRELOAD:
            return self.fallback.launch(spec)
        # The arguments SubprocessExecutor.launch gives the command, in its order.
        args = [command, TASK_TYPE_TO_APPIO_API_ADDRESS_ARG[spec.task_type], spec.runtime_api_address]
        args += ["--token", spec.token]
        if spec.insecure:
            args.append("--insecure")
        elif spec.root_certificates_path is not None:
            args += ["--root-certificates", spec.root_certificates_path]
        if spec.parent_pid is not None:
            args += ["--parent-pid", str(spec.parent_pid)]
        if spec.runtime_dependency_install:
            args.append("--allow-runtime-dependency-installation")
        if command not in self.loaded:  # once: every later task of this type starts warm
            preload(command)
            self.loaded.add(command)
        main = entry_point(command)
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as exc:  # no memory or no process slot: the SuperLink hears the task failed
            return LaunchResult.failed(f"could not fork {command}: {exc}")
        if pid:
            self.children.add(pid)
            return LaunchResult.accepted()
        _run_child(main, args, spec.suppress_output)  # never returns


def _run_child(main, args: list[str], suppress_output: bool) -> None:
    """In the forked child: the task's own process, as if started as `args`; exits with its status."""
    code = 1
    try:
        # The parent's handlers close the parent's connections; the task registers its own.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        if suppress_output:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
        if "numpy" in sys.modules:
            # A fresh process draws fresh seeds; a fork would repeat the parent's numpy stream
            # (Flower's SecAgg+ quantization rounds stochastically with np.random).
            sys.modules["numpy"].random.seed()
        sys.argv = args
        main()
        code = 0
    except SystemExit as exc:  # flwr_exit ends every task with sys.exit
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - the child must never return into the parent's loop
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            # Not sys.exit: the parent's atexit handlers and open clients are not this process's.
            os._exit(code)


def module_with(module: types.ModuleType, **changes) -> types.ModuleType:
    """A copy of `module` with `changes` to its attributes. Set as one Flower module's attribute
    (its `time`, its `subprocess`), it changes what that module alone calls."""
    copy = types.ModuleType(module.__name__)
    copy.__dict__.update(module.__dict__)
    copy.__dict__.update(changes)
    return copy


def woken_sleep(fd: int):
    """A `time.sleep` that also ends when `fd` becomes readable, draining it. Once the writer is
    gone (the SuperNode exited; Flower's parent monitor ends this process soon after) it is a plain sleep."""
    os.set_blocking(fd, False)
    watching = True

    def sleep(seconds: float) -> None:
        nonlocal watching
        if not watching:
            time.sleep(seconds)
            return
        ready, _, _ = select.select([fd], [], [], seconds)
        if ready:
            try:
                watching = os.read(fd, 4096) != b""  # b"": end of file, no writer left
            except BlockingIOError:  # another reader drained it first: nothing to wait for
                pass

    return sleep


def main() -> None:
    from flwr.supercore.cli import flower_superexec  # the command's function
    from flwr.supercore.constant import ExecutorType
    from flwr.supercore.superexec import run_superexec as loop

    require_tested_flower("superexec", hasattr(loop, "get_executor") and getattr(loop, "time", None) is time)
    real = loop.get_executor

    def get_executor(executor_type, *args, **kwargs):
        executor = real(executor_type, *args, **kwargs)
        return ForkExecutor(executor) if executor_type == ExecutorType.SUBPROCESS else executor

    setattr(loop, "get_executor", get_executor)  # noqa: B010 - a module's attribute
    if os.environ.get(WAKE_ENV):  # the loop's wait between polls
        setattr(loop, "time", module_with(time, sleep=woken_sleep(int(os.environ[WAKE_ENV]))))  # noqa: B010
    # Before the first task: the imports happen while the federation waits for its first run.
    for command in filter(None, os.environ.get(PRELOAD_ENV, "").split(",")):
        preload(command)
    sys.argv[0] = "flower-superexec"
    flower_superexec()


if __name__ == "__main__":
    main()
