"""The run directory: config, metrics log, checkpoints (written atomically) and plots."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from . import faults
from .errors import UserError
from .userfiles import check_safetensors, read_json

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

    def valid_lines(self) -> int:
        """How many lines from the start are whole JSON objects (a damaged log is cut there on resume)."""
        if not self.path.exists():
            return 0
        count = 0
        with self.path.open("rb") as f:
            for line in f:
                try:
                    if not isinstance(json.loads(line.decode("utf-8")), dict):
                        break
                except (UnicodeDecodeError, ValueError, RecursionError):
                    break
                count += 1
        return count

    def truncate(self, keep: int) -> None:
        """Drop records written after the checkpoint being resumed (they will be written again)."""
        if not self.path.exists():
            return
        kept = self.path.read_bytes().splitlines(keepends=True)[:keep]  # bytes: a line cut mid-character
        self.path.write_bytes(b"".join(kept))

    def write(self, record: dict) -> None:
        with disk_errors(self.path.parent, "metrics.jsonl"):
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
    from .config import load_yaml

    return load_yaml(str(path), "--resume")


def benchmark_dir(run_dir: Path, phase: str, round_index: int) -> Path:
    """Where eval.benchmarks write their answer files for one evaluation."""
    return run_dir / "benchmarks" / f"{phase}-round{round_index}"


def final_dir(run_dir: Path, phase: str, full: bool) -> Path:
    """Where a phase's trained adapter (or full model) is saved."""
    name = "model" if full else "adapter"
    return run_dir / name if phase == "federated" else run_dir / "baselines" / phase / name


@dataclass
class Checkpoint:
    state: dict[str, torch.Tensor]  # the global trainable tensors
    server_state: dict  # the algorithm's server state (momenta, control variate)
    client_states: dict[int, dict[str, torch.Tensor]]  # what lives with each client (SCAFFOLD's c_i)
    progress: dict  # phase, round reached, finished phases, metrics lines written


def save_checkpoint(
    run_dir: Path,
    state: dict[str, torch.Tensor],
    server_state: dict,
    progress: dict,
    client_states: dict[int, dict[str, torch.Tensor]] | None = None,
) -> None:
    """Everything needed to continue: trainable tensors, algorithm state, progress.

    Written into a temporary folder and swapped in by rename, so a crash mid-write leaves the
    previous checkpoint intact.
    """
    final = run_dir / CHECKPOINT
    tmp = run_dir / f".{CHECKPOINT}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with disk_errors(run_dir, f"the checkpoint of round {progress.get('round')}"):
            tmp.mkdir()
            save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "trainable.safetensors"))
            faults.fail_write("checkpoint", progress.get("round"))
            torch.save(server_state, tmp / "server_state.pt")
            torch.save(client_states or {}, tmp / "client_states.pt")
            (tmp / "progress.json").write_text(json.dumps(progress, indent=1))
    except UserError:
        shutil.rmtree(tmp, ignore_errors=True)  # the previous checkpoint stays as it was
        raise
    old = run_dir / f".{CHECKPOINT}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def disk_errors(run_dir: Path, what: str):
    """A failed write (a full disk, a quota, a file-size limit) as one line that says what is kept."""
    try:
        yield
    except OSError as exc:
        kept = "the previous checkpoint is kept" if (run_dir / CHECKPOINT).is_dir() else "no checkpoint yet"
        raise UserError(
            f"{run_dir}: cannot write {what} ({exc.strerror or exc}); {kept}: make room, then --resume {run_dir}"
        ) from None


def load_checkpoint(run_dir: Path) -> Checkpoint | None:
    final = run_dir / CHECKPOINT
    if not (final / "progress.json").is_file():
        old = run_dir / f".{CHECKPOINT}.old"  # a crash between the two renames
        if (old / "progress.json").is_file():
            final = old
        else:
            return None

    def damaged(name: str, why) -> UserError:
        return UserError(
            f"--resume {run_dir}: {final.name}/{name} is damaged ({str(why).splitlines()[0][:120]}); "
            "the run cannot continue from it"
        )

    progress = read_json(final / "progress.json", f"--resume {run_dir}")
    if not isinstance(progress, dict) or not {"phase", "round", "done", "metrics_lines"} <= set(progress):
        raise damaged("progress.json", "expected phase, round, done, metrics_lines")
    check_safetensors(final / "trainable.safetensors", f"--resume {run_dir}")
    states = {}
    for name in ("server_state.pt", "client_states.pt"):
        try:
            states[name] = torch.load(final / name, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure is a damaged file
            raise damaged(name, exc) from None
    return Checkpoint(
        state=load_file(str(final / "trainable.safetensors")),
        server_state=states["server_state.pt"],
        client_states=states["client_states.pt"],
        progress=progress,
    )
