"""Direct Preference Optimization of the trainable tensors, and two of its variants.

With h = [log pi(y_w|x) - log pi_ref(y_w|x)] - [log pi(y_l|x) - log pi_ref(y_l|x)] for a chosen
response y_w and a rejected y_l (log-probabilities summed over the response tokens):

- sigmoid: -log sigmoid(beta * h)  (Rafailov et al. 2023, "Direct Preference Optimization", Eq. 7)
- ipo:     (h - 1 / (2 * beta))^2  (Azar et al. 2023, "A General Theoretical Paradigm to Understand
           Learning from Human Preferences", Eq. 17), on log-probabilities averaged over the
           response's tokens, as trl computes it
- hinge:   max(0, 1 - beta * h)    (Zhao et al. 2023, SLiC-HF's calibration loss)

Optionally plus alpha * (-log pi(y_w|x) / |y_w|), the chosen response's mean token NLL (RPO:
Pang et al. 2024, "Iterative Reasoning Preference Optimization"; trl's `rpo_alpha`):
DPO alone can widen the margin by pushing the rejected response down without making the
chosen one likely enough to be generated.

The implicit rewards are r_w = beta * (log pi(y_w|x) - log pi_ref(y_w|x)) and likewise r_l; a pair
is ranked right when r_w > r_l (a tie, as at the start when pi = pi_ref, counts one half).

The reference is the model as the run starts: the base model with the adapter disabled, or the
SFT adapter the run starts from. It never changes during a run, so each pair's reference
log-probabilities are computed once (as trl's `precompute_ref_log_probs` does): no second model
in memory, and no reference forward pass in the training steps after a pair's first use. Training
pairs get theirs on first use (`Reference`), so a large preference file costs only the pairs the
run draws; held-out pairs get theirs before training.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import get_args

import torch
import torch.nn.functional as F

from . import models
from .batching import make_batch, packing_works, row_logprobs
from .client import Batching, StepStats
from .data.preference import PairRow
from .data.templates import IGNORE
from .names import Loss

LOSSES = get_args(Loss)


def preference_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    loss_type: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss of each pair, chosen rewards, rejected rewards) from response log-probabilities."""
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    h = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * h)
    else:
        raise ValueError(f"unknown DPO loss {loss_type!r}; valid: {', '.join(LOSSES)}")
    return losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


def ranked_right(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """1 where the chosen response earns the higher implicit reward, 1/2 on a tie, else 0."""
    return (chosen_rewards > rejected_rewards).float() + 0.5 * (chosen_rewards == rejected_rewards).float()


def pair_logprobs(
    model, pairs: list[PairRow], batching: Batching
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(chosen log-probs, rejected log-probs, chosen token counts, rejected token counts) of the
    model, for all pairs in one batch (chosen and rejected rows packed or padded together)."""
    n = len(pairs)
    rows = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    logps, counts = row_logprobs(model, make_batch(rows, batching.pad_id, batching.packed), 2 * n)
    return logps[:n], logps[n:], counts[:n], counts[n:]


def pair_groups(pairs: list[PairRow], max_tokens: int) -> list[list[PairRow]]:
    """The pairs in groups whose rows (padded to the longest) fit `max_tokens`, at least one pair each.

    Each pair stays whole within a group, because its loss needs both responses: summing the
    groups' losses gives exactly the loss (and gradient) of all pairs at once.
    """
    width = max(max(len(p.chosen.input_ids), len(p.rejected.input_ids)) for p in pairs)
    if max_tokens <= 0 or 2 * len(pairs) * width <= max_tokens:
        return [pairs]
    passes = -(-len(pairs) // max(1, max_tokens // (2 * width)))
    per_pass = -(-len(pairs) // passes)
    return [pairs[i : i + per_pass] for i in range(0, len(pairs), per_pass)]


def _normalised(pairs: list[PairRow], loss_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    ref_c = torch.tensor([p.ref_chosen for p in pairs])
    ref_r = torch.tensor([p.ref_rejected for p in pairs])
    if loss_type == "ipo":
        ref_c = ref_c / torch.tensor([_response_tokens(p.chosen) for p in pairs])
        ref_r = ref_r / torch.tensor([_response_tokens(p.rejected) for p in pairs])
    return ref_c, ref_r


def _response_tokens(row) -> int:
    return sum(1 for t in row.labels[1:] if t != IGNORE)


class Reference:
    """The reference log-probs of the training pairs, computed on first use, a fixed chunk at a time.

    A pair's chunk is fixed by its position in `rows`, so its reference value is computed in the
    same batch whatever the order of first use: a resumed run gets bit for bit the values an
    uninterrupted one got. With `initial_state` (an SFT adapter as reference) the model computes
    with those weights and gets its current ones back; otherwise the adapter is switched off.
    """

    def __init__(
        self,
        model,
        rows: list[PairRow],
        pad_id: int,
        chunk: int,
        packing: bool,
        initial_state: dict[str, torch.Tensor] | None = None,
    ):
        self.model, self.rows, self.pad_id, self.chunk, self.packing = model, rows, pad_id, chunk, packing
        self.initial_state = initial_state
        self.chunk_of = {id(row): i // chunk for i, row in enumerate(rows)}
        self.done: set[int] = set()

    def ensure(self, pairs: list[PairRow]) -> None:
        for k in sorted({self.chunk_of[id(p)] for p in pairs} - self.done):
            self.compute(self.rows[k * self.chunk : (k + 1) * self.chunk])
            self.done.add(k)

    def compute(self, pairs: list[PairRow]) -> None:
        if self.initial_state is None:
            compute_reference(self.model, pairs, self.pad_id, self.chunk, self.packing, adapter_disabled=True)
            return
        current = models.trainable_state(self.model)
        models.load_trainable_state(self.model, self.initial_state)
        try:
            compute_reference(self.model, pairs, self.pad_id, self.chunk, self.packing, adapter_disabled=False)
        finally:
            models.load_trainable_state(self.model, current)


@dataclass
class DPOLoss:
    """The client's objective for DPO: mean preference loss over the step's pairs."""

    beta: float = 0.1
    loss_type: str = "sigmoid"
    rpo_alpha: float = 0.0  # weight of the chosen response's mean token NLL added to each pair's loss
    reference: Reference | None = None  # fills in reference log-probs on first use; None: set beforehand

    def __call__(self, model, micro: list[list[PairRow]], batching: Batching) -> StepStats:
        if self.reference is not None:
            self.reference.ensure([p for pairs in micro for p in pairs])
        n_pairs = sum(len(pairs) for pairs in micro)  # of the whole step, every process's share
        loss_total, right, margin, tokens = 0.0, 0.0, 0.0, 0
        for pairs in micro:
            mine = batching.shards(pairs)[batching.rank]
            for group in pair_groups(mine, batching.max_tokens_per_pass) if mine else ():
                losses, chosen_r, rejected_r, n_tokens = self.pair_losses(model, group, batching)
                batching.backward(losses.sum() / n_pairs)
                loss_total += float(losses.detach().sum()) / n_pairs
                right += float(ranked_right(chosen_r, rejected_r).sum())
                margin += float((chosen_r - rejected_r).sum())
                tokens += n_tokens
        return StepStats(loss_total, tokens, {"reward_accuracy": right / n_pairs, "reward_margin": margin / n_pairs})

    def pair_losses(self, model, pairs: list[PairRow], batching: Batching):
        """(losses, chosen rewards, rejected rewards, response tokens) of the policy on `pairs`."""
        pc, pr, nc, nr = pair_logprobs(model, pairs, batching)
        nll = -pc / nc
        if self.loss_type == "ipo":
            pc, pr = pc / nc, pr / nr
        ref_c, ref_r = (r.to(pc.device) for r in _normalised(pairs, self.loss_type))
        losses, chosen_r, rejected_r = preference_loss(pc, pr, ref_c, ref_r, self.beta, self.loss_type)
        if self.rpo_alpha:
            losses = losses + self.rpo_alpha * nll
        return losses, chosen_r, rejected_r, int(nc.sum() + nr.sum())


@torch.no_grad()
def compute_reference(
    model,
    pairs: list[PairRow],
    pad_id: int,
    batch_size: int,
    packing: bool,
    adapter_disabled: bool,
    desc: str = "reference log-probs",
) -> None:
    """Fill in each pair's reference log-probabilities with the model as it is now.

    `adapter_disabled`: compute them with the LoRA adapter switched off (the base model itself).
    Batches are formed in the order of `pairs`, as `preference_metrics` forms them, so that an
    untrained policy scores exactly the reference (rewards of exactly 0, ties) on held-out pairs.
    """
    from tqdm.auto import tqdm

    batching = Batching(pad_id, packing and packing_works(model), 0)
    was_training = model.training
    model.eval()
    context = models.adapter_disabled(model) if adapter_disabled else contextlib.nullcontext()
    with context:
        for start in tqdm(range(0, len(pairs), batch_size), desc=desc, leave=False, disable=None):
            chunk = pairs[start : start + batch_size]
            pc, pr, _, _ = pair_logprobs(model, chunk, batching)
            for p, c, r in zip(chunk, pc.tolist(), pr.tolist()):
                p.ref_chosen, p.ref_rejected = c, r
    model.train(was_training)


@torch.no_grad()
def preference_metrics(
    model, pairs: list[PairRow], pad_id: int, batch_size: int, packing: bool, beta: float, loss_type: str
) -> dict[str, float]:
    """Held-out DPO loss, preference accuracy (chosen rewarded above rejected) and mean reward margin."""
    batching = Batching(pad_id, packing and packing_works(model), 0)
    model.eval()
    objective = DPOLoss(beta, loss_type)  # the preference loss alone, whatever rpo_alpha trains with
    losses, right, margins = [], [], []
    for start in range(0, len(pairs), batch_size):
        loss, chosen_r, rejected_r, _ = objective.pair_losses(model, pairs[start : start + batch_size], batching)
        losses.append(loss)
        right.append(ranked_right(chosen_r, rejected_r))
        margins.append(chosen_r - rejected_r)
    return {
        "loss": float(torch.cat(losses).mean()),
        "pref_accuracy": float(torch.cat(right).mean()),
        "reward_margin": float(torch.cat(margins).mean()),
    }
