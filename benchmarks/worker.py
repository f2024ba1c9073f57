"""Running one benchmark variant in a fresh process, so that its peak memory is its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def run_worker(script: str, variant: str, args: list[str], threads: int) -> dict:
    """`python script --worker VARIANT --result FILE ARGS...`; its JSON result plus `peak_gib` (wait4)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [sys.executable, script, "--worker", variant, "--result", out.name, *args]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
        proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        if status != 0:
            raise SystemExit(f"variant {variant} failed (status {status})")
        result = json.loads(Path(out.name).read_text())
    result["peak_gib"] = usage.ru_maxrss / 2**20  # KiB on Linux
    return result


def add_worker_arguments(parser, variants: list[str]) -> None:
    """The two hidden arguments `run_worker` passes to the script it starts."""
    import argparse

    parser.add_argument("--worker", choices=variants, help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)


def answer_as_worker(args, work) -> bool:
    """In a worker process: run `work(args)`, write its JSON result where `run_worker` reads it."""
    if not args.worker:
        return False
    Path(args.result).write_text(json.dumps(work(args)))
    return True
