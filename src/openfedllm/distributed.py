"""A whole run under `torchrun`: every process runs the same rounds in lock step, each taking its
share of every client's micro-batches (`client.data_parallel`); only rank 0 writes the run directory
and prints.

    torchrun --standalone --nproc_per_node 2 -m openfedllm.cli sft --config ...

The processes stay identical because every choice in a run (client sampling, batch order, the
server's rule) comes from the same seeds and the summed gradients are the same on every rank. The
other ranks write into a temporary folder of their own (deleted at the end), so the round loop needs
no rank checks; they also evaluate, which costs time, not correctness.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch


def start() -> tuple[int, int]:
    """(rank, world size): joins the process group torchrun describes in the environment (NCCL on
    CUDA, each rank on GPU LOCAL_RANK; gloo on the CPU), or (0, 1) when not started by torchrun."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def silence_followers(rank: int) -> None:
    """Ranks other than 0 print nothing (their errors still reach stderr)."""
    if rank > 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the rest of this process's life


@contextlib.contextmanager
def rank_run_dir(run_dir: Path, resume: bool, rank: int) -> Iterator[Path]:
    """The folder this rank writes its run into: `run_dir` on rank 0; elsewhere a temporary copy
    (taken before rank 0 changes anything, for a resume), removed at the end."""
    import torch.distributed as dist

    if rank == 0:
        if dist.is_initialized():
            dist.barrier()  # the others have copied the run directory
        yield run_dir
        return
    folder = Path(tempfile.mkdtemp(prefix=f"openfedllm-rank{rank}-"))
    try:
        if resume:
            shutil.copytree(run_dir, folder, dirs_exist_ok=True)
        dist.barrier()
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
