"""The one registry of codecs (`comm.upload`, `comm.download`), and `Wire`: how a round's tensors
travel between the server and a client, the same in the simulation and in a Flower deployment.

With both directions `none`, the tensors themselves travel (float32), exactly as without this
module. Otherwise what travels up is the client's move, never its weights: the client sends
encode(y_i - x^) (x^ the global state as it received it), and the server rebuilds
y^_i = x + decode(...) from its own exact x. So the download's rounding error never enters the
global model, and a lossy codec rounds small moves, not large weights. The server's broadcasts
(x, SCAFFOLD's c) travel with `comm.download`'s codec; SCAFFOLD's c_i change with `comm.upload`'s.
top-k is for updates only: the model itself cannot travel as its k largest values.

The simulation runs the same encode and decode as a deployment, so a compressed run's numbers are
the same on both (tested); its bytes are those of the arrays that would travel (`array_bytes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

import numpy as np

from .base import Codec, Identity
from .floats import BF16, FP16
from .int8 import Int8
from .nf4 import NF4
from .topk import TopK

if TYPE_CHECKING:
    import torch

    StateDict = dict[str, torch.Tensor]

CodecName = Literal["none", "fp16", "bf16", "int8", "nf4", "topk"]
CODECS = get_args(CodecName)
ScaleGranularity = Literal["tensor", "row"]
RESIDUAL = "comm/"  # client-state keys of top-k's error feedback (one flat vector per record it sends)


def build(name: str, topk_fraction: float = 0.1) -> Codec:
    codecs: dict[str, Codec] = {
        "none": Identity(),
        "fp16": FP16(),
        "bf16": BF16(),
        "int8": Int8(),
        "nf4": NF4(),
        "topk": TopK(topk_fraction),
    }
    return codecs[name]


def check(config) -> None:
    """One line for a setting that cannot work; called when the config is read."""
    from ..errors import UserError

    comm = config.comm
    if comm.download == "topk":
        raise UserError(
            "comm.download: topk sends an update's largest values; the model itself cannot travel that way "
            "(use fp16, bf16, int8 or nf4)"
        )
    if config.secagg.enabled and (comm.upload != "none" or comm.download != "none"):
        raise UserError(
            "comm.upload / comm.download: not with secagg.enabled (SecAgg+ quantizes the update itself, "
            "into its own integer field)"
        )


def array_bytes(arrays: dict[str, np.ndarray]) -> int:
    """The bytes of the arrays as a message carries them: each one's .npy serialisation (header and
    values), which is what Flower's Array holds; 0 for nothing sent."""
    import io

    total = 0
    for a in arrays.values():
        header = io.BytesIO()
        descr = np.lib.format.dtype_to_descr(a.dtype)
        np.lib.format.write_array_header_1_0(header, {"descr": descr, "fortran_order": False, "shape": a.shape})
        total += len(header.getvalue()) + a.nbytes
    return total


def segments(like: dict, scales: str) -> list[int]:
    """The lengths of the pieces with their own int8 scale, in packed order: each tensor, or each
    row (first dimension) of each tensor."""
    out: list[int] = []
    for name in sorted(like):
        shape = tuple(like[name].shape)
        size = int(np.prod(shape))
        rows = shape[0] if scales == "row" and len(shape) > 1 and shape[0] else 1
        out += [size // rows] * rows
    return out


def flat(state: StateDict) -> torch.Tensor:
    """The tensors as one vector in packed order (transport.pack), float32 (float64 if any is)."""
    import torch

    wide = any(t.dtype == torch.float64 for t in state.values())
    dtype = torch.float64 if wide else torch.float32
    return torch.cat([state[k].detach().to("cpu", dtype).reshape(-1) for k in sorted(state)])


def shaped(vector: torch.Tensor, like: StateDict) -> StateDict:
    """A packed vector as tensors named, shaped, typed and placed after `like`."""
    out, offset = {}, 0
    for name in sorted(like):
        ref = like[name]
        out[name] = vector[offset : offset + ref.numel()].reshape(ref.shape).to(dtype=ref.dtype, device=ref.device)
        offset += ref.numel()
    return out


@dataclass
class Wire:
    up: Codec  # comm.upload: the clients' moves (and SCAFFOLD's c_i change)
    down: Codec  # comm.download: x and the algorithm's broadcast
    scales: str  # comm.int8_scales

    @classmethod
    def of(cls, config, phase: str = "federated") -> Wire:
        """The run's wire; a baseline sends nothing, so its tensors stay as they are."""
        comm = config.comm
        if phase != "federated":
            return cls(Identity(), Identity(), comm.int8_scales)
        return cls(build(comm.upload, comm.topk_fraction), build(comm.download), comm.int8_scales)

    @property
    def exact(self) -> bool:
        """Both directions `none`: the tensors themselves travel, bit for bit."""
        return not (self.up.lossy or self.down.lossy)

    # Every method takes the client's LoRA rank under fed.client_ranks (None: the adapter's own):
    # a client of rank r sends and receives its first r components only (factors.narrow_rank); the
    # rest are zeros on both sides, filled back in after decoding (widen_rank).

    # --- the server's broadcast (x, SCAFFOLD's c) ---------------------------------------------

    def send_state(self, state: StateDict, rank: int | None = None) -> dict[str, np.ndarray]:
        state = narrow(state, rank)
        if not state:
            return {}
        if self.exact:
            from ..flower.transport import pack, to_numpy

            return {"trainable": pack(to_numpy(state))}
        return self.down.encode(flat(state).float(), segments(state, self.scales))

    def receive_state(self, arrays: dict[str, np.ndarray], like: StateDict, rank: int | None = None) -> StateDict:
        return self._decoded(self.down, arrays, like, rank)

    def _decoded(self, codec: Codec, arrays: dict[str, np.ndarray], like: StateDict, rank: int | None) -> StateDict:
        """The tensors `arrays` stand for, named, shaped and typed after `like`."""
        if not arrays:
            return {}
        sent = narrow(like, rank)
        if self.exact:
            from ..flower.transport import from_numpy

            return widen(from_numpy(arrays, sent), like, rank)
        n = sum(t.numel() for t in sent.values())
        return widen(shaped(codec.decode(arrays, n, segments(sent, self.scales)), sent), like, rank)

    # --- a client's reply ----------------------------------------------------------------------

    def send_update(
        self, weights: StateDict, start: StateDict, extras: StateDict, own_state: StateDict, rank: int | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], StateDict]:
        """Client side: (the update's arrays, the extras' arrays, the client's new state). `start`
        is the global state as the client received it; own_state carries top-k's residuals."""
        if self.exact:
            return self.send_state(weights, rank), self.send_state(extras, rank), own_state
        weights, start, extras = narrow(weights, rank), narrow(start, rank), narrow(extras, rank)
        segs = segments(weights, self.scales)
        update, own_state = self._encode(flat(weights) - flat(start), segs, own_state, "update")
        sent_extras: dict[str, np.ndarray] = {}
        if extras:
            sent_extras, own_state = self._encode(flat(extras), segments(extras, self.scales), own_state, "extras")
        return update, sent_extras, own_state

    def _encode(self, vector, segs, own_state: StateDict, key: str):
        if not isinstance(self.up, TopK):
            return self.up.encode(vector if not self.up.lossy else vector.float(), segs), own_state
        # error feedback: add what earlier rounds did not send; keep what this one does not
        name = RESIDUAL + key
        v = vector.float() + own_state[name] if name in own_state else vector.float()
        arrays = self.up.encode(v, segs)
        return arrays, {**own_state, name: v - self.up.decode(arrays, v.numel(), segs)}

    def receive_update(
        self, arrays: dict[str, np.ndarray], x: StateDict, like: StateDict, rank: int | None = None
    ) -> StateDict:
        """Server side: the client's y^_i = x + its decoded move, from the server's own x."""
        if self.exact:
            return self._decoded(self.up, arrays, like, rank)
        sent = narrow(like, rank)
        base = flat(narrow(x, rank))
        n = sum(t.numel() for t in sent.values())
        moved = base + self.up.decode(arrays, n, segments(sent, self.scales)).to(base.dtype)
        return widen(shaped(moved, sent), like, rank)

    def receive_extras(self, arrays: dict[str, np.ndarray], like: StateDict, rank: int | None = None) -> StateDict:
        return self._decoded(self.up, arrays, like, rank)


def narrow(state: StateDict, rank: int | None) -> StateDict:
    """The first `rank` components of a LoRA state (all of it for None): what travels for a client."""
    if rank is None or not state:
        return state
    from ..lora_aggregation.factors import narrow_rank

    return narrow_rank(state, rank)


def widen(state: StateDict, like: StateDict, rank: int | None) -> StateDict:
    """narrow undone: `like`'s shapes, zeros beyond the components that travelled."""
    if rank is None:
        return state
    from ..lora_aggregation.factors import widen_rank

    return widen_rank(state, like)


def reply_layout(codec: str, topk_fraction: float, n: int, num_segments: int, exact: bool) -> dict:
    """name -> (dtype, length) of the arrays a client's update (or extras) may carry: what a node's
    ClientApp checks its reply against (transport.check_outgoing), without torch."""
    return Identity().layout(n, num_segments) if exact else build(codec, topk_fraction).layout(n, num_segments)
