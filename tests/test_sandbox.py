"""The code sandbox against hostile samples: each payload fails its sample and changes nothing outside.

Most payloads run twice: with the audit hook (the usual run) and without it, which shows that
the kernel layers (seccomp, Landlock) hold on their own when Python-level defences are switched
off from inside.
"""

import os
import signal
import sys

import pytest

from openfedllm.evaluation.sandbox import kernel_layers, run_program

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox confines code on Linux only")
BOTH = pytest.mark.parametrize("hook", [True, False], ids=["with-audit-hook", "kernel-only"])


@pytest.mark.parametrize(
    "program, status, detail",
    [
        ("assert sum([1, 2]) == 3", "passed", ""),
        ("assert 1 == 2", "failed", "AssertionError"),
        ("while True:\n    pass", "timeout", ""),
        ("x = bytearray(8 * 1024 ** 3)", "failed", "MemoryError"),
        ("import os\nos._exit(0)", "failed", "no result (exit status 0)"),  # exits 0 before its check: not a pass
        ("import sys\nsys.exit(0)", "failed", "SystemExit: 0"),
        ("open('here.txt', 'w').write('ok')\nassert open('here.txt').read() == 'ok'", "passed", ""),
        (
            "import tempfile, os\nfd, name = tempfile.mkstemp()\nassert os.path.dirname(name) == os.getcwd()",
            "passed",
            "",
        ),
        (
            "import threading\nout = []\nt = threading.Thread(target=out.append, args=(1,))\nt.start()\nt.join()\n"
            "assert out == [1]",
            "passed",
            "",
        ),
        (
            "import os, signal\nsignal.signal(signal.SIGUSR1, lambda *a: None)\nos.kill(os.getpid(), signal.SIGUSR1)",
            "passed",
            "",
        ),  # signals to itself stay allowed
        (
            "import collections, heapq, re, math, hashlib, json, itertools, functools, fractions, decimal, datetime",
            "passed",
            "",
        ),  # what HumanEval and MBPP programs import
    ],
)
def test_each_sample_gets_its_own_verdict(program, status, detail):
    outcome = run_program(program, timeout=2)
    assert outcome.status == status and detail in outcome.detail, outcome


def _outside_writes(target):
    t = repr(str(target))
    return [
        f"open({t}, 'w').write('x')",
        f"import os\nos.close(os.open({t}, os.O_WRONLY | os.O_CREAT))",
        f"import tempfile, os\nos.close(tempfile.mkstemp(dir=os.path.dirname({t}))[0])",
        f"import pathlib\npathlib.Path({t}).touch()",
        f"import sqlite3\nsqlite3.connect({t}).execute('create table t (x)')",
        f"import os\nos.mkfifo({t})",
        f"import os\nos.symlink('/etc/passwd', {t})",
    ]


@BOTH
def test_nothing_is_written_outside_the_sample_directory(tmp_path, hook):
    outside = tmp_path / "outside"
    outside.mkdir()
    keep = outside / "keep.txt"
    keep.write_text("mine")
    for program in [
        *_outside_writes(outside / "new"),
        f"import os\nos.remove({str(keep)!r})",
        f"import os\nos.rename({str(keep)!r}, 'stolen.txt')",
        f"open({str(keep)!r}, 'a').write('x')",
    ]:
        assert run_program(program, timeout=2, audit_hook=hook).status == "failed", program
    assert sorted(os.listdir(outside)) == ["keep.txt"] and keep.read_text() == "mine"


FORK_EXEC = """import _posixsubprocess, os
r, w = os.pipe()
pid = _posixsubprocess.fork_exec([b"/bin/sh", b"-c", b"touch {mark}"], [b"/bin/sh"], True, (w,), None, None,
                                 -1, -1, -1, -1, -1, -1, r, w, True, True, -1, None, None, None, -1, None)
os.waitpid(pid, 0)
"""


@BOTH
def test_no_program_runs_and_no_process_outlives_the_sample(tmp_path, hook):
    mark = tmp_path / "ran"
    for program in [
        FORK_EXEC.format(mark=mark),  # no audit event on this path: only the kernel stops it
        f"import subprocess\nsubprocess.run(['/bin/touch', {str(mark)!r}], start_new_session=True)",
        f"import os\nos.posix_spawn('/bin/touch', ['touch', {str(mark)!r}], {{}})",
        f"import os\nos.execv('/bin/touch', ['touch', {str(mark)!r}])",
        "import os\nif os.fork() == 0:\n    os.setsid()\n    import time\n    time.sleep(60)",
    ]:
        assert run_program(program, timeout=2, audit_hook=hook).status == "failed", program
    assert not mark.exists()


@BOTH
def test_the_evaluator_cannot_be_signalled_read_or_reached(hook, monkeypatch):
    for program in [
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
        "import os, signal\nsignal.pidfd_send_signal(os.pidfd_open(os.getppid()), signal.SIGKILL)",
        "import os, signal\nos.kill(-1, signal.SIGKILL)",  # every process this user may signal
        "import os, signal\nos.killpg(os.getpgid(os.getppid()), signal.SIGKILL)",
        "import os, resource\nresource.prlimit(os.getppid(), resource.RLIMIT_NOFILE, (0, 0))",
        "import os\nopen(f'/proc/{os.getppid()}/environ', 'rb').read()",  # the judge's API key lives there
        "import os\nopen(f'/proc/{os.getppid()}/mem', 'rb')",
        "import socket\nsocket.create_connection(('127.0.0.1', 9))",
        "import socket\nsocket.socket(socket.AF_UNIX).connect('\\0abstract')",
        "open('/root/.bashrc').read()",  # outside the Python installation and the system libraries
    ]:
        outcome = run_program(program, timeout=2, audit_hook=hook)
        assert outcome.status == "failed" and "Error" in outcome.detail, (program, outcome)
    # still here, limits intact (a sample that killed the evaluator would have killed this test)
    import resource

    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] > 0
    assert signal.getsignal(signal.SIGTERM) is not None


def test_an_empty_environment_reaches_the_sample(monkeypatch):
    monkeypatch.setenv("OPENFEDLLM_JUDGE_API_KEY", "sk-secret")
    assert run_program(
        "import os\nassert not {'OPENFEDLLM_JUDGE_API_KEY', 'PATH', 'HOME'} & set(os.environ)", timeout=2
    ).passed


def test_python_level_defences_switched_off_from_inside_change_nothing(tmp_path):
    mark = tmp_path / "ran"
    for undo in [
        "import gc, sys\nfor o in gc.get_objects():\n    if isinstance(o, set) and 'os.fork' in o:\n        o.clear()",
        "import os\nos.path.realpath = lambda p: os.getcwd()",
        "import builtins\nbuiltins.all = lambda x: True",
    ]:
        program = f"{undo}\nopen({str(mark)!r}, 'w').write('x')"
        assert run_program(program, timeout=2).status == "failed", undo
    subinterpreter = (
        "import _xxsubinterpreters as interp\n"
        f"interp.run_string(interp.create(), \"open({str(mark)!r}, 'w').write('x')\")"
    )
    assert run_program(subinterpreter, timeout=2).status == "failed"
    assert not mark.exists()


def test_unbounded_output_costs_bounded_memory():
    # each sample's stderr goes to a capped file; only its tail is read back
    outcome = run_program("import sys\nwhile True:\n    sys.stderr.write('x' * 1_000_000)", timeout=5)
    assert outcome.status == "failed" and len(outcome.detail) <= 300
    assert run_program("while True:\n    print('y' * 1_000_000)", timeout=1).status == "timeout"  # stdout: /dev/null


def test_this_machine_has_the_kernel_layers():
    # the CI machines and the documented numbers assume Landlock with signal scoping (ABI >= 6)
    assert kernel_layers()["seccomp"] and kernel_layers()["landlock_abi"] >= 6
