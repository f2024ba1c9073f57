"""The quick job on Flower's Simulation Engine (2 virtual clients in parallel, 1 thread each) against
the in-process simulation (clients one after another, 2 threads), on the same machine.

Both run `configs/sft_quick.yaml` (SmolLM2-135M-Instruct, 3 clients, 2 sampled per round, 3 local
steps of 4 examples) without baselines for --rounds rounds, each in its own process, one after the
other. A round's time is what the run prints for it (sending the global adapter to the end of the
held-out evaluation). The engine's Ray actors get `fed.client_cpus` = 1 core each, so torch runs one
thread per client (Ray sets OMP_NUM_THREADS from it), while the server evaluates with torch's default.
Round 1 of the engine also pays Ray's start and each actor loading the model; rounds 2.. are the
steady state. The final adapters are compared.

    python benchmarks/parallel_simulation.py [--rounds 4] [--sim-threads 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
from pathlib import Path

from deployment_round import ROOT, max_difference, phases, run_cli  # benchmarks/ is first on sys.path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "sft_quick.yaml"))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--sim-threads", type=int, default=2, help="torch threads of the in-process simulation")
    args = parser.parse_args()
    common = ["--config", args.config, "--fed.rounds", str(args.rounds)]
    common += ["--baselines.local", "false", "--baselines.centralized", "false"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        sim, sim_wall, _ = run_cli(
            ["sft", *common, "--train.threads", str(args.sim_threads), "--output-dir", str(out / "sim")], env
        )
        engine_args = [
            "--fed.client_cpus",
            "1",
            "--federation",
            "local-simulation",
            "--output-dir",
            str(out / "engine"),
        ]
        eng, eng_wall, _ = run_cli(["sft", *common, *engine_args], env)
        diff = max_difference(out / "sim", out / "engine")
        sim_parts, eng_parts = phases(out / "sim"), phases(out / "engine")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"config {Path(args.config).name}, {args.rounds} rounds; in-process {args.sim_threads} threads, "
        f"engine: 2 Ray actors x 1 core"
    )
    print(
        f"{'round':>5} {'in-process s':>13} {'engine s':>9} {'ratio':>6}   "
        "slowest client's training s (in-process / engine)"
    )
    for r in sorted(sim):
        e = eng.get(r, float("nan"))
        print(f"{r:>5} {sim[r]:>13.1f} {e:>9.1f} {e / sim[r]:>6.2f}   {sim_parts[r][0]:>10.1f} / {eng_parts[r][0]:.1f}")
    steady = [r for r in sorted(sim) if r > 1]
    if steady:
        s, e = statistics.mean(sim[r] for r in steady), statistics.mean(eng[r] for r in steady)
        print(f"rounds 2-{args.rounds}: in-process {s:.1f} s, engine {e:.1f} s per round: ratio {e / s:.2f}")
    print(f"wall: in-process {sim_wall:.0f} s, engine {eng_wall:.0f} s")
    print(f"final adapters: max |in-process - engine| = {diff:.2e}")


if __name__ == "__main__":
    main()
