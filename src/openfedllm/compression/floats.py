"""fp16 and bf16: each value cast to a 16-bit float (IEEE 754 binary16; bfloat16, the top half of
a float32), rounding to nearest even. Half the bytes of float32.

Relative error per value: at most 2^-11 (fp16, for |x| in its normal range 6.1e-5 .. 65504) and
2^-8 (bf16, any float32 range). fp16 saturates: values past 65504 travel as +-65504, and values
below 6e-8 flush to zero. numpy has no bfloat16, so bf16 travels as the uint16 of its bits.
"""

from __future__ import annotations

import numpy as np

from .base import Codec, array

FP16_MAX = 65504.0


class FP16(Codec):
    name = "fp16"

    def encode(self, flat, segments):
        import torch

        return {"fp16": flat.float().clamp(-FP16_MAX, FP16_MAX).to(torch.float16).numpy()}

    def decode(self, arrays, n, segments):
        import torch

        return torch.from_numpy(array(arrays, "fp16", np.float16, n).astype(np.float32))

    def layout(self, n, num_segments):
        return {"fp16": ("float16", n)}


class BF16(Codec):
    name = "bf16"

    def encode(self, flat, segments):
        import torch

        return {"bf16": flat.float().to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)}

    def decode(self, arrays, n, segments):
        import torch

        bits = array(arrays, "bf16", np.uint16, n)
        return torch.from_numpy(bits.view(np.int16).copy()).view(torch.bfloat16).float()

    def layout(self, n, num_segments):
        return {"bf16": ("uint16", n)}
