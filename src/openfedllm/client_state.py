"""What lives with a client between rounds (SCAFFOLD's c_i, FedSA-LoRA's B_i, top-k's residual e_i),
on disk: one safetensors file per round the client trained in,
FOLDER/client-state-round{R}.safetensors. A client's state before round r is the file of its
latest earlier round, so a run resumed from a checkpoint at round r reads exactly what an
uninterrupted one would, whatever later rounds wrote before the interruption.

A Flower node keeps its client's state this way on its own disk (flower/node.py), and so does the
simulation for every client (`ClientStore`, RUN/client-state/PHASE/client-C/): only the sampled
clients' states are read each round, so a population of 100,000 clients costs no memory for the
ones not sampled.
"""

from __future__ import annotations

import os
from pathlib import Path

TRAIN_STATE = "client-state"


def _rounds(folder: Path) -> list[tuple[int, Path]]:
    found = []
    for path in folder.glob(f"{TRAIN_STATE}-round*.safetensors"):
        found.append((int(path.stem.rsplit("round", 1)[1]), path))
    return sorted(found)


def load_client_state(folder: Path, round_index: int) -> dict:
    """The client's state as of before `round_index` (0-based): the file of the latest earlier round."""
    from safetensors.torch import load_file

    earlier = [path for r, path in _rounds(folder) if r < round_index]
    return load_file(str(earlier[-1])) if earlier else {}


def save_client_state(folder: Path, round_index: int, state: dict) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{TRAIN_STATE}-round{round_index}.tmp"
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    os.replace(tmp, folder / f"{TRAIN_STATE}-round{round_index}.safetensors")


class ClientStore:
    """The simulation's client states on disk, by client id. `safe_round` is the round of the run's
    last checkpoint: a client keeps its newest file and its latest one before that round (where a
    resume would start), and older files are removed as newer ones are written."""

    def __init__(self, folder: Path, safe_round: int = 0):
        self.folder, self.safe_round = folder, safe_round

    def client_folder(self, client_id: int) -> Path:
        return self.folder / f"client-{client_id}"

    def get(self, client_id: int, round_index: int) -> dict:
        return load_client_state(self.client_folder(client_id), round_index)

    def put(self, client_id: int, round_index: int, state: dict) -> None:
        folder = self.client_folder(client_id)
        save_client_state(folder, round_index, state)
        kept = _rounds(folder)
        resume_from = [r for r, _ in kept if r < self.safe_round][-1:]
        for r, path in kept:
            if r != round_index and r not in resume_from:
                path.unlink(missing_ok=True)

    def latest(self, client_id: int) -> dict:
        """The client's newest state (the end of the federation: what personalization and export read)."""
        return load_client_state(self.client_folder(client_id), 1 << 62)

    def adopt(self, states: dict[int, dict], round_index: int) -> None:
        """States from a checkpoint written before the store existed (client_states.pt), filed as of
        the round before `round_index` unless the client already has a file from before it."""
        for client_id, state in states.items():
            if state and not [r for r, _ in _rounds(self.client_folder(client_id)) if r < round_index]:
                save_client_state(self.client_folder(client_id), round_index - 1, state)
