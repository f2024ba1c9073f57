"""A Flower federation on this machine for development and tests, and submitting runs to any.

`openfedllm federation up --nodes N` starts one SuperLink and N SuperNodes on 127.0.0.1 (node i
trains partition i of the run's data), writes the connection into DIR/flwr/config.toml, and
records the processes in DIR/processes.json; `federation down` stops exactly those. Without --dir
each federation gets its own DIR (~/.cache/openfedllm/federations/NAME: local, local-2, ...) and a
connection of its own (openfedllm-local, openfedllm-local-2, ...); a bare `down` stops only the
federation started from the same terminal. With --tls the
SuperLink serves HTTPS with a development CA made in DIR/certs; with --auth (TLS implied) only
nodes whose public key was registered may join. `openfedllm sft --federation CONN` submits a run
(`flwr run`), streams its log and returns when it ends.

Every process gets the offline-safe settings: no telemetry, no update check, no runtime
dependency installation (otherwise each run `uv sync`s the app's dependencies into a new venv).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..errors import UserError

CONNECTION = "openfedllm-local"
OFFLINE_ENV = {  # always set: a federation here must work offline
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
}
APP_DIR = Path(__file__).resolve().parent / "app"  # the Flower App's pyproject, shipped in the package


def federations_dir() -> Path:
    """Where `federation up` keeps each federation it starts without --dir, one folder per name."""
    from ..models import cache_dir

    return cache_dir() / "federations"


def connection_name(name: str) -> str:
    return CONNECTION if name == "local" else f"openfedllm-{name}"


def new_name() -> str:
    """The first of local, local-2, local-3, ... whose folder holds no running federation."""
    taken = {record["name"] for record in running()}
    return next(name for name in ("local", *(f"local-{i}" for i in range(2, 1000))) if name not in taken)


def check_name(name: str) -> str:
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise UserError(f"--name: letters, digits, - and _ only, got {name!r}")
    return name


def running() -> list[dict]:
    """The records of the federations under federations_dir() with a process still alive."""
    found = []
    for state in sorted(federations_dir().glob("*/processes.json")):
        try:
            record = json.loads(state.read_text())
        except (OSError, ValueError):
            continue
        if any(alive(p) for p in record.get("pids", [])):
            found.append({"name": state.parent.name, **record})
    return found


def this_terminals() -> Path:
    """The folder of the federation this terminal (session) started, when exactly one is up;
    otherwise one line naming the running ones. A `down` never guesses between federations."""
    up_now = running()
    mine = [r for r in up_now if r.get("session") == os.getsid(0)]
    if len(mine) == 1:
        return Path(mine[0]["dir"])
    listed = ", ".join(f"{r['name']} ({r['connection']})" for r in up_now)
    if not up_now:
        raise UserError(f"no federation is up under {federations_dir()} (--dir DIR for one started elsewhere)")
    if not mine:
        raise UserError(f"none of the federations up was started from this terminal: {listed}; name one: --name NAME")
    raise UserError(f"this terminal started several federations: {listed}; name one: --name NAME")


def flwr_env(flwr_home: Path | None = None) -> dict:
    """This process's environment with the offline settings, the venv's bin first on PATH (the
    SuperLink and SuperNodes start `flower-superexec` by name), and FLWR_HOME if given."""
    env = {**os.environ, **OFFLINE_ENV}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise UserError(f"the SuperLink exited at start (status {process.returncode}); see {log}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise UserError(f"the SuperLink did not open port {port} within {timeout:g} s; see {log}")


def write_connection(flwr_home: Path, address: str, root_certificates: Path | None, name: str = CONNECTION) -> None:
    """A flwr config.toml holding one connection, `name`, made the default."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    lines = ["[superlink]", f'default = "{name}"', "", f"[superlink.{name}]", f'address = "{address}"']
    lines.append(f'root-certificates = "{root_certificates}"' if root_certificates else "insecure = true")
    (flwr_home / "config.toml").write_text("\n".join(lines) + "\n")


# --- development certificates and node keys ------------------------------------------------------


def make_dev_certificates(folder: Path, hosts: list[str]) -> dict[str, Path]:
    """A self-signed CA and a server certificate for `hosts` (IPs or names), valid for a year.
    For development: in production, use certificates from the organisation's own CA."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "openfedllm development CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP384R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca": folder / "ca.crt", "cert": folder / "server.pem", "key": folder / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    paths["key"].chmod(0o600)
    return paths


def make_node_key(folder: Path, name: str) -> tuple[Path, Path]:
    """An EC (NIST P-384) key pair in OpenSSH format, as SuperNode authentication takes it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private, public = folder / name, folder / f"{name}.pub"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    )
    private.chmod(0o600)
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n"
    )
    return private, public


def register_node(public_key: Path, flwr_home: Path, connection: str = CONNECTION) -> None:
    """Add a node's public key to the SuperLink's allow-list (`flwr supernode register`)."""
    done = subprocess.run(
        ["flwr", "supernode", "register", str(public_key), connection],
        env=flwr_env(flwr_home),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise UserError(f"registering {public_key} failed: {(done.stdout + done.stderr).strip()[-300:]}")


# --- processes -------------------------------------------------------------------------------------


def superlink_command(port: int, folder: Path, certs: dict | None, auth: bool, warm: bool = True) -> list[str]:
    """The SuperLink's command line; `warm`: openfedllm's wrapper, whose SuperExec forks each
    ServerApp from a parent with torch and openfedllm imported (superlink.py)."""
    cmd = [
        *([sys.executable, "-m", "openfedllm.flower.superlink"] if warm else ["flower-superlink"]),
        "--port",
        str(port),
        "--database",
        str(folder / "superlink.db"),
        "--disable-runtime-dependency-installation",
    ]
    if certs:
        cmd += [
            "--ssl-ca-certfile",
            str(certs["ca"]),
            "--ssl-certfile",
            str(certs["cert"]),
            "--ssl-keyfile",
            str(certs["key"]),
        ]
    else:
        cmd.append("--insecure")
    if auth:
        cmd.append("--enable-supernode-auth")
    return cmd


def supernode_command(
    superlink: str, node_port: int, node_config: str, ca: Path | None, private_key: Path | None = None
) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "openfedllm.flower.supernode",
        "--superlink",
        superlink,
        "--port",
        str(node_port),
        "--node-config",
        node_config,
        "--max-wait-time",
        "120",
    ]
    cmd += ["--root-certificates", str(ca)] if ca else ["--insecure"]
    if private_key:
        cmd += ["--auth-supernode-private-key", str(private_key)]
    return cmd


def start(cmd: list[str], log: Path, env: dict) -> subprocess.Popen:
    # Its own session, so `down` can stop the process with the children it started (SuperExec, apps);
    # in the folder `up` was run from, where a run config's relative paths (config-file) point.
    with log.open("ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def threads_per_node(nodes: int) -> int:
    """Nodes started on one machine share its cores: each gets its share (at least 1). torch's own
    default, every core in every node, oversubscribes them: 3 nodes of 2 threads on 2 cores made a
    deployed round 3.06x the simulation's, against 1.39x with 1 thread each (docs/deployment.md)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // nodes)


def node_config_of(i: int, nodes: int, folder: Path, threads: int, data: str = "") -> str:
    """Node i's config: its own file if given, else partition i of the run's own data."""
    where = f"data-path='{Path(data).resolve()}'" if data else f"num-partitions={nodes}"
    config = f"partition-id={i} {where} state-dir='{folder / 'node-state'}'"
    return config + (f" threads={threads}" if threads else "")


def up(
    nodes: int,
    folder: Path,
    port: int = 0,
    tls: bool = False,
    auth: bool = False,
    threads: int = 0,
    data: list[str] | None = None,
    name: str = "local",
) -> dict:
    """Start a SuperLink and `nodes` SuperNodes on 127.0.0.1; returns what processes.json records.
    With `data`, node i trains on the file data[i] (one per node) instead of a partition. `threads`
    0: the machine's cores shared among the nodes (threads_per_node)."""
    if nodes < 1:
        raise UserError(f"--nodes must be at least 1, got {nodes}")
    data = list(data or [])
    if data and len(data) != nodes:
        raise UserError(f"--data: one file per node ({nodes}), got {len(data)}")
    for path in data:
        if not Path(path).expanduser().exists():
            raise UserError(f"--data: file not found: {path}")
    state_file = folder / "processes.json"
    if state_file.exists() and any(alive(p) for p in json.loads(state_file.read_text())["pids"]):
        raise UserError(f"a federation from {folder} is still up; run openfedllm federation down --dir {folder}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "logs").mkdir(exist_ok=True)
    # A federation brought up again starts from a clean SuperLink state: the former nodes' entries
    # would count as connected until their heartbeats time out (about a minute).
    for stale in folder.glob("superlink.db*"):
        stale.unlink()
    tls = tls or auth  # Flower requires TLS for node authentication
    port = port or free_port()
    certs = make_dev_certificates(folder / "certs", ["127.0.0.1", "localhost"]) if tls else None
    flwr_home = folder / "flwr"
    connection = connection_name(name)
    write_connection(flwr_home, f"127.0.0.1:{port}", certs["ca"] if certs else None, connection)
    env = flwr_env(flwr_home)
    link = start(superlink_command(port, folder, certs, auth), folder / "logs" / "superlink.log", env)
    pids = [link.pid]
    node_pids: dict[str, int] = {}
    record = {
        "pids": pids,
        "port": port,
        "superlink": link.pid,
        "nodes": node_pids,
        "flwr_home": str(flwr_home),
        "tls": tls,
        "auth": auth,
        "dir": str(folder),
        "connection": connection,
        "session": os.getsid(0),  # the terminal it was started from: what a bare `down` there stops
    }
    try:
        wait_for_port(port, 60, link, folder / "logs" / "superlink.log")
        keys = {}
        for i in range(nodes):
            if auth:
                private, public = make_node_key(folder / "keys", f"node{i}")
                register_node(public, flwr_home)
                keys[i] = private
        for i in range(nodes):
            config = node_config_of(i, nodes, folder, threads or threads_per_node(nodes), data[i] if data else "")
            cmd = supernode_command(
                f"127.0.0.1:{port}", free_port(), config, certs["ca"] if certs else None, keys.get(i)
            )
            node = start(cmd, folder / "logs" / f"node{i}.log", env)
            pids.append(node.pid)
            node_pids[str(i)] = node.pid
    finally:
        state_file.write_text(json.dumps(record, indent=1))  # what `down` stops, even after a failed start
    return record


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:  # a zombie (exited, not yet reaped by its parent) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def stop_group(pid: int, timeout: float = 10) -> None:
    """SIGTERM the process's session (it and the apps it started), SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and alive(pid):
            time.sleep(0.1)
        if not alive(pid):
            return


def down(folder: Path) -> int:
    """Stop the processes `up` started from `folder`; returns how many were running."""
    state_file = folder / "processes.json"
    if not state_file.is_file():
        raise UserError(f"no federation was started from {folder} (no processes.json)")
    pids = json.loads(state_file.read_text())["pids"]
    running = [p for p in pids if alive(p)]
    # The SuperLink (and the ServerApp it runs) first: with the nodes stopped first, a server still
    # running would finish its round without them and checkpoint that round as done.
    for pid in pids:
        stop_group(pid)
    state_file.unlink()
    return len(running)


# --- submitting a run ------------------------------------------------------------------------------


def find_flwr_home(connection: str) -> Path:
    """The FLWR_HOME whose config.toml names `connection`: $FLWR_HOME, else the one of a federation
    `federation up` started (a running one first)."""
    import tomli

    candidates = [Path(os.environ["FLWR_HOME"])] if os.environ.get("FLWR_HOME") else []
    up_now = [Path(r["flwr_home"]) for r in running()]
    candidates += up_now + [h for h in sorted(federations_dir().glob("*/flwr")) if h not in up_now]
    for home in candidates:
        file = home / "config.toml"
        if file.is_file() and connection in tomli.loads(file.read_text()).get("superlink", {}):
            return home
    where = os.environ.get("FLWR_HOME") or str(federations_dir())
    raise UserError(
        f"--federation {connection}: no such connection in {where} "
        f"(start one with openfedllm federation up, or set FLWR_HOME)"
    )


SIMULATION = "local-simulation"  # the connection name that runs Flower's Simulation Engine here


def simulate(run_config: dict, num_clients: int, cpus: float, gpus: float) -> int:
    """The run on Flower's Simulation Engine on this machine: a SuperLink in simulation mode (started
    here, stopped at the end) runs the same ServerApp, and Ray runs the ClientApp for `num_clients`
    virtual SuperNodes (node i holds partition i), as many at once as `cpus` and `gpus` per client
    allow. No SuperLink or SuperNode to set up by hand."""
    try:
        import ray  # noqa: F401 - only to fail here, naming the extra, when it is missing
    except ImportError:
        raise UserError(
            "--federation local-simulation needs Flower's simulation extra: pip install 'flwr[simulation]==1.41.0'"
        ) from None
    folder = Path(tempfile.mkdtemp(prefix="openfedllm-simulation-"))
    port = free_port()
    home = folder / "flwr"
    write_connection(home, f"127.0.0.1:{port}", None, SIMULATION)
    cmd = superlink_command(port, folder, None, False, warm=False) + ["--simulation", "--isolation", "subprocess"]
    cmd += ["--fleet-api-address", f"127.0.0.1:{free_port()}", "--control-api-address", f"127.0.0.1:{free_port()}"]
    link = start(cmd, folder / "superlink.log", flwr_env(home))
    try:
        wait_for_port(port, 60, link, folder / "superlink.log")
        resources = (
            f"num-supernodes={num_clients} client-resources-num-cpus={cpus:g} client-resources-num-gpus={gpus:g}"
        )
        status = submit(SIMULATION, {**run_config, "simulation": True}, home, ["--federation-config", resources])
    finally:
        stop_group(link.pid)
    if status == 0:
        shutil.rmtree(folder, ignore_errors=True)
    else:
        print(f"openfedllm: the simulation's SuperLink log is in {folder / 'superlink.log'}", file=sys.stderr)
    return status


def submit(connection: str, run_config: dict, home: Path | None = None, extra: list[str] | None = None) -> int:
    """`flwr run` the app on `connection` with `run_config` (its run id read from the JSON `flwr run
    --format json` prints), then `flwr log --stream` its log as it comes until the run ends; the exit
    status is 0 only if the run completed successfully."""
    import tomli_w

    home = home or find_flwr_home(connection)
    with tempfile.TemporaryDirectory() as tmp:
        overrides = Path(tmp) / "run_config.toml"
        overrides.write_text(tomli_w.dumps(run_config))
        cmd = ["flwr", "run", str(APP_DIR), connection, "--run-config", str(overrides), "--format", "json"]
        started = subprocess.run(cmd + list(extra or []), env=flwr_env(home), capture_output=True, text=True)
    try:
        run_id = str(json.loads(started.stdout)["run-id"])
    except (ValueError, KeyError, TypeError):
        sys.stderr.write(started.stdout + started.stderr)
        return started.returncode or 1
    if not run_id.isdigit():
        sys.stderr.write(started.stdout + started.stderr)
        return 1
    stream = ["flwr", "log", run_id, connection, "--stream"]
    with subprocess.Popen(
        stream, env=flwr_env(home), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        for line in process.stdout or ():
            sys.stdout.write(line)  # through this process's stdout: a caller (or a test) sees the log
    status, details = run_status(connection, home, run_id)
    if status != "finished:completed":
        why = details.removeprefix("ServerApp failed with exception: ") if details not in ("", "N/A") else status
        print(f"openfedllm: the federated run {run_id} failed: {why}", file=sys.stderr)
        return 1
    return 0


def run_status(connection: str, home: Path, run_id: str) -> tuple[str, str]:
    """(status, status details) of a run, as `flwr ls` reports them."""
    done = subprocess.run(
        ["flwr", "ls", connection, "--run-id", run_id, "--format", "json"],
        env=flwr_env(home),
        capture_output=True,
        text=True,
        timeout=60,
    )
    try:
        runs = json.loads(done.stdout).get("runs", [])
    except (json.JSONDecodeError, AttributeError):
        runs = []
    if not runs:
        return "unknown", ""
    return str(runs[0].get("status", "unknown")), str(runs[0].get("status-details", ""))
