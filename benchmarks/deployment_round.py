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


def run_cli(args: list[str], env: dict) -> tuple[dict[int, float], float, str]:
    """(seconds per round, wall seconds, output) of one `openfedllm` process."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "openfedllm.cli", *args], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise SystemExit(f"openfedllm {' '.join(args[:2])} failed:\n{output[-3000:]}")
    return {int(r): float(t) + float(e or 0) for r, t, e in ROUND.findall(output)}, wall, output


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
    parser.add_argument("--node-poll", type=float, default=0.2, help="SuperNode idle poll, seconds")
    parser.add_argument("--exec-poll", type=float, default=0.1, help="SuperExec task poll, seconds")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    import yaml

    from openfedllm.flower import federation

    nodes = yaml.safe_load(Path(args.config).read_text()).get("fed", {}).get("num_clients", 5)
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
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    os.environ["OPENFEDLLM_NODE_POLL"] = str(args.node_poll)  # what federation.up passes to the nodes
    os.environ["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = str(args.exec_poll)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sim, sim_wall, _ = run_cli(
            ["sft", *common, "--train.threads", str(args.sim_threads), "--output-dir", str(tmp / "sim")], env
        )
        fed_dir = tmp / "federation"
        start = time.perf_counter()
        record = federation.up(nodes, fed_dir, threads=args.node_threads)
        up_seconds = time.perf_counter() - start
        try:
            env_fed = dict(env, FLWR_HOME=record["flwr_home"])
            dep, dep_wall, _ = run_cli(
                [
                    "sft",
                    *common,
                    "--train.threads",
                    str(args.server_threads or args.sim_threads),
                    "--output-dir",
                    str(tmp / "dep"),
                    "--federation",
                    federation.CONNECTION,
                ],
                env_fed,
            )
        finally:
            federation.down(fed_dir)
        diff = max_difference(tmp / "sim", tmp / "dep")
        sim_parts, dep_parts = phases(tmp / "sim"), phases(tmp / "dep")

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"config {Path(args.config).name}, {nodes} clients, {args.rounds} rounds; simulation "
        f"{args.sim_threads} threads, server {args.server_threads or args.sim_threads}, nodes {args.node_threads} "
        f"thread(s) each, node poll {args.node_poll} s, "
        f"SuperExec poll {args.exec_poll} s"
    )
    print(
        f"{'round':>5} {'simulation s':>13} {'deployment s':>13} {'ratio':>6}   slowest client's training s "
        f"(sim / dep)   evaluation s (sim / dep)"
    )
    for r in sorted(sim):
        d = dep.get(r, float("nan"))
        (st, se), (dt, de) = sim_parts[r], dep_parts.get(r, (float("nan"), float("nan")))
        print(
            f"{r:>5} {sim[r]:>13.1f} {d:>13.1f} {d / sim[r]:>6.2f}   {st:>10.1f} / {dt:<10.1f}"
            f"               {se:>5.1f} / {de:<5.1f}"
        )
    steady = [r for r in sorted(sim) if r > 1]
    if steady:
        s, d = statistics.mean(sim[r] for r in steady), statistics.mean(dep[r] for r in steady)
        print(
            f"rounds 2-{args.rounds}: simulation {s:.1f} s, deployment {d:.1f} s per round: ratio {d / s:.2f} "
            f"(goal <= 1.25)"
        )
    print(f"wall: simulation {sim_wall:.0f} s, deployment {dep_wall:.0f} s (+ federation up {up_seconds:.1f} s)")
    print(f"final adapters: max |simulation - deployment| = {diff:.2e}")


if __name__ == "__main__":
    main()
