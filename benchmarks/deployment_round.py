"""A round of the quick job on Flower (SuperLink + one SuperNode per client on 127.0.0.1) against
the same round in the simulation, on the same machine.

Both run `configs/sft_quick.yaml` (SmolLM2-135M-Instruct, 3 clients, 2 sampled per round, 3
local steps of 4 examples) without baselines (a deployment has none) for --rounds rounds, each
in its own process, one after the other. A round's time is what the run itself prints for it:
from sending the global adapter to the end of the held-out evaluation, the same span in both. The
simulation trains the sampled clients one after another with --sim-threads torch threads; the
deployment's nodes train in parallel, each with --node-threads threads, next to the SuperLink and
the ServerApp (which evaluates) on the same cores. Round 1 of the deployment also pays each
node's warm worker loading the model; rounds 2.. are the steady state. The final adapters are
compared (the deployment must do the same work, not just be fast).

    python benchmarks/deployment_round.py [--config configs/sft_quick.yaml] [--rounds 4]
                                          [--node-threads 1] [--sim-threads 2]
                                          [--clients N] [--pin-nodes]

--clients N runs the job with N clients, all sampled each round (N nodes). --pin-nodes pins node
i, with every process it starts (SuperExec, ClientApps, its warm worker), to core i mod the cores;
the SuperLink and the ServerApp stay unpinned. With 2 clients on 2 cores each node owns a core, the
nearest this machine comes to nodes on machines of their own.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# "(round 6.5 s, eval 1.2 s, ETA ...)": a round's span is its training plus its evaluation
ROUND = re.compile(r"\[federated\] round (\d+)/\d+ .*\(round ([\d.]+) s(?:, eval ([\d.]+) s)?")


def cpu_ticks() -> list[int]:
    """The machine's CPU time so far by kind (/proc/stat: user nice system idle iowait irq softirq steal)."""
    try:
        return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except OSError:  # not Linux: no figure
        return [0] * 8


def steal_share(before: list[int], after: list[int]) -> float:
    """The share of the machine's CPU time a hypervisor gave to other guests meanwhile (0-1)."""
    spent = [b - a for a, b in zip(before, after)]
    return spent[7] / sum(spent) if sum(spent) else 0.0


def run_cli(args: list[str], env: dict) -> tuple[dict[int, float], float, float]:
    """(seconds per round, wall seconds, the share of CPU time stolen meanwhile) of one `openfedllm` process."""
    start, ticks = time.perf_counter(), cpu_ticks()
    done = subprocess.run([sys.executable, "-m", "openfedllm.cli", *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    stolen = steal_share(ticks, cpu_ticks())
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise SystemExit(f"openfedllm {' '.join(args[:2])} failed:\n{output[-3000:]}")
    return {int(r): float(t) + float(e or 0) for r, t, e in ROUND.findall(output)}, wall, stolen


def phases(run_dir: Path) -> dict[int, tuple[float, float]]:
    """Per round: (the slowest sampled client's local training seconds, the evaluation's seconds)."""
    import json

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    out = {}
    for r in {x["round"] for x in records if x["type"] == "client"}:
        train = max(x["seconds"] for x in records if x["type"] == "client" and x["round"] == r)
        evals = [x["seconds"] for x in records if x["type"] == "eval" and x["round"] == r]
        out[r] = (train, evals[0] if evals else 0.0)
    return out


def max_difference(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    x, y = (
        load_file(str(a / "adapter" / "adapter_model.safetensors")),
        load_file(str(b / "adapter" / "adapter_model.safetensors")),
    )
    return max(float((x[k] - y[k]).abs().max()) for k in x)


def descendants(pid: int) -> list[int]:
    """pid and every process below it (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the process ended meanwhile
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children.get(p, [])
    return found


def pin_nodes(record: dict) -> None:
    """Node i and what it has started so far to core i mod the cores; what they start later inherits it."""
    cores = sorted(os.sched_getaffinity(0))
    for i, pid in enumerate(record["nodes"].values()):
        for p in descendants(pid):
            try:
                os.sched_setaffinity(p, {cores[i % len(cores)]})
            except ProcessLookupError:
                pass


def one_pair(args, common: list[str], env: dict, nodes: int, tmp: Path) -> dict:
    """The simulation, then the deployment, of the same job: each round's time, walls, the adapters' gap."""
    from openfedllm.flower import federation

    def threads(n: int | None) -> list[str]:
        return [] if args.defaults else ["--train.threads", str(n)]

    sim_args = ["sft", *common, *threads(args.sim_threads), "--output-dir", str(tmp / "sim")]
    sim, sim_wall, sim_stolen = run_cli(sim_args, env)
    fed_dir = tmp / "federation"
    start = time.perf_counter()
    record = federation.up(nodes, fed_dir, threads=0 if args.defaults else args.node_threads)
    up_seconds = time.perf_counter() - start
    if args.pin_nodes:
        pin_nodes(record)
    try:
        env_fed = dict(env, FLWR_HOME=record["flwr_home"])
        server = threads(args.server_threads or args.sim_threads)
        dep_args = ["sft", *common, *server, "--output-dir", str(tmp / "dep"), "--federation", federation.CONNECTION]
        dep, dep_wall, dep_stolen = run_cli(dep_args, env_fed)
    finally:
        federation.down(fed_dir)
    return {
        "sim": sim,
        "dep": dep,
        "sim_wall": sim_wall,
        "dep_wall": dep_wall,
        "up": up_seconds,
        "diff": max_difference(tmp / "sim", tmp / "dep"),
        "sim_parts": phases(tmp / "sim"),
        "dep_parts": phases(tmp / "dep"),
        "steal": {"simulation": sim_stolen, "deployment": dep_stolen},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "sft_quick.yaml"))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--node-threads", type=int, default=1, help="torch threads of each SuperNode's training")
    parser.add_argument("--sim-threads", type=int, default=2, help="torch threads of the simulation")
    parser.add_argument(
        "--server-threads",
        type=int,
        default=0,
        help="torch threads of the ServerApp's evaluation (default: --sim-threads)",
    )
    parser.add_argument(
        "--defaults",
        action="store_true",
        help="no thread options anywhere: what a user gets (federation up shares the cores among its nodes)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="simulation/deployment pairs, interleaved")
    parser.add_argument("--clients", type=int, default=0, help="clients (and nodes), all sampled each round")
    parser.add_argument("--pin-nodes", action="store_true", help="node i to core i mod the cores")
    parser.add_argument("--node-poll", type=float, help="SuperNode poll after a message, s (default: the wrapper's)")
    parser.add_argument("--node-poll-max", type=float, help="SuperNode idle poll's cap, s (default: the wrapper's)")
    parser.add_argument("--exec-poll", type=float, help="SuperExec task poll, s (default: Flower's)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    import yaml

    nodes = args.clients or yaml.safe_load(Path(args.config).read_text()).get("fed", {}).get("num_clients", 5)
    common = [
        "--config",
        args.config,
        "--fed.rounds",
        str(args.rounds),
        "--baselines.local",
        "false",
        "--baselines.centralized",
        "false",
    ]
    if args.clients:
        common += ["--fed.num_clients", str(args.clients), "--fed.clients_per_round", str(args.clients)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    polls = {  # what federation.up passes on to the nodes and SuperExecs
        "OPENFEDLLM_NODE_POLL": args.node_poll,
        "OPENFEDLLM_NODE_POLL_MAX": args.node_poll_max,
        "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": args.exec_poll,
    }
    os.environ.update({k: str(v) for k, v in polls.items() if v is not None})
    threads = (
        "no thread options (torch's default in the simulation and the ServerApp; federation up's share per node)"
        if args.defaults
        else f"simulation {args.sim_threads} threads, server {args.server_threads or args.sim_threads}, "
        f"nodes {args.node_threads} thread(s) each"
    )
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"config {Path(args.config).name}, {nodes} clients, {args.rounds} rounds; {threads}; "
        f"polls: {', '.join(f'{k}={v}' for k, v in polls.items() if v is not None) or 'the defaults'}"
        + ("; node i pinned to core i mod the cores" if args.pin_nodes else "")
    )
    ratios = []
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            pair = one_pair(args, common, env, nodes, Path(tmp))
        sim, dep = pair["sim"], pair["dep"]
        print(f"repeat {repeat + 1} of {args.repeats}")
        print(
            f"{'round':>5} {'simulation s':>13} {'deployment s':>13} {'ratio':>6}   slowest client's training s "
            f"(sim / dep)   evaluation s (sim / dep)"
        )
        for r in sorted(sim):
            d = dep.get(r, float("nan"))
            nan = (float("nan"), float("nan"))
            (st, se), (dt, de) = pair["sim_parts"][r], pair["dep_parts"].get(r, nan)
            print(
                f"{r:>5} {sim[r]:>13.1f} {d:>13.1f} {d / sim[r]:>6.2f}   {st:>10.1f} / {dt:<10.1f}"
                f"               {se:>5.1f} / {de:<5.1f}"
            )
        steady = [r for r in sorted(sim) if r > 1]
        if steady:
            s, d = statistics.mean(sim[r] for r in steady), statistics.mean(dep[r] for r in steady)
            ratios.append(d / s)
            print(f"rounds 2-{args.rounds}: simulation {s:.1f} s, deployment {d:.1f} s per round: ratio {d / s:.2f}")
        print(
            f"wall: simulation {pair['sim_wall']:.0f} s, deployment {pair['dep_wall']:.0f} s "
            f"(+ federation up {pair['up']:.1f} s); final adapters: max |simulation - deployment| = "
            f"{pair['diff']:.2e}; CPU time stolen by the hypervisor: simulation {pair['steal']['simulation']:.0%}, "
            f"deployment {pair['steal']['deployment']:.0%}"
        )
    if ratios:
        print(
            f"steady-state ratio per repeat: {', '.join(f'{r:.2f}' for r in ratios)}; "
            f"median {statistics.median(ratios):.2f} (goal <= 1.25)"
        )


if __name__ == "__main__":
    main()
