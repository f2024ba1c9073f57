"""What Flower's SecAgg+ costs a deployed round: the quick job on one federation (SuperLink + one
SuperNode per client on 127.0.0.1), plain and with `--secagg.enabled true`, interleaved.

Each run is its own `openfedllm sft --federation` process on the same federation, one after the
other (plain, secure, plain, secure, ... for --repeats). A round's time is what the run prints for
it (sending x to the end of the held-out evaluation); round 1 also pays the nodes' model loads, so
rounds 2.. are compared. Local training time varies from run to run by more than the protocol
costs, so each round's time outside training is compared too: the round minus its slowest
client's local training and minus the evaluation (messages, the protocol's crypto on the nodes
and the server, aggregation). Bytes are what the server received from the nodes per round, as
messages.jsonl records them (the packed float32 update in a plain round; public keys, encrypted
shares, the masked integer vector and the unmasking shares under SecAgg+). The adapters of a
plain and a secure run differ by SecAgg+'s quantization, compounded over the rounds: printed.

    python benchmarks/secagg_round.py [--config configs/sft_quick.yaml] [--rounds 3] [--repeats 2]
                                      [--node-threads 1] [--server-threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deployment_round import ROOT, max_difference, phases, run_cli  # noqa: E402


def received_bytes(run_dir: Path) -> float:
    """Bytes the server received from the nodes per training round and node (messages.jsonl)."""
    messages = [json.loads(line) for line in (run_dir / "messages.jsonl").read_text().splitlines()]
    trained = [m for m in messages if m["type"] == "train" and "records" in m]
    total = sum(r.get("bytes", 0) for m in trained for r in m["records"].values())
    per_node_round = {(m["round"], m["node"]) for m in trained}
    return total / len(per_node_round)


def stage_seconds(run_dir: Path) -> dict[str, float]:
    """Median seconds of each SecAgg+ stage's exchange (all nodes), rounds 2.. (messages.jsonl)."""
    messages = [json.loads(line) for line in (run_dir / "messages.jsonl").read_text().splitlines()]
    by_stage: dict[str, dict[int, float]] = {}
    for m in messages:
        if m.get("secagg_stage") and m["round"] > 1:
            by_stage.setdefault(m["secagg_stage"], {})[m["round"]] = m["stage_seconds"]
    return {stage: statistics.median(t.values()) for stage, t in by_stage.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "sft_quick.yaml"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--node-threads", type=int, default=1, help="torch threads of each SuperNode's training")
    parser.add_argument("--server-threads", type=int, default=2, help="torch threads of the ServerApp's evaluation")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    import yaml

    from openfedllm.flower import federation

    fed_cfg = yaml.safe_load(Path(args.config).read_text()).get("fed", {})
    nodes = fed_cfg.get("num_clients", 5)
    common = ["--config", args.config, "--fed.rounds", str(args.rounds), "--train.threads", str(args.server_threads)]
    common += ["--baselines.local", "false", "--baselines.centralized", "false"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    seconds: dict[str, list[float]] = {"plain": [], "secagg": []}
    outside: dict[str, list[float]] = {"plain": [], "secagg": []}  # the round minus training and evaluation
    sizes: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        record = federation.up(nodes, tmp_dir / "federation", threads=args.node_threads)
        env["FLWR_HOME"] = record["flwr_home"]
        try:
            for k in range(args.repeats):
                for mode in ("plain", "secagg"):
                    out = tmp_dir / f"{mode}{k}"
                    extra = ["--secagg.enabled", "true"] if mode == "secagg" else []
                    rounds, _, _ = run_cli(
                        ["sft", *common, *extra, "--output-dir", str(out), "--federation", federation.CONNECTION], env
                    )
                    seconds[mode] += [t for r, t in rounds.items() if r > 1]
                    parts = phases(out)
                    outside[mode] += [t - sum(parts[r]) for r, t in rounds.items() if r > 1]
                    sizes[mode] = received_bytes(out)
                    if mode == "secagg":
                        stages = stage_seconds(out)
                    print(f"repeat {k + 1} {mode}: rounds {rounds}", flush=True)
            diff = max_difference(tmp_dir / "plain0", tmp_dir / "secagg0")
        finally:
            federation.down(tmp_dir / "federation")
    per_round = fed_cfg.get("clients_per_round") or nodes
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; config "
        f"{Path(args.config).name}: {nodes} nodes, {per_round} per round, {args.rounds} rounds x {args.repeats} "
        f"repeats; nodes {args.node_threads} thread(s), server {args.server_threads}"
    )
    plain, secure = statistics.median(seconds["plain"]), statistics.median(seconds["secagg"])
    print(f"round time (rounds 2..{args.rounds}, median): plain {plain:.1f} s, SecAgg+ {secure:.1f} s")
    print(f"SecAgg+ overhead: {secure - plain:+.1f} s per round ({secure / plain:.2f}x)")
    a, b = statistics.median(outside["plain"]), statistics.median(outside["secagg"])
    print(f"outside training and evaluation (median): plain {a:.2f} s, SecAgg+ {b:.2f} s: {b - a:+.2f} s per round")
    print(
        f"received per node and round: plain {sizes['plain'] / 1e6:.2f} MB, SecAgg+ {sizes['secagg'] / 1e6:.2f} MB "
        f"({sizes['secagg'] / sizes['plain']:.2f}x)"
    )
    each = ", ".join(f"{k} {v:.2f}" for k, v in stages.items())
    print(f"SecAgg+ stages (the exchange with all nodes, median s): {each}")
    print(f"final adapters after {args.rounds} rounds: max |plain - SecAgg+| = {diff:.2e}")


if __name__ == "__main__":
    main()
