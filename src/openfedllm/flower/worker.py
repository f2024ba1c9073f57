"""A node's warm worker: one long-lived process per SuperNode that holds the model and the rows.

Flower starts a new ClientApp process for every message; this worker is what makes a round cost
the training and not torch's import plus a model load. The ClientApp (`node.py`) connects over a
Unix socket that only this node's user can open (an authenticated `multiprocessing` connection),
sends the message as plain numpy arrays and settings, and gets the reply back the same way: the
data and the model never leave the node, and the ClientApp still checks every reply before Flower
sends it. The first message starts the worker; it exits when the SuperNode's SuperExec (the parent
of the ClientApp processes) is gone, or after OPENFEDLLM_WORKER_IDLE seconds without work.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from multiprocessing.connection import Client, Listener
from pathlib import Path

START_TIMEOUT = 120  # seconds for a new worker to import torch and listen


def _paths(node_config: dict) -> tuple[str, Path, Path]:
    """(socket address, key file, log file) of this node's worker. The socket lives in the temp dir
    under a hashed name: a Unix socket path must stay under ~100 characters. The name includes the
    installed code's version (its files' modification times), so a changed openfedllm gets a new worker."""
    package = Path(__file__).resolve().parents[1]
    code = max(p.stat().st_mtime_ns for p in package.rglob("*.py"))
    ident = f"{node_config.get('state-dir', '')}:{node_config.get('partition-id')}:{os.getuid()}:{code}"
    name = hashlib.sha256(ident.encode()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / f"openfedllm-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    return str(folder / f"{name}.sock"), folder / f"{name}.key", folder / f"{name}.log"


def _connect(address: str, key_file: Path):
    if not (os.path.exists(address) and key_file.is_file()):
        return None
    try:
        return Client(address, family="AF_UNIX", authkey=key_file.read_bytes())
    except (OSError, EOFError, ConnectionError):
        return None


def call(request: dict, handlers: str) -> dict:
    """Send one request to the node's worker (starting it if needed); its reply, or its error raised.
    `handlers` ("module:NAME") names the dict of request kind -> function the worker serves with:
    the worker knows nothing of what it runs, so it imports nothing of the node's code itself."""
    address, key_file, log = _paths(request["node_config"])
    conn = _connect(address, key_file)
    if conn is None:
        conn = _start(address, key_file, log, handlers)
    with conn:
        conn.send(request)
        answer = conn.recv()
    if "error" in answer:
        raise RuntimeError(answer["error"])
    return answer["reply"]


def _start(address: str, key_file: Path, log: Path, handlers: str):
    if os.path.exists(address):
        os.unlink(address)  # a worker that died left its socket behind
    key_file.write_bytes(secrets.token_bytes(32))
    key_file.chmod(0o600)
    with log.open("ab") as out:
        # Its own session: it outlives this ClientApp process, and watches the SuperExec instead.
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "openfedllm.flower.worker",
                "--socket",
                address,
                "--key-file",
                str(key_file),
                "--parent",
                str(os.getppid()),
                "--handlers",
                handlers,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        conn = _connect(address, key_file)
        if conn is not None:
            return conn
        time.sleep(0.05)
    raise RuntimeError(f"the node's worker did not start within {START_TIMEOUT} s; see {log}")


def _watch(parent: int, idle: float, last_work: list[float]) -> None:
    while True:
        time.sleep(1.0)
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            os._exit(0)  # the SuperNode is gone: so is this node's work
        if time.monotonic() - last_work[0] > idle:
            os._exit(0)


def serve(address: str, key_file: Path, parent: int, handlers: str) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import importlib

    from ..errors import UserError
    from ..logs import quiet_libraries

    module, _, name = handlers.partition(":")
    served = getattr(importlib.import_module(module), name)

    quiet_libraries()
    last_work = [time.monotonic()]
    idle = float(os.environ.get("OPENFEDLLM_WORKER_IDLE", "1800"))
    threading.Thread(target=_watch, args=(parent, idle, last_work), daemon=True).start()
    with Listener(address, family="AF_UNIX", authkey=key_file.read_bytes()) as listener:
        os.chmod(address, 0o600)
        while True:
            try:
                conn = listener.accept()
            except (OSError, EOFError):
                continue  # a client that failed authentication
            with conn:
                try:
                    request = conn.recv()
                    reply = served[request["kind"]](request["content"], request["node_config"])
                    answer = {"reply": reply}
                except UserError as exc:
                    answer = {"error": str(exc)}
                except Exception as exc:  # noqa: BLE001 - the node's log has the trace; the server gets the line
                    traceback.print_exc()
                    answer = {"error": f"{type(exc).__name__}: {exc}"}
                try:
                    conn.send(answer)
                except (OSError, EOFError):
                    pass  # the ClientApp went away (its task was stopped)
            last_work[0] = time.monotonic()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True)
    parser.add_argument("--key-file", required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--handlers", required=True, help="module:NAME of the request handlers")
    args = parser.parse_args()
    serve(args.socket, Path(args.key_file), args.parent, args.handlers)


if __name__ == "__main__":
    main()
