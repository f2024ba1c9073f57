"""The backward pass's products through frozen weights in bfloat16 (opt-in: train.backward_precision).

Half of a LoRA step's matrix products are in the backward pass: each frozen layer turns the
gradient of its output into the gradient of its input, dL/dx = dL/dy W (the frozen weight gets no
gradient of its own), and the output layer does the same at the loss positions. With
`train.backward_precision: bfloat16` those products round their inputs (dL/dy and W) to bfloat16
and accumulate in float32, through oneDNN's bf16 "fpmath" mode: the rounding that bfloat16
mixed-precision training applies everywhere, here only on this half. What stays float32:
- the forward pass, so every loss and logit (the first step's loss is float32's exactly; later
  ones differ only through the updates);
- the products through trainable weights, and those that form their gradients (LoRA's A and B,
  and every weight in full fine-tuning: a weight that requires a gradient is left as it is),
  though the gradient reaching a layer has passed through the rounded products of the layers
  above it;
- attention's backward (torch's own kernel) and every elementwise op.

On CPUs with AMX or AVX512-BF16 (where `torch.ops.mkldnn._is_mkldnn_bf16_supported()` holds)
these products run 1.3-1.8x faster at the reference job's shapes, each weight coming from memory
as in a step (2-9x when it stays in cache); docs/benchmarks.md has the step time and the losses.
torch routes only products of some size to oneDNN; small ones (a few rows) stay float32.
Elsewhere, and on a GPU, torch computes all of them in float32 as before, and the setting changes
nothing (on a GPU, `model.dtype: bfloat16` is the lever).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn


def supported() -> bool:
    """Whether this CPU multiplies bfloat16 natively, so that the setting takes effect (and pays)."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


@contextlib.contextmanager
def bf16_products():
    """float32 matrix products in the block take bfloat16-rounded inputs, accumulating in float32
    (oneDNN, on a CPU that supports it; elsewhere torch ignores the setting)."""
    setting = torch.backends.mkldnn.matmul
    before = setting.fp32_precision
    setting.fp32_precision = "bf16"
    try:
        yield
    finally:
        setting.fp32_precision = before


class _FrozenLinear(torch.autograd.Function):
    """y = x W^T + b in float32; in the backward, dL/dx = dL/dy W from bfloat16-rounded inputs."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(weight)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        (weight,) = ctx.saved_tensors
        with bf16_products():
            return grad_out @ weight, None, None


class BF16BackwardLinear(nn.Linear):
    """An `nn.Linear` whose input gradient, while its weight is frozen, comes from bfloat16 products.

    Installed by changing a module's class (`use_bf16_backward`), so the module keeps its identity,
    parameters and state-dict keys, and peft's LoRA layers keep their `base_layer`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        trainable = weight.requires_grad or (bias is not None and bias.requires_grad)
        if trainable or weight.dtype != torch.float32 or not (torch.is_grad_enabled() and x.requires_grad):
            return super().forward(x)
        return _FrozenLinear.apply(x, weight, bias)


def use_bf16_backward(model: nn.Module) -> int:
    """Give every plain float32 `nn.Linear` of `model` a bfloat16 input gradient; returns how many.

    Subclasses (bitsandbytes' quantized layers, peft's LoRA layers) are left alone; the plain layers
    inside them (a LoRA layer's `base_layer`, its `lora_A`/`lora_B`) are plain `nn.Linear`: the
    frozen ones take effect, the trainable ones keep float32 (checked at every forward)."""
    count = 0
    for module in model.modules():
        if type(module) is nn.Linear and module.weight.dtype == torch.float32:
            module.__class__ = BF16BackwardLinear
            count += 1
    return count
