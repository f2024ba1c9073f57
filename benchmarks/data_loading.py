"""Loading a large instruction file: read, format, hygiene, and a 100-client Dirichlet split.

Issue 5's goal: a 1,000,000-row JSONL instruction file is loaded, formatted and partitioned
into 100 Dirichlet clients in under 60 s on 2 CPU cores, with peak memory under 2 GB.

The file (generated once, seeded: Alpaca rows of ~300 characters with one of 20 categories)
is read by `openfedllm.data.load_instruction_data` exactly as `--data.path FILE` reads it
(Arrow through `datasets`, formats detected, empty and duplicate rows dropped and counted) and
split by `openfedllm.partition.partition(..., "dirichlet")`. The measurement runs in a fresh
process (its own peak RSS, from wait4); the first read of a file also converts it into the
`datasets` Arrow cache, so both a cold run (empty cache) and a warm one are reported.

    python benchmarks/data_loading.py [--rows 1000000] [--clients 100] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

from worker import add_worker_arguments, answer_as_worker, run_worker  # benchmarks/ is first on sys.path

WORDS = (
    "model data client server round update privacy federated learning adapter token loss "
    "gradient batch train evaluate answer question because therefore which while"
).split()


def make_file(path: Path, rows: int) -> None:
    rng = random.Random(0)
    with path.open("w") as f:
        for i in range(rows):
            text = " ".join(rng.choices(WORDS, k=40))
            f.write(
                json.dumps(
                    {
                        "instruction": f"Task {i}: explain {text[:80]}",
                        "input": "",
                        "output": text,
                        "category": f"c{rng.randrange(20)}",
                    }
                )
                + "\n"
            )


def worker(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from openfedllm.config import DataConfig
    from openfedllm.data import load_instruction_data
    from openfedllm.partition import partition

    start = time.perf_counter()
    examples, hygiene, _ = load_instruction_data(DataConfig(path=args.file))
    loaded = time.perf_counter()
    clients = partition([e.domain for e in examples], args.clients, "dirichlet", seed=0, alpha=0.5)
    done = time.perf_counter()
    return {
        "load_format_s": loaded - start,
        "partition_s": done - loaded,
        "total_s": done - start,
        "rows": hygiene.rows,
        "usable": len(examples),
        "clients": len(clients),
        "smallest": min(map(len, clients)),
        "largest": max(map(len, clients)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--file", help="instruction JSONL (default: generated into a temp folder)")
    add_worker_arguments(parser, ["load"])
    args = parser.parse_args()
    if answer_as_worker(args, worker):
        return
    tmp = Path(tempfile.mkdtemp(prefix="openfedllm-data-"))
    cache = tmp / "hf-datasets-cache"
    try:
        if not args.file:
            args.file = str(tmp / "instructions.jsonl")
            start = time.perf_counter()
            make_file(Path(args.file), args.rows)
            print(
                f"generated {args.rows} rows ({Path(args.file).stat().st_size / 2**20:.0f} MiB) "
                f"in {time.perf_counter() - start:.0f} s"
            )
        import os

        os.environ["HF_DATASETS_CACHE"] = str(cache)  # inherited by the workers: a cold cache first
        for label in ("cold cache", "warm cache"):
            res = run_worker(
                __file__,
                "load",
                ["--file", args.file, "--clients", str(args.clients), "--threads", str(args.threads)],
                args.threads,
            )
            print(
                f"{label}: load + format + hygiene {res['load_format_s']:.1f} s, Dirichlet split into "
                f"{res['clients']} clients {res['partition_s']:.1f} s, total {res['total_s']:.1f} s; "
                f"peak RSS {res['peak_gib']:.2f} GiB; {res['usable']} of {res['rows']} rows usable; "
                f"client sizes {res['smallest']}-{res['largest']}"
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
