"""The run directory: config, metrics log, checkpoints (written atomically) and plots."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import torch
import yaml
from safetensors.torch import load_file, save_file

from . import faults
from .errors import UserError
from .userfiles import check_safetensors, read_json

CHECKPOINT = "checkpoints"
FEDERATED_END = "checkpoints-federated"  # the federated phase's last checkpoint, kept past the baselines


class MetricsLog:
    """metrics.jsonl: one JSON object per line, appended and flushed as the run goes."""

    def __init__(self, path: Path):
        self.path = path
        self.mirrors: list = []  # tracking.py: TensorBoard / MLflow get every record too

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
        """Append one record, stamped with the time it was written (`time`, Unix seconds)."""
        record = {**record, "time": round(time.time(), 3)}
        with disk_errors(self.path.parent, "metrics.jsonl"):
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        for mirror in self.mirrors:
            mirror.write(record)

    def records(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


PROVENANCE = "run"  # config.yaml's section about the run itself, not a setting: dropped when read back


def provenance(config_dict: dict) -> dict:
    """What makes a run citable besides its settings: the tool's version, its git commit when it runs
    from a checkout, the command line, and a SHA-256 of each data file read."""
    from . import __version__

    out: dict = {"openfedllm": __version__}
    source = Path(__file__).resolve().parent
    try:
        done = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if done.returncode == 0:
            out["git_commit"] = done.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass  # no git here: the version alone
    from .invocation import COMMAND

    if COMMAND:
        out["command"] = " ".join(shlex.quote(a) for a in COMMAND)
    data = config_dict.get("data", {})
    sums = {key: sha256_of(Path(data[key])) for key in ("path", "eval_path") if data.get(key)}
    if sums:
        out["data_sha256"] = sums
    return out


def sha256_of(path: Path) -> str:
    """SHA-256 of a file, or of a folder's files (names and contents, in sorted order)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


class _Tee:
    """stdout that also goes to run_dir/run.log once the run has started writing its directory
    (`start_console_log`); what was printed before (the data summary, the memory estimate) is kept
    and written first, and a run refused before it starts leaves no run.log behind."""

    def __init__(self, stream, run_dir: Path):
        self.stream, self.run_dir = stream, run_dir
        self.pending: list[str] = []
        self.file: TextIO | None = None
        self.started = False

    def start(self) -> None:
        self.started = True
        self.write("")

    def write(self, text: str) -> int:
        self.stream.write(text)
        if self.file is None and self.started and self.run_dir.is_dir():
            self.file = (self.run_dir / "run.log").open("a")
            self.file.write("".join(self.pending))
            self.pending.clear()
        if self.file is not None:
            self.file.write(text)
            self.file.flush()
        else:
            self.pending.append(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name):  # isatty, fileno, encoding, ...: the terminal's
        return getattr(self.stream, name)


def start_console_log() -> None:
    """The run has passed its checks and writes its directory: from now on (and what was printed
    before), stdout goes to run.log too, if a `console_log` is open."""
    if isinstance(sys.stdout, _Tee):
        sys.stdout.start()


@contextlib.contextmanager
def console_log(run_dir: Path):
    """Everything printed to stdout while inside, saved in run_dir/run.log as well (appended on resume)."""
    tee = _Tee(sys.stdout, run_dir)
    sys.stdout = tee
    try:
        yield
    finally:
        sys.stdout = tee.stream
        if tee.file is not None:
            tee.file.close()


def save_config(run_dir: Path, config_dict: dict) -> None:
    """config.yaml: the resolved settings, then the run's provenance (section `run`)."""
    text = yaml.safe_dump(config_dict, sort_keys=False)
    text += yaml.safe_dump({PROVENANCE: provenance(config_dict)}, sort_keys=False)
    (run_dir / "config.yaml").write_text(text)


def read_config(run_dir: Path, what: str = "--resume") -> dict:
    """The run's settings from its config.yaml; `what` names the argument that gave the run directory."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise UserError(f"{what} {run_dir}: no config.yaml there (not a run directory)")
    from .config import load_yaml

    raw = load_yaml(str(path), what)
    raw.pop(PROVENANCE, None)
    return raw


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


def keep_federated_end(run_dir: Path) -> None:
    """A copy of the checkpoint just written at the federated phase's last round: extending the run
    (`--resume RUN --fed.rounds N`) continues from it after the baselines have moved on."""
    tmp = run_dir / f".{FEDERATED_END}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    with disk_errors(run_dir, "the federated phase's last checkpoint"):
        shutil.copytree(run_dir / CHECKPOINT, tmp)
        shutil.rmtree(run_dir / FEDERATED_END, ignore_errors=True)
        os.replace(tmp, run_dir / FEDERATED_END)


def load_checkpoint(run_dir: Path, name: str = CHECKPOINT) -> Checkpoint | None:
    final = run_dir / name
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
