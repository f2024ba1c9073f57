"""A population of clients: start-up, round time and peak memory at 10 / 1,000 / 100,000 clients.

One seeded 1,000,000-row instruction file (JSONL, ~300-character rows) whose rows belong to
100,000 users of 10 rows each (`user` column). Each population runs `openfedllm sft` on it in a
fresh process (its own peak RSS, from wait4): `--fed.split key --data.label_column user`, N
clients, 10 sampled per round, SCAFFOLD (so every sampled client has state: c_i, on disk), 3
rounds of 1 local step of batch 4, the default model, 10 held-out rows. So each round does the
same work whatever the population; only the population differs.

- start-up: process start to the first local step, less the round-0 evaluation (from
  metrics.jsonl's timestamps): reading the file, the split, the model, tokenizing (lazy: data.tokenize
  auto is lazy past 50,000 rows);
- round: the round times the run prints, rounds 2-3 (round 1 also pays first-use costs);
- peak: the process's peak RSS.

    python benchmarks/population.py [--rows 1000000] [--users 100000] [--populations 10 1000 100000]
                                    [--threads 2] [--algorithm scaffold]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = (
    "model data client server round update privacy federated learning adapter token loss "
    "gradient batch train evaluate answer question because therefore which while"
).split()


def make_file(path: Path, rows: int, users: int) -> None:
    rng = random.Random(0)
    owners = [i % users for i in range(rows)]
    rng.shuffle(owners)
    with path.open("w") as f:
        for i, user in enumerate(owners):
            text = " ".join(rng.choices(WORDS, k=40))
            row = {"instruction": f"Task {i}: explain {text[:80]}", "input": "", "output": text, "user": f"u{user:06d}"}
            f.write(json.dumps(row) + "\n")


def run(data: Path, out: Path, clients: int, threads: int, algorithm: str) -> dict:
    cmd = [sys.executable, "-m", "openfedllm", "sft", "--output-dir", str(out), "--data.path", str(data)]
    cmd += ["--data.label_column", "user", "--fed.split", "key", "--fed.num_clients", str(clients)]
    cmd += ["--fed.clients_per_round", "10", "--fed.algorithm", algorithm, "--fed.rounds", "3"]
    cmd += ["--train.local_steps", "1", "--train.batch_size", "4", "--train.threads", str(threads)]
    cmd += ["--data.max_heldout", "10", "--eval.every", "3", "--eval.max_new_tokens", "4"]
    cmd += ["--baselines.local", "false", "--baselines.centralized", "false"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    started = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    output = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{clients} clients: the run failed (status {status}); see {out}/run.log")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    first_step = next(r for r in records if r["type"] == "step")
    base_eval = next(r for r in records if r["type"] == "eval" and r["round"] == 0)
    rounds = {int(m[1]): float(m[2]) for m in re.finditer(r"round (\d+)/\d+ .*?\(round ([\d.]+) s", output)}
    return {
        "clients": clients,
        "startup_s": first_step["time"] - first_step["elapsed"] - started - base_eval["seconds"],
        "round_s": statistics.median(rounds[r] for r in rounds if r > 1),
        "round1_s": rounds[1],
        "peak_gib": usage.ru_maxrss / 2**20,
        "state_files": len(list((out / "client-state").glob("**/*.safetensors"))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--populations", type=int, nargs="+", default=[10, 1_000, 100_000])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--algorithm", default="scaffold")
    parser.add_argument("--file", help="a JSONL with a `user` column (default: generated)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="openfedllm-population-"))
    data = Path(args.file) if args.file else tmp / "population.jsonl"
    if not args.file:
        start = time.perf_counter()
        make_file(data, args.rows, args.users)
        print(f"generated {args.rows:,} rows of {args.users:,} users in {time.perf_counter() - start:.0f} s")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} torch threads")
    print("| clients | start-up (s) | round, median of 2-3 (s) | round 1 (s) | peak RSS (GiB) | client state files |")
    print("|---|---|---|---|---|---|")
    base = None
    for n in args.populations:
        r = run(data, tmp / f"run-{n}", n, args.threads, args.algorithm)
        base = base or r
        print(
            f"| {n:,} | {r['startup_s']:.1f} | {r['round_s']:.2f} | {r['round1_s']:.2f} | "
            f"{r['peak_gib']:.2f} ({r['peak_gib'] / base['peak_gib']:.3f}x) | {r['state_files']} |",
            flush=True,
        )
    subprocess.run(["rm", "-rf", str(tmp)], check=False)


if __name__ == "__main__":
    main()
