"""A client's local training: a plain PyTorch loop over its own tokenized examples.

The same function serves the simulation and a Flower node (through `rounds.train_client`). What an FL algorithm must do
differently on the client (a proximal term, a gradient correction) arrives as `StepHooks`,
built by the algorithm from what the server sent; the loop itself knows no algorithm names.
What the step minimises arrives as an `Objective` (next-token loss for SFT, a preference loss
for DPO), so every algorithm's hooks act on every objective through the one loop.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, get_args

import torch
from tqdm.auto import tqdm

from .batching import make_batch, packing_works, split_passes, token_losses
from .data.templates import IGNORE, Tokenized
from .errors import UserError
from .models import model_device
from .names import Optimizer


@dataclass
class StepHooks:
    """What an algorithm adds to a client's step; each hook is optional."""

    extra_loss: Callable[[], torch.Tensor] | None = None  # added to the loss (e.g. FedProx)
    after_backward: Callable[[], None] | None = None  # edits .grad before clipping and the step
    after_step: Callable[[], None] | None = None  # edits the weights after the optimizer's step (e.g. SCAFFOLD)


@dataclass
class Batching:
    """How rows become tensors and gradients: padding id, packing, the activation budget of one pass,
    and the loss scaler of a float16 model."""

    pad_id: int
    packed: bool
    max_tokens_per_pass: int
    scaler: torch.amp.GradScaler | None = None
    rank: int = 0  # this process's place among the data-parallel processes training one client
    world: int = 1  # how many processes share each micro-batch (1: this process alone)

    def shards(self, rows: list) -> list[list]:
        """The micro-batch's rows as every process takes them: process r takes rows r, r + world, ..."""
        return [rows[r :: self.world] for r in range(self.world)]

    def backward(self, loss: torch.Tensor) -> None:
        """Gradients of `loss`, scaled up first when the model computes in float16 (so small
        gradients do not underflow in half precision; the scaler divides them back before the step)."""
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()


def loss_scaler(model, params: list[torch.nn.Parameter]) -> torch.amp.GradScaler | None:
    """A GradScaler when the base model computes in float16 (bfloat16 and float32 need none)."""
    if not any(p.dtype == torch.float16 for p in model.parameters()):
        return None
    if any(p.dtype != torch.float32 for p in params):
        raise UserError(
            "model.dtype: float16 weights cannot be trained directly (finetune: full); "
            "use bfloat16 or float32, or LoRA adapters (kept in float32)"
        )
    return torch.amp.GradScaler(model_device(model).type)


@dataclass
class StepStats:
    loss: float  # the step's loss (what its gradient is the gradient of)
    tokens: int  # tokens that carried loss
    metrics: dict[str, float] = field(default_factory=dict)  # objective-specific (e.g. DPO reward accuracy)


class Objective(Protocol):
    """Forward and backward of one optimizer step's micro-batches; returns what the step saw."""

    def __call__(self, model, micro: list[list], batching: Batching) -> StepStats: ...


def next_token_loss(model, micro: list[list[Tokenized]], batching: Batching) -> StepStats:
    """SFT: mean cross-entropy over the response tokens of all of the step's micro-batches (of this
    process's share of them, when several processes train the client: see `data_parallel`)."""
    shards = [
        [make_batch(part, batching.pad_id, batching.packed) for part in batching.shards(rows) if part] for rows in micro
    ]
    # Normalise by the loss tokens of the whole accumulated step (every process's share), so that
    # accumulation and data parallelism give the same gradient as one large batch.
    step_tokens = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for batches in shards for b in batches)
    mine = [batches[batching.rank] for batches in shards if len(batches) > batching.rank]
    step_loss, own_tokens = 0.0, 0
    for batch in mine:
        for part in split_passes(batch, batching.max_tokens_per_pass):
            loss_sum, tokens = token_losses(model, part)
            batching.backward(loss_sum / max(step_tokens, 1))
            step_loss += float(loss_sum.detach()) / max(step_tokens, 1)
            own_tokens += tokens
    return StepStats(step_loss, own_tokens)


@dataclass
class LocalResult:
    loss: float  # mean training loss over the local steps
    losses: list[float]  # training loss of each step
    steps: int
    tokens: int  # tokens that carried loss
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)  # the objective's metrics, mean over steps
    step_seconds: list[float] = field(default_factory=list)  # from the first step's start to each step's end


def data_parallel() -> tuple[int, int]:
    """(rank, world size) of the torch.distributed process group this process trains in, (0, 1) alone.

    Under `torchrun` (or any initialised process group) each process of a client takes its share of
    every micro-batch, and the adapter's gradients are summed across the processes before the step,
    as torch's DistributedDataParallel does: every process then takes the same step. The DDP wrapper
    itself is not used, because the loss runs the decoder directly (logits only where labels are),
    which would bypass the wrapper's forward and its gradient hooks."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _sum_across_processes(params: list[torch.nn.Parameter], stats: StepStats) -> StepStats:
    """The gradients and the step's statistics summed over the data-parallel processes."""
    import torch.distributed as dist

    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
    keys = sorted(stats.metrics)
    values = [stats.loss, float(stats.tokens), *(stats.metrics[k] for k in keys)]
    numbers = torch.tensor(values, dtype=torch.float64, device=params[0].device)  # NCCL reduces GPU tensors only
    dist.all_reduce(numbers)
    values = numbers.tolist()
    return StepStats(values[0], int(values[1]), dict(zip(keys, values[2:])))


def batch_order(num_rows: int, num_batches: int, batch_size: int, seed: int) -> list[list[int]]:
    """Row indices for each micro-batch: seeded passes over the client's data, reshuffled per pass."""
    generator = torch.Generator().manual_seed(seed)
    needed = num_batches * batch_size
    order: list[int] = []
    while len(order) < needed:
        order.extend(torch.randperm(num_rows, generator=generator).tolist())
    return [order[i * batch_size : (i + 1) * batch_size] for i in range(num_batches)]


def cosine_lr(round_index: int, rounds: int, lr: float, min_lr: float) -> float:
    """The learning rate of a round: cosine decay from lr to min_lr across the rounds."""
    if rounds <= 1:
        return lr
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * round_index / rounds))


OPTIMIZERS = get_args(Optimizer)


def make_optimizer(name: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":  # plain SGD: no momentum, so a step is exactly -lr * (g + weight_decay * w)
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}")


@dataclass
class LocalSteps:
    """How a client takes its local steps in one round."""

    steps: int  # K: optimizer steps
    batch_size: int  # rows per micro-batch
    lr: float  # this round's learning rate
    seed: int  # batch order and dropout masks (derived from run seed, phase, round, client)
    pad_id: int  # the tokenizer's padding id
    grad_accum: int = 1  # micro-batches per optimizer step
    weight_decay: float = 0.0
    max_grad_norm: float = 0.0  # gradient clipping norm; 0: no clipping
    optimizer: str = "adamw"  # adamw or sgd
    packing: bool = True  # pack rows into one sequence per micro-batch where the model allows it
    max_tokens_per_pass: int = 640  # token budget of one forward pass (longer micro-batches are split)


def train_local(
    model,
    rows: list[Tokenized],
    settings: LocalSteps,
    hooks: StepHooks | None = None,
    objective: Objective = next_token_loss,
    desc: str = "local steps",
) -> LocalResult:
    """`settings.steps` optimizer steps (AdamW or SGD) on `rows`, each over `grad_accum` micro-batches."""
    s = settings
    steps, grad_accum, max_grad_norm = s.steps, s.grad_accum, s.max_grad_norm
    hooks = hooks or StepHooks()
    params = [p for p in model.parameters() if p.requires_grad]
    # A fresh scaler each round, like the optimizer: a round's steps never depend on an earlier round's.
    scaler = loss_scaler(model, params)
    rank, world = data_parallel()
    batching = Batching(s.pad_id, s.packing and packing_works(model), s.max_tokens_per_pass, scaler, rank, world)
    # A fresh optimizer each round, as every client starts from the new global model; the
    # moments of an earlier round belong to weights that no longer exist.
    optim = make_optimizer(s.optimizer, params, s.lr, s.weight_decay)
    torch.manual_seed(s.seed)  # dropout masks: deterministic per (run seed, round, client)
    batches = batch_order(len(rows), steps * grad_accum, s.batch_size, s.seed)
    model.train()
    start = time.perf_counter()
    losses: list[float] = []
    step_seconds: list[float] = []
    tokens = 0
    metric_sums: dict[str, float] = {}
    bar = tqdm(range(steps), desc=desc, leave=False, dynamic_ncols=True, disable=None)
    # Without a terminal (nohup, SLURM, CI) there is no bar: a line at a steady pace instead of silence.
    report_every, last_report = float(os.environ.get("OPENFEDLLM_PROGRESS_SECONDS", "60")), start
    for step in bar:
        micro = [[rows[i] for i in batches[step * grad_accum + k]] for k in range(grad_accum)]
        if hooks.extra_loss is not None:
            term = hooks.extra_loss()  # e.g. a proximal term: its gradient joins the objective's
            if term.requires_grad:  # every process adds it; the sum across processes counts it once
                batching.backward(term / world)
        stats = objective(model, micro, batching)
        if world > 1:
            stats = _sum_across_processes(params, stats)
        if not math.isfinite(stats.loss):
            raise UserError(
                f"{desc}: the training loss is {stats.loss} at local step {step + 1}; the run stops "
                "here, its checkpoints stay as they were (try a smaller train.lr)"
            )
        if scaler is not None:
            scaler.unscale_(optim)  # true gradients for the hooks and clipping
        if hooks.after_backward is not None:
            hooks.after_backward()
        if max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        if scaler is not None:
            scaler.step(optim)  # skipped when a gradient overflowed; the scale then shrinks
            scaler.update()
        else:
            optim.step()
        optim.zero_grad(set_to_none=True)
        if hooks.after_step is not None:
            hooks.after_step()
        losses.append(stats.loss)
        step_seconds.append(time.perf_counter() - start)
        tokens += stats.tokens
        for key, value in stats.metrics.items():
            metric_sums[key] = metric_sums.get(key, 0.0) + value
        bar.set_postfix(loss=f"{stats.loss:.3f}")
        if bar.disable and time.perf_counter() - last_report >= report_every:
            last_report = time.perf_counter()
            print(f"  {desc}: step {step + 1}/{steps}, loss {stats.loss:.3f}, {last_report - start:.0f} s", flush=True)
    if not all(bool(torch.isfinite(p).all()) for p in params):  # a finite last loss can still step to inf
        raise UserError(
            f"{desc}: the weights are not finite after {steps} local steps; the run stops here, its "
            "checkpoints stay as they were (try a smaller train.lr)"
        )
    return LocalResult(
        loss=sum(losses) / max(len(losses), 1),
        losses=losses,
        steps=steps,
        step_seconds=step_seconds,
        tokens=tokens,
        seconds=time.perf_counter() - start,
        metrics={key: total / max(steps, 1) for key, total in metric_sums.items()},
    )
