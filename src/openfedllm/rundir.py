"""The run directory: config, metrics log, checkpoints (written atomically) and plots."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from .errors import UserError

CHECKPOINT = "checkpoints"


class MetricsLog:
    """metrics.jsonl: one JSON object per line, appended and flushed as the run goes."""

    def __init__(self, path: Path):
        self.path = path

    def lines(self) -> int:
        if not self.path.exists():
            return 0
        with self.path.open() as f:
            return sum(1 for _ in f)

    def truncate(self, keep: int) -> None:
        """Drop records written after the checkpoint being resumed (they will be written again)."""
        if not self.path.exists():
            return
        kept = self.path.read_text().splitlines(keepends=True)[:keep]
        self.path.write_text("".join(kept))

    def write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def records(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def save_config(run_dir: Path, config_dict: dict) -> None:
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config_dict, sort_keys=False))


def read_config(run_dir: Path) -> dict:
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise UserError(f"--resume {run_dir}: no config.yaml there (not a run directory)")
    return yaml.safe_load(path.read_text()) or {}


@dataclass
class Checkpoint:
    state: dict[str, torch.Tensor]  # the global trainable tensors
    server_state: dict  # the algorithm's server state (momenta, control variate)
    client_states: dict[int, dict[str, torch.Tensor]]  # what lives with each client (SCAFFOLD's c_i)
    progress: dict  # phase, round reached, finished phases, metrics lines written


def save_checkpoint(run_dir: Path, state: dict[str, torch.Tensor], server_state: dict, progress: dict,
                    client_states: dict[int, dict[str, torch.Tensor]] | None = None) -> None:
    """Everything needed to continue: trainable tensors, algorithm state, progress.

    Written into a temporary folder and swapped in by rename, so a crash mid-write leaves the
    previous checkpoint intact.
    """
    final = run_dir / CHECKPOINT
    tmp = run_dir / f".{CHECKPOINT}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "trainable.safetensors"))
    torch.save(server_state, tmp / "server_state.pt")
    torch.save(client_states or {}, tmp / "client_states.pt")
    (tmp / "progress.json").write_text(json.dumps(progress, indent=1))
    old = run_dir / f".{CHECKPOINT}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(run_dir: Path) -> Checkpoint | None:
    final = run_dir / CHECKPOINT
    if not (final / "progress.json").is_file():
        old = run_dir / f".{CHECKPOINT}.old"  # a crash between the two renames
        if (old / "progress.json").is_file():
            final = old
        else:
            return None
    return Checkpoint(
        state=load_file(str(final / "trainable.safetensors")),
        server_state=torch.load(final / "server_state.pt", weights_only=True),
        client_states=torch.load(final / "client_states.pt", weights_only=True),
        progress=json.loads((final / "progress.json").read_text()),
    )
