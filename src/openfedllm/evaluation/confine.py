"""Inside the code sandbox: confine this process with the kernel, then run one sample.

`sandbox.run_program` starts `python -I -m openfedllm.evaluation.confine WORKDIR RESULT_FD ...`
with an empty environment, in a new session. Before the sample's first line runs, this module:

1. sets resource limits (address space, CPU time, file size, no core dumps), hard = soft;
2. applies a Landlock ruleset (Linux >= 5.13): reading only the Python installation, the system
   libraries and a few device files; writing, creating, deleting only inside WORKDIR; with
   Landlock ABI >= 6, no signals and no abstract Unix sockets to processes outside the sandbox;
3. loads a seccomp filter (libseccomp through pyseccomp) that refuses process creation (fork,
   vfork, clone without CLONE_THREAD, execve), every socket, signals and resource changes aimed at
   other processes, ptrace, mounts, namespaces, io_uring, BPF, kernel keys and modules;
4. installs a PEP 578 audit hook as a second layer (processes, sockets, writes outside WORKDIR).

Filters and rulesets cannot be removed once applied, and they bind every thread and
subinterpreter of the process, so nothing the sample does in Python can switch them off.
The result is written to RESULT_FD only after the sample's code returned: a sample that exits
early (`os._exit(0)`, `sys.exit(0)`) or is killed has no result and fails.
"""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import sys
import traceback

LANDLOCK_CREATE_RULESET, LANDLOCK_ADD_RULE, LANDLOCK_RESTRICT_SELF = 444, 445, 446  # same on every arch
PR_SET_NO_NEW_PRIVS = 38
EXIT_UNCONFINED = 3  # the kernel layers could not be applied: nothing of the sample ran

# Landlock access rights (include/uapi/linux/landlock.h), by the ABI that introduced them.
EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
ABI1_FS = (1 << 13) - 1  # EXECUTE .. MAKE_SYM
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15  # ABI 2, 3, 5
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6

READABLE = (
    "/usr",
    "/lib",
    "/lib64",
    "/lib32",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/dev/urandom",
    "/dev/random",
    "/dev/zero",
)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 where Landlock is absent or disabled."""
    version = _libc.syscall(LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(int(version), 0)


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _check(result: int, what: str) -> int:
    if result < 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")
    return int(result)


def apply_landlock(workdir: str, readable: list[str]) -> int:
    """Confine file access to reading `readable` and everything inside `workdir`; returns the ABI."""
    abi = landlock_abi()
    if abi == 0:
        return 0
    fs = ABI1_FS | (REFER if abi >= 2 else 0) | (TRUNCATE if abi >= 3 else 0) | (IOCTL_DEV if abi >= 5 else 0)
    fields = [
        fs,
        NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0,
        SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0,
    ]
    size = 8 if abi < 4 else 16 if abi < 6 else 24  # the struct grew with each of these ABIs
    attr = (ctypes.c_uint64 * 3)(*fields)
    ruleset = _check(
        _libc.syscall(LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0)),
        "landlock_create_ruleset",
    )
    file_rights = EXECUTE | WRITE_FILE | READ_FILE | (TRUNCATE if abi >= 3 else 0) | (IOCTL_DEV if abi >= 5 else 0)

    def allow(path: str, rights: int) -> None:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            return  # a path this system does not have
        try:
            if not os.path.isdir(path):
                rights &= file_rights  # only file rights are valid on a file
            rule = _PathBeneath(rights, fd)
            _check(_libc.syscall(LANDLOCK_ADD_RULE, ruleset, 1, ctypes.byref(rule), 0), f"landlock_add_rule {path}")
        finally:
            os.close(fd)

    for path in readable:
        allow(path, EXECUTE | READ_FILE | READ_DIR)
    allow("/dev/null", READ_FILE | WRITE_FILE | (TRUNCATE if abi >= 3 else 0))
    allow(workdir, fs)
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    _check(_libc.syscall(LANDLOCK_RESTRICT_SELF, ruleset, 0), "landlock_restrict_self")
    os.close(ruleset)
    return abi


DENIED_SYSCALLS = (
    "fork",
    "vfork",
    "execve",
    "execveat",  # new processes and programs (clone: below)
    "socket",
    "socketpair",  # every network and local socket
    "tkill",
    "pidfd_open",
    "pidfd_send_signal",
    "pidfd_getfd",  # reaching other processes
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "process_madvise",
    "process_mrelease",
    "sched_setparam",
    "sched_setscheduler",
    "sched_setattr",
    "ioprio_set",
    "migrate_pages",
    "move_pages",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "unshare",
    "setns",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsmount",
    "fspick",
    "mount_setattr",
    "name_to_handle_at",
    "open_by_handle_at",
    "quotactl",
    "mknod",
    "mknodat",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "fanotify_init",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",  # io_uring's work bypasses seccomp
    "keyctl",
    "add_key",
    "request_key",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "syslog",
    "acct",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "sethostname",
    "setdomainname",
    "iopl",
    "ioperm",
    "personality",
)
CLONE_THREAD = 0x00010000
TIOCSTI = 0x5412


def apply_seccomp() -> None:
    """Load the filter: everything is allowed except what could leave this one process."""
    import pyseccomp as sc

    me = os.getpid()
    denied = sc.ERRNO(errno.EPERM)
    f = sc.SyscallFilter(sc.ALLOW)
    for name in DENIED_SYSCALLS:
        try:
            f.add_rule(denied, name)
        except (OSError, ValueError):
            pass  # a syscall this architecture does not have
    f.add_rule(denied, "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, 0))  # threads only
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")  # its flags are out of reach: libc falls back to clone
    f.add_rule(denied, "ioctl", sc.Arg(1, sc.EQ, TIOCSTI))  # typing into a terminal
    for name, arg, allowed in (
        ("kill", 0, me),
        ("tgkill", 0, me),
        ("rt_sigqueueinfo", 0, me),
        ("rt_tgsigqueueinfo", 0, me),
        ("prlimit64", 0, 0),
        ("sched_setaffinity", 0, 0),
        ("setpriority", 1, 0),
    ):
        f.add_rule(denied, name, sc.Arg(arg, sc.NE, allowed))  # only this process (pid 0 = itself)
    f.load()


GUARD_EVENTS = {
    "os.fork",
    "os.forkpty",
    "os.system",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "os.killpg",
    "subprocess.Popen",
    "pty.spawn",
}
WRITE_EVENTS = {
    "os.remove",
    "os.rmdir",
    "os.rename",
    "os.truncate",
    "os.chmod",
    "os.chown",
    "os.mkdir",
    "os.symlink",
    "os.link",
    "os.utime",
    "shutil.rmtree",
    "shutil.move",
    "shutil.copyfile",
}


def audit_hook(root: str):
    """The second layer: refuse in Python what the kernel layers refuse, with a readable message."""

    def inside(path) -> bool:
        try:
            full = os.path.realpath(os.fsdecode(path))
        except Exception:
            return False
        return full == root or full.startswith(root + os.sep)

    def hook(event, args):
        if event in GUARD_EVENTS or event.startswith("socket.") and event != "socket.gethostname":
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "os.kill" and args[0] != os.getpid():
            raise PermissionError("sandbox: signals to other processes are not allowed")
        if event in WRITE_EVENTS and not all(inside(a) for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))):
            raise PermissionError(f"sandbox: {event} outside the working directory")
        if event == "open" and len(args) > 2 and isinstance(args[0], (str, bytes, os.PathLike)):
            mode, flags = args[1], args[2]
            writing = any(c in str(mode or "") for c in "wax+") or (isinstance(flags, int) and flags & 3)
            if writing and not inside(args[0]):
                raise PermissionError("sandbox: writing outside the working directory")

    return hook


def main(argv: list[str]) -> None:
    workdir, result_fd, memory_mb, cpu_seconds, hook = argv[0], int(argv[1]), int(argv[2]), int(argv[3]), argv[4]
    with open(os.path.join(workdir, "program.py"), encoding="utf-8") as f:
        program = f.read()
    for limit, value in (
        (resource.RLIMIT_AS, memory_mb * 2**20),
        (resource.RLIMIT_CPU, cpu_seconds),
        (resource.RLIMIT_FSIZE, 16 * 2**20),
        (resource.RLIMIT_CORE, 0),
    ):
        resource.setrlimit(limit, (value, value))
    readable = {p for p in (*READABLE, *sys.path, sys.prefix, sys.base_prefix, sys.exec_prefix) if p}
    try:
        apply_landlock(os.path.realpath(workdir), sorted(readable))
        apply_seccomp()
    except Exception as exc:  # fail closed: nothing of the sample runs unconfined
        print(f"sandbox: the kernel confinement failed: {exc}", file=sys.stderr)
        os._exit(EXIT_UNCONFINED)
    if hook == "1":
        sys.addaudithook(audit_hook(os.path.realpath(workdir)))
    del argv, f
    try:
        exec(compile(program, "program.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    except BaseException:  # SystemExit too: a sample passes only when its code ran to the end
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    os.write(result_fd, b"passed\n")
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1:])
