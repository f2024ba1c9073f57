"""What FLoRA and FedEx-LoRA fold into the frozen weights, brought to every client.

Both methods change W every round (`Outcome.merged`: one factored sum M_m = U V per module, float64).
In the simulation the clients train on the server's model, so they see W at once. In a
deployment each node has its own copy of W and must rebuild

    W_r = (...((W_0 + M_0) + M_1) ... ) + M_{r-1}

in the same order and arithmetic as the server (`models.add_to_base` on U @ V: float64, then W's
dtype), so that its W matches the server's bit for bit before it trains round r.

`MergeLog` (server): each round's merges, kept until every client has received them, and per
client how many rounds of merges it holds. A client sampled at round r is sent the merges of the
rounds it lacks (usually just the last one; a client not sampled for a while gets all it missed);
a reply proves it got them. The same log counts these bytes in the simulation (where it keeps the
byte counts, not the tensors), so both ledgers agree.

`FrozenBase` (node): the merges received, one file per round on the node's disk, and W rebuilt
from the original weights whenever the round asked for is not the one in memory (a restarted
node, or a server resumed from an earlier checkpoint).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .factors import Stack

SEP = ":"  # array names: "{round}:{module}:b" / ":coef" / ":v" (or ":u"); module names hold no colons


def round_arrays(round_index: int, merged: dict[str, Stack]) -> dict[str, np.ndarray]:
    """A round's merges as arrays: per module the clients' own factors in float32 with each
    column's float64 coefficient (U = b * coef, exactly), or U itself in float64 when it was not
    made that way; V in float32 when that holds it exactly (the clients' A), else float64."""
    out = {}
    for name in sorted(merged):
        stack, key = merged[name], f"{round_index}{SEP}{name}{SEP}"
        if stack.b is not None and stack.coef is not None:
            out[key + "b"], out[key + "coef"] = stack.b.numpy(), stack.coef.cpu().numpy()
        else:
            out[key + "u"] = stack.u.cpu().numpy()
        v = stack.v.cpu()
        out[key + "v"] = v.float().numpy() if torch.equal(v.float().double(), v) else v.numpy()
    return out


def rebuilt(tensors: dict[str, torch.Tensor], name: str) -> Stack:
    """The stack of one module from its arrays (round_arrays), U and V as the server had them."""
    v = tensors[f"{name}{SEP}v"].to(torch.float64)
    if f"{name}{SEP}u" in tensors:
        return Stack(tensors[f"{name}{SEP}u"].to(torch.float64), v)
    b, coef = tensors[f"{name}{SEP}b"], tensors[f"{name}{SEP}coef"].to(torch.float64)
    return Stack(b.to(torch.float64) * coef, v)


class MergeLog:
    """The server's merges by round, and each client's progress through them."""

    def __init__(self, num_clients: int, keep_tensors: bool):
        self.num_clients = num_clients
        self.keep_tensors = keep_tensors  # a deployment sends them; the simulation counts their bytes
        self.rounds: dict[int, dict[str, np.ndarray]] = {}  # round -> its arrays (deployment)
        self.sizes: dict[int, int] = {}  # round -> the bytes of its arrays
        self.known: dict[int, int] = {}  # client -> rounds of merges it holds (0 .. known - 1)

    def add(self, round_index: int, merged: dict[str, Stack]) -> None:
        from ..compression import array_bytes

        arrays = round_arrays(round_index, merged)
        self.sizes[round_index] = array_bytes(arrays)
        if self.keep_tensors:
            self.rounds[round_index] = {k: a.copy() for k, a in arrays.items()}

    def pending(self, client_id: int, round_index: int) -> range:
        """The rounds whose merges the client lacks before training round `round_index`."""
        return range(self.known.get(client_id, 0), round_index)

    def arrays_for(self, client_id: int, round_index: int) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for m in self.pending(client_id, round_index):
            if m not in self.rounds:
                raise RuntimeError(f"the merges of round {m + 1} are gone; client {client_id} needs them")
            out.update(self.rounds[m])
        return out

    def bytes_for(self, client_id: int, round_index: int) -> int:
        return sum(self.sizes.get(m, 0) for m in self.pending(client_id, round_index))

    def delivered(self, client_id: int, round_index: int) -> None:
        """The client replied to round `round_index`'s message: it holds every merge before it. Rounds
        every client holds are dropped."""
        self.known[client_id] = max(self.known.get(client_id, 0), round_index)
        oldest = min(self.known.get(c, 0) for c in range(self.num_clients))
        for m in [m for m in self.sizes if m < oldest]:
            self.sizes.pop(m)
            self.rounds.pop(m, None)

    def state_dict(self) -> dict:
        if not self.sizes and not self.known:
            return {}
        return {
            "lora_merge_log": {
                "sizes": dict(self.sizes),
                "known": dict(self.known),
                "rounds": {m: {k: torch.from_numpy(a) for k, a in arrays.items()} for m, arrays in self.rounds.items()},
            }
        }

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("lora_merge_log")
        if saved:
            self.sizes, self.known = dict(saved["sizes"]), dict(saved["known"])
            if self.keep_tensors:
                self.rounds = {m: {k: t.numpy() for k, t in arrays.items()} for m, arrays in saved["rounds"].items()}
                missing = sorted(set(self.sizes) - set(self.rounds))
                if missing:  # a simulation's checkpoint, continued on a federation
                    from ..errors import UserError

                    raise UserError(
                        f"the checkpoint holds no merges of round {missing[0] + 1}, which the nodes need; "
                        "resume it as a simulation"
                    )


class FrozenBase:
    """A node's frozen weights, following the server's merges."""

    def __init__(self):
        self.original: dict[str, torch.Tensor] = {}  # W_0 of the merged modules, kept at the first merge
        self.applied = 0  # rounds of merges in the model's W now

    def bring(self, model, folder: Path, round_index: int, received: dict[str, np.ndarray]) -> None:
        """Make the model's W hold the merges of rounds 0 .. round_index - 1: store what came with the
        message, then apply what is missing, from W_0 again if the model is past that round."""
        from safetensors.torch import load_file, save_file

        from .. import models

        by_round: dict[int, dict[str, torch.Tensor]] = {}
        for key, array in received.items():
            sent_round, rest = key.split(SEP, 1)
            by_round.setdefault(int(sent_round), {})[rest] = torch.from_numpy(np.array(array))
        folder.mkdir(parents=True, exist_ok=True)
        for m, tensors in by_round.items():
            tmp = folder / f".round{m}.tmp"
            save_file(tensors, str(tmp))
            os.replace(tmp, folder / f"round{m}.safetensors")
        if self.applied > round_index and self.original:
            models.set_base_weights(model, self.original)
            self.applied = 0
        for m in range(self.applied, round_index):
            path = folder / f"round{m}.safetensors"
            if m not in by_round and not path.is_file():
                raise RuntimeError(f"this node lacks the merges of round {m + 1} into its frozen weights ({path})")
            tensors = by_round.get(m) or load_file(str(path))
            names = sorted({k.rsplit(SEP, 1)[0] for k in tensors})
            dense = {name: rebuilt(tensors, name).dense() for name in names}
            if not self.original:
                self.original = models.base_weights(model, dense)
            models.add_to_base(model, dense)
        self.applied = round_index
