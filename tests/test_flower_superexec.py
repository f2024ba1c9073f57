"""The warm SuperExec: each task in a process of its own, forked from the SuperExec, run as the
command Flower's own SubprocessExecutor would have started, with the same arguments.

The task's entry point is replaced by one that reports what it saw; the fork, the arguments, the
exit status and the reaping are the real ones."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

pytest.importorskip("flwr")
from flwr.supercore.constant import TaskType  # noqa: E402
from flwr.supercore.superexec.executor import ExecutionSpec, LaunchResultStatus, SubprocessExecutor  # noqa: E402

from openfedllm.flower import superexec  # noqa: E402


def _spec(task_type: TaskType, task_id: int, **kwargs) -> ExecutionSpec:
    values = dict(
        task_type=task_type,
        runtime_api_address="127.0.0.1:9094",
        token=f"token-{task_id}",
        insecure=False,
        root_certificates_path="/certs/ca.crt",
        runtime_dependency_install=False,
        parent_pid=os.getpid(),
        suppress_output=False,
        task_id=task_id,
    )
    return ExecutionSpec(**{**values, **kwargs})


def _flowers_own_command(spec: ExecutionSpec, monkeypatch) -> list[str]:
    """What Flower's SubprocessExecutor would have started for the spec (its Popen, captured)."""
    from flwr.supercore.superexec.executor import subprocess_executor

    started = []
    monkeypatch.setattr(subprocess_executor.subprocess, "Popen", lambda args, **kw: started.append(args))
    SubprocessExecutor().launch(spec)
    monkeypatch.undo()
    return started[0]


def _wait_for(paths: list[Path], timeout: float = 60) -> None:
    """Until every file exists (a cap for a stuck child, not a pace)."""
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(p.exists() for p in paths), [str(p) for p in paths if not p.exists()]


def test_each_task_is_its_own_forked_process_running_flowers_command_line(tmp_path, monkeypatch):
    specs = [
        _spec(TaskType.CLIENT_APP, 1),
        _spec(TaskType.CLIENT_APP, 2, insecure=True, root_certificates_path=None),
        _spec(TaskType.SERVER_APP, 3, runtime_dependency_install=True),
    ]
    expected = [_flowers_own_command(s, monkeypatch) for s in specs]
    assert expected[0][0] == "flwr-clientapp" and expected[2][0] == "flwr-serverapp"

    def task_main():  # stands in for flwr-clientapp / flwr-serverapp: reports, then exits as flwr_exit does
        import sys

        import numpy as np

        task_id = int(sys.argv[sys.argv.index("--token") + 1].split("-")[-1])
        out = tmp_path / f"task{task_id}.json"
        report = {"argv": sys.argv, "pid": os.getpid(), "ppid": os.getppid(), "draw": np.random.rand()}
        out.write_text(json.dumps(report))
        raise SystemExit(0 if task_id != 3 else 1)

    monkeypatch.setattr(superexec, "entry_point", lambda command: task_main)
    monkeypatch.setattr(superexec, "preload", lambda command: None)
    loaded_before = set(superexec.PRELOAD)
    executor = superexec.ForkExecutor(SubprocessExecutor())
    for spec in specs:
        assert executor.launch(spec).status == LaunchResultStatus.ACCEPTED
    reports = [tmp_path / f"task{i}.json" for i in (1, 2, 3)]
    _wait_for(reports)
    got = [json.loads(p.read_text()) for p in reports]
    for report, command in zip(got, expected):
        assert report["argv"] == command  # Flower's own command line, argument for argument
        assert report["ppid"] == os.getpid() and report["pid"] != os.getpid()
    assert len({r["pid"] for r in got}) == 3
    # a fork would repeat the parent's numpy stream; each task draws its own
    assert len({r["draw"] for r in got}) == 3
    assert executor.loaded == loaded_before  # every type preloaded once, in this (the parent) process

    # The children are reaped by the loop's reconcile, each with the status its task exited with.
    statuses = {}
    for pid in list(executor.children):
        _, status = os.waitpid(pid, 0)
        statuses[pid] = os.waitstatus_to_exitcode(status)
    assert sorted(statuses.values()) == [0, 0, 1]
    executor.reconcile()  # already waited for: gone without an error
    assert not executor.children


def test_task_types_it_does_not_preload_start_as_flower_starts_them(monkeypatch):
    launched = []

    class Fallback(SubprocessExecutor):
        def launch(self, spec):
            launched.append(spec.task_type)
            return super().launch(spec)

    from flwr.supercore.superexec.executor import subprocess_executor

    monkeypatch.setattr(subprocess_executor.subprocess, "Popen", lambda args, **kw: None)
    monkeypatch.setattr(os, "fork", lambda: pytest.fail("forked a task it does not preload"))
    executor = superexec.ForkExecutor(Fallback())
    assert executor.launch(_spec(TaskType.SIMULATION, 1)).status == LaunchResultStatus.ACCEPTED
    assert launched == [TaskType.SIMULATION] and not executor.children


def test_a_fork_that_fails_is_a_failed_launch_not_a_dead_superexec(monkeypatch):
    def no_fork():
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(superexec, "preload", lambda command: None)
    monkeypatch.setattr(os, "fork", no_fork)
    result = superexec.ForkExecutor(SubprocessExecutor()).launch(_spec(TaskType.CLIENT_APP, 1))
    assert result.status == LaunchResultStatus.FAILED and "could not fork flwr-clientapp" in result.message


def test_the_wrappers_stop_with_one_line_on_a_flower_they_were_not_tested_on(monkeypatch):
    import flwr

    with pytest.raises(SystemExit, match=r"^openfedllm.flower.supernode: patches Flower 1.41.0's supernode; "):
        superexec.require_tested_flower("supernode", patched_in_place=False)  # the patched attribute is gone
    monkeypatch.setattr(flwr, "__version__", "2.0.0")
    with pytest.raises(SystemExit, match="this is Flower 2.0.0: run plain flower-superlink instead"):
        superexec.require_tested_flower("superlink", patched_in_place=True)
    monkeypatch.undo()
    superexec.require_tested_flower("superexec", patched_in_place=True)  # the tested version: no exit


def test_a_backoff_grows_by_half_to_its_cap_and_restarts_after_an_answer():
    from openfedllm.flower.polling import Backoff

    waits = Backoff(0.1, 0.5)
    assert [round(waits.next(), 6) for _ in range(6)] == [0.1, 0.15, 0.225, 0.3375, 0.5, 0.5]
    waits.reset()
    assert waits.next() == 0.1
    assert Backoff(2.0, 1.0).next() == 2.0  # a cap below the start is the start


def test_an_idle_node_backs_off_to_its_cap_and_a_message_brings_it_back():
    from openfedllm.flower.supernode import Waits

    waits = Waits(poll=0.2, cap=1.0)
    # Flower's idle wait (3 s) after a message: 0.2, then x1.5 per empty pull, capped at 1
    assert [round(waits.seconds(3), 6) for _ in range(7)] == [0.2, 0.3, 0.45, 0.675, 1.0, 1.0, 1.0]
    assert waits.seconds(0.5) == 0.2 and waits.seconds(0.1) == 0.1  # a reply wait: at most the poll
    waits.message()
    assert waits.seconds(3) == 0.2
    assert Waits(poll=2.0, cap=1.0).seconds(3) == 2.0  # a cap below the poll is the poll


def test_a_woken_sleep_ends_on_a_write_drains_it_and_sleeps_plainly_once_the_writer_is_gone():
    read, write = os.pipe()
    sleep = superexec.woken_sleep(read)
    os.write(write, b"!!!")
    sleep(60)  # returns at once: a write is pending (else this test would take a minute)
    with pytest.raises(BlockingIOError):
        os.read(read, 1)  # drained: the next wait is a full one until the next write
    os.close(write)
    sleep(60)  # end of file: returns, and stops watching a pipe nobody writes to
    start = time.monotonic()
    sleep(0.2)
    assert time.monotonic() - start >= 0.2  # a plain sleep, not a busy loop on a readable pipe
    os.close(read)


def test_the_node_wrapper_wakes_its_superexec_for_each_stored_message(monkeypatch):
    """supernode.patch on a stand-in for Flower's loop module: the SuperExec it starts gets the
    pipe's read end (fd and env) and the preload; each pull that stored a message writes to it."""
    import subprocess
    import types

    from openfedllm.flower import supernode

    started, pulled = [], iter([None, 7])
    monkeypatch.setattr(subprocess, "Popen", lambda command, *a, **kw: started.append((command, kw)))
    monkeypatch.delenv(superexec.PRELOAD_ENV, raising=False)
    loop = types.SimpleNamespace(time=time, subprocess=subprocess, _pull_and_store_message=lambda: next(pulled))
    waits = supernode.patch(loop)

    loop.subprocess.Popen(["flower-superexec", "--insecure"])
    loop.subprocess.Popen(["other", "--x"])
    (command, kw), (other, other_kw) = started
    assert command == [*superexec.COMMAND, "--insecure"] and (other, other_kw) == (["other", "--x"], {})
    fd = int(kw["env"][superexec.WAKE_ENV])
    assert kw["pass_fds"] == (fd,) and kw["env"][superexec.PRELOAD_ENV] == "flwr-clientapp"
    os.set_blocking(fd, False)

    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)  # what the loop's waits hand to the real sleep
    loop.time.sleep(3)  # no message yet: the idle wait is the poll, then grows
    loop.time.sleep(0.5)  # a wait for the reply: at most the poll
    assert slept == [0.2, 0.2] and waits.idle.wait == pytest.approx(0.3)
    assert loop._pull_and_store_message() is None
    with pytest.raises(BlockingIOError):
        os.read(fd, 1)  # nothing stored: no wake-up
    assert loop._pull_and_store_message() == 7
    assert os.read(fd, 1) == b"!" and waits.idle.wait == 0.2  # stored: the SuperExec is woken, the poll is fast again
    assert loop.time.time is time.time and loop.time is not time  # only the loop's own waits change
