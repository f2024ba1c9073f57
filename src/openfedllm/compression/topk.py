"""top-k sparsification with error feedback (Stich, Cordonnier & Jaggi, "Sparsified SGD with
memory", NeurIPS 2018, Algorithm 1; Aji & Heafield, EMNLP 2017): a client sends only the k values
of largest magnitude of its update (k = ceil(comm.topk_fraction * n)), as int32 indices and float32
values, 8 bytes each; what it did not send is not lost but kept and added to its next update:

    v = Delta_i + e_i,   sent = top_k(v),   e_i <- v - sent

e_i lives with the client (the simulation's client state, a node's disk, the checkpoints), so the
sum of what a client sent over its rounds plus its e_i is exactly the sum of its updates (tested).
Ties in magnitude go to the lower index, so every machine picks the same k.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import UserError
from .base import Codec, array


class TopK(Codec):
    name = "topk"

    def __init__(self, fraction: float):
        self.fraction = fraction

    def k(self, n: int) -> int:
        return min(n, max(1, math.ceil(self.fraction * n))) if n else 0

    def encode(self, flat, segments):
        import torch

        x = flat.float()
        k = self.k(x.numel())
        # stable descending sort of |x|: equal magnitudes keep index order, so the pick is deterministic
        order = torch.sort(x.abs(), descending=True, stable=True).indices[:k]
        index = torch.sort(order).values
        return {"indices": index.to(torch.int32).numpy(), "values": x[index].numpy()}

    def decode(self, arrays, n, segments):
        import torch

        k = self.k(n)
        index = torch.from_numpy(array(arrays, "indices", np.int32, k).astype(np.int64))
        values = torch.from_numpy(array(arrays, "values", np.float32, k).copy())
        if k and (index[0] < 0 or index[-1] >= n or bool((index[1:] <= index[:-1]).any())):
            raise UserError("a top-k message's indices are not increasing within the tensors' size")
        out = torch.zeros(n)
        out[index] = values
        return out

    def layout(self, n, num_segments):
        k = self.k(n)
        return {"indices": ("int32", k), "values": ("float32", k)}
