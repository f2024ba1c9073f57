"""What every codec shares: a flat float vector in, named numpy arrays of fixed layout out.

A codec sees the tensors of one message packed into one vector (`transport.pack`: sorted names,
flattened) and `segments`, the lengths of the pieces that carry their own scale (int8: each
tensor, or each row of each tensor). Its arrays' names, dtypes and sizes depend only on the
vector's length and the number of segments, never on the values (`layout`), so a node's reply can
be checked before it leaves (`transport.check_outgoing`) and the ledger can predict a round's bytes.

torch is imported inside the methods: a node's ClientApp process computes `layout` to check a
reply, and must not pay torch's import on every message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


class Codec:
    name = ""
    lossy = True

    def encode(self, flat: torch.Tensor, segments: list[int]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def decode(self, arrays: dict[str, np.ndarray], n: int, segments: list[int]) -> torch.Tensor:
        """The float32 vector of length n the arrays stand for."""
        raise NotImplementedError

    def layout(self, n: int, num_segments: int) -> dict[str, tuple[str, int]]:
        """name -> (numpy dtype, length) of every array `encode` makes for a vector of n values."""
        raise NotImplementedError


class Identity(Codec):
    """`none`: the values themselves, float32 (float64 if the model trains in float64)."""

    name, lossy = "none", False

    def encode(self, flat, segments):
        from ..flower.transport import PACKED

        return {PACKED: flat.detach().cpu().contiguous().numpy()}

    def decode(self, arrays, n, segments):
        import torch

        from ..flower.transport import PACKED

        return torch.from_numpy(np.array(arrays[PACKED]))

    def layout(self, n, num_segments):
        from ..flower.transport import PACKED

        return {PACKED: ("float", n)}  # float32 or float64: checked as any float dtype


def array(arrays: dict[str, np.ndarray], name: str, dtype, n: int) -> np.ndarray:
    """arrays[name], checked to be a vector of n values of `dtype` (a server decodes only what it expected)."""
    from ..errors import UserError

    a = arrays.get(name)
    if a is None or a.dtype != np.dtype(dtype) or a.shape != (n,):
        got = "missing" if a is None else f"{a.dtype} {a.shape}"
        raise UserError(f"a compressed message's {name!r} is {got}, expected {np.dtype(dtype)} ({n},)")
    return a
