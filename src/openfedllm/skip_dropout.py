"""LoRA dropout that draws only the positions it drops.

peft puts `nn.Dropout(p)` on the input of every LoRA layer (`lora_B(lora_A(dropout(x)))`). On a
CPU, torch draws that mask with one random number per element (`bernoulli_` over the whole
input), keeps it for the backward, and multiplies by it twice. On the reference job (p = 0.05, two
masks of ~600 x 576 per layer per pass) drawing the masks alone was ~7% of a local step
(docs/benchmarks.md).

The positions a Bernoulli(p) mask zeroes form a Bernoulli process, so the gaps between
consecutive dropped positions are independent Geometric(p) variates on {1, 2, ...}, and one is
floor(log(U) / log(1 - p)) + 1 for U uniform on (0, 1] (inversion: Devroye, "Non-Uniform Random
Variate Generation", 1986, X.2). Drawing the gaps takes ~p*n random numbers instead of n, and
the backward keeps the ~p*n dropped positions instead of an n-element mask.

The distribution is exactly `nn.Dropout`'s: every element is zeroed independently with
probability p, and the others are scaled by 1 / (1 - p). Only the random stream differs (a run
stays reproducible from its seed, through torch's default generator, as before). On other devices,
and for p above 1/2 (where drawing the dropped positions no longer saves draws), it is
`nn.Dropout` itself.
"""

from __future__ import annotations

import math

import torch


def dropped_positions(n: int, p: float, draws: int | None = None) -> torch.Tensor:
    """Sorted flat indices in [0, n), each one in it independently with probability p (0 < p < 1).

    `draws`: gaps drawn per batch (default: the expected count plus six standard deviations, so
    that one batch almost always reaches n; tests set it small to exercise the continuation)."""
    per_log = 1.0 / math.log1p(-p)
    if draws is None:
        draws = int(n * p + 6 * math.sqrt(n * p * (1 - p))) + 16
    found, start = [], 0  # start: the first index not yet decided
    while True:
        # U = 1 - rand is on (0, 1], so log(U) = log1p(-rand) is finite; gaps are Geometric(p) on {1, 2, ...}
        gaps = torch.rand(draws, dtype=torch.float64).neg_().log1p_().mul_(per_log).floor_().add_(1)
        positions = torch.cumsum(gaps, 0).to(torch.long).add_(start - 1)
        last = int(positions[-1])
        if last >= n:
            found.append(positions[: int(torch.searchsorted(positions, n))])  # sorted: those below n
            return torch.cat(found) if len(found) > 1 else found[0]
        found.append(positions)
        start = last + 1


class _SkipDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        dropped = dropped_positions(x.numel(), p)
        out = x.contiguous() * (1.0 / (1.0 - p))
        out.view(-1)[dropped] = 0
        ctx.save_for_backward(dropped)
        ctx.p = p
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (dropped,) = ctx.saved_tensors
        grad_x = grad.contiguous() * (1.0 / (1.0 - ctx.p))
        grad_x.view(-1)[dropped] = 0
        return grad_x, None


class SkipDropout(torch.nn.Dropout):
    """`nn.Dropout(p)` whose mask is drawn by geometric skips on CPU tensors (see the module doc).

    A subclass, so that code setting every dropout's `p` (trl's `disable_dropout_in_model`, DPO's
    `disable_dropout` here) reaches it too."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p <= 0 or self.p > 0.5 or x.device.type != "cpu":
            return super().forward(x)
        return _SkipDropout.apply(x, self.p)


def use_skip_dropout(model) -> int:
    """Each LoRA layer's `nn.Dropout` in `model` replaced by a `SkipDropout` of the same p.

    Beside `backward_precision.use_bf16_backward` (which changes the class of a LoRA layer's
    frozen `base_layer`), this is the one place outside peft's state-dict functions that touches a
    LoRA layer, and it only swaps a weightless module: the adapter's state dict, which is all the
    federated code sees, is unchanged. Returns how many were replaced (0 when peft keeps its dropouts elsewhere: then
    peft's own run)."""
    replaced = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, torch.nn.ModuleDict):
            continue
        for name, dropout in dropouts.items():
            if type(dropout) is torch.nn.Dropout:
                dropouts[name] = SkipDropout(dropout.p)
                replaced += 1
    return replaced
