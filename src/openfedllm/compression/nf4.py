"""NF4: QLoRA's 4-bit NormalFloat (Dettmers et al., NeurIPS 2023, section 3), blockwise: each block
of 64 values is scaled by its absmax into [-1, 1] and each value replaced by the nearest of the 16
NF4 levels (quantiles of a standard normal). The quantization is bitsandbytes' own
(`quantize_4bit` / `dequantize_4bit`, on CPU too); two codes per byte and a float32 absmax per
block: 0.5625 bytes per value, 7.1x fewer than float32.

|x - x^| <= absmax(block) * g / 2, g the widest gap between neighbouring NF4 levels (tested).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

from .base import Codec, array

BLOCK = 64


def levels() -> torch.Tensor:
    """The 16 NF4 levels, bitsandbytes' table."""
    import bitsandbytes.functional as bnb

    return bnb.get_4bit_type("nf4", device="cpu")


class NF4(Codec):
    name = "nf4"

    def encode(self, flat, segments):
        import bitsandbytes.functional as bnb

        codes, state = bnb.quantize_4bit(flat.float().contiguous(), blocksize=BLOCK, quant_type="nf4")
        return {"nf4": codes.reshape(-1).numpy(), "absmax": state.absmax.float().numpy()}

    def decode(self, arrays, n, segments):
        import bitsandbytes.functional as bnb
        import torch

        layout = self.layout(n, len(segments))
        codes = torch.from_numpy(array(arrays, "nf4", np.uint8, layout["nf4"][1]).copy()).reshape(-1, 1)
        absmax = torch.from_numpy(array(arrays, "absmax", np.float32, layout["absmax"][1]).copy())
        state = bnb.QuantState(
            absmax=absmax, shape=torch.Size([n]), blocksize=BLOCK, quant_type="nf4", dtype=torch.float32, code=levels()
        )
        return bnb.dequantize_4bit(codes, state).reshape(-1)

    def layout(self, n, num_segments):
        return {"nf4": ("uint8", (n + 1) // 2), "absmax": ("float32", math.ceil(n / BLOCK))}
