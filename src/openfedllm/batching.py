"""Turning token lists into batches, and the causal-LM loss on response tokens only.

Two ways to batch the same rows:
- `collate` right-pads every row to the longest one (what most trainers do);
- `pack` places whole rows one after another into as few sequences as fit (first-fit decreasing,
  capacity = the longest row), with positions restarting at each row, so that attention stays
  within a row. The same examples give the same loss, but the padding that `collate` computes
  (about 30% of the tokens on Alpaca-like data) is mostly gone.

The loss is computed from the decoder's hidden states at the positions that carry loss only,
through `linear_cross_entropy`, which never stores the (tokens x vocabulary) logits.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref

import torch
import torch.nn.functional as F

from .backward_precision import BF16BackwardLinear, bf16_products
from .data.templates import IGNORE, Tokenized
from .models import model_device


def collate(rows: list[Tokenized], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row of the batch; padding carries no loss and no attention.

    `row_ids` says which of `rows` each token belongs to (-1: padding), for per-row sums.
    """
    width = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    row_ids = torch.full((len(rows), width), -1, dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        ids[i, :n] = torch.tensor(r.input_ids)
        labels[i, :n] = torch.tensor(r.labels)
        mask[i, :n] = 1
        row_ids[i, :n] = i
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "row_ids": row_ids}


def pack(rows: list[Tokenized], pad_id: int) -> dict[str, torch.Tensor]:
    """Whole rows packed into as few sequences as fit; attention kept within each row.

    transformers builds a block-diagonal causal mask when it gets `position_ids` that restart
    and no attention mask. The tail after the last row of a sequence is a pseudo-row of padding
    (its own positions, no loss), so no real token attends to it.
    """
    capacity = max(len(r.input_ids) for r in rows)
    bins: list[list[int]] = []  # indices into rows
    loads: list[int] = []
    for i in sorted(range(len(rows)), key=lambda i: -len(rows[i].input_ids)):
        n = len(rows[i].input_ids)
        for b, load in enumerate(loads):
            if load + n <= capacity:
                bins[b].append(i)
                loads[b] += n
                break
        else:
            bins.append([i])
            loads.append(n)
    width = max(loads)
    ids = torch.full((len(bins), width), pad_id, dtype=torch.long)
    labels = torch.full((len(bins), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(bins), width), dtype=torch.long)
    row_ids = torch.full((len(bins), width), -1, dtype=torch.long)
    for b, members in enumerate(bins):
        offset = 0
        for i in members:
            row = rows[i]
            n = len(row.input_ids)
            ids[b, offset : offset + n] = torch.tensor(row.input_ids)
            labels[b, offset : offset + n] = torch.tensor(row.labels)
            labels[b, offset] = IGNORE  # a row's first token is never predicted (from the row before)
            positions[b, offset : offset + n] = torch.arange(n)
            row_ids[b, offset : offset + n] = i
            offset += n
        positions[b, offset:] = torch.arange(width - offset)
    return {"input_ids": ids, "position_ids": positions, "labels": labels, "row_ids": row_ids}


def make_batch(rows: list[Tokenized], pad_id: int, packed: bool) -> dict[str, torch.Tensor]:
    return pack(rows, pad_id) if packed else collate(rows, pad_id)


def split_passes(batch: dict[str, torch.Tensor], max_tokens: int) -> list[dict[str, torch.Tensor]]:
    """The batch's sequences in groups of at most `max_tokens` (but at least one sequence each).

    Forward and backward one group at a time, with the loss of every group divided by the
    step's total loss tokens, give the same gradient as the whole batch at once, while only one
    group's activations are alive: activation memory is bounded by `max_tokens`, not the batch.
    """
    rows, width = batch["input_ids"].shape
    if max_tokens <= 0 or rows * width <= max_tokens:
        return [batch]
    # as few passes as the budget allows, of (nearly) equal size: 8 rows over budget by a little
    # become 4 + 4, not 7 + 1 (a one-row pass runs the matrix multiplies badly)
    passes = -(-rows // max(1, max_tokens // width))
    per_pass = -(-rows // passes)
    return [{k: v[i : i + per_pass] for k, v in batch.items()} for i in range(0, rows, per_pass)]


def on_model(model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch on the model's device (batches are built on the CPU; a no-op there)."""
    device = model_device(model)
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if "position_ids" in batch:
        return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def _split_head(model):
    """(decoder, output layer) when logits can be computed for chosen positions only."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    if getattr(config, "final_logit_softcapping", None) or getattr(config, "logits_scaling", None):
        return None  # models that post-process logits: let them compute their own
    get_decoder = getattr(base, "get_decoder", None)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    decoder = get_decoder() if get_decoder else None
    if decoder is None or head is None or decoder is base:
        return None
    return decoder, head


class _FrozenLinearCrossEntropy(torch.autograd.Function):
    """CE(h_i W^T + b, y_i) for every token i, for a frozen output layer, chunk by chunk.

    The gradient of token i's loss with respect to h_i is (softmax - onehot) W, computed in the
    forward pass, chunk by chunk, while each chunk's logits are at hand; only that gradient
    (tokens x hidden) is kept for the backward pass instead of the (tokens x vocabulary) logits
    and their softmax. Same arithmetic as autograd (one matmul forward, one for the input
    gradient), far less memory. Per-token outputs serve both a summed loss (SFT) and per-row
    sums that enter a nonlinear loss (DPO): backward scales each token's row by its own grad.
    With `bf16`, the gradient's product takes bfloat16-rounded inputs (`backward_precision`);
    the logits, so the losses, stay float32.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk, bf16):
        losses = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        grad = torch.empty_like(hidden)
        for start in range(0, hidden.shape[0], chunk):
            h = hidden[start : start + chunk]
            t = targets[start : start + chunk]
            logp = torch.log_softmax(F.linear(h, weight, bias).float(), dim=-1)  # (chunk, vocab)
            losses[start : start + chunk] = -logp.gather(1, t[:, None])[:, 0]
            probs = logp.exp_()  # softmax, in place
            probs[torch.arange(len(t), device=t.device), t] -= 1.0  # d CE / d logits
            with bf16_products() if bf16 else contextlib.nullcontext():
                grad[start : start + chunk] = (probs.to(weight.dtype) @ weight).to(hidden.dtype)
        ctx.save_for_backward(grad)
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        (grad,) = ctx.saved_tensors
        return grad * grad_losses.to(grad.dtype)[:, None], None, None, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor, chunk: int = 256
) -> torch.Tensor:
    """Per-token cross-entropies (tokens,) of `head(hidden)` against `targets`, hidden: (tokens, dim)."""
    frozen = (
        isinstance(head, torch.nn.Linear)
        and not head.weight.requires_grad
        and (head.bias is None or not head.bias.requires_grad)
    )
    if frozen and torch.is_grad_enabled() and hidden.requires_grad:
        return _FrozenLinearCrossEntropy.apply(
            hidden, head.weight, head.bias, targets, chunk, isinstance(head, BF16BackwardLinear)
        )
    if not torch.is_grad_enabled():
        # Evaluation: chunked, so the full logits never exist at once either.
        return torch.cat(
            [
                F.cross_entropy(head(hidden[s : s + chunk]).float(), targets[s : s + chunk], reduction="none")
                for s in range(0, hidden.shape[0], chunk)
            ]
            or [torch.zeros(0, device=hidden.device)]
        )
    # A trainable or adapted output layer (full fine-tuning, LoRA on lm_head): plain autograd.
    return F.cross_entropy(head(hidden).float(), targets, reduction="none")


def token_losses(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(sum of token losses, number of loss tokens) for a padded or packed batch.

    With a 49k vocabulary the output layer costs about a fifth of the forward pass, and most
    positions (the prompt, the padding) carry no loss: so the logits are computed only at the
    positions whose next token is a label, which gives exactly the loss of the full computation.
    """
    per_token, where = _loss_tokens(model, on_model(model, batch))
    return per_token.sum(), int(where.sum())


def _loss_tokens(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy of every loss token, in order; the (batch, seq-1) mask of where they are)."""
    targets = batch["labels"][:, 1:]  # (batch, seq-1): position t predicts token t+1
    where = targets != IGNORE
    split = _split_head(model)
    if split is None:
        logits = model(**_inputs(batch)).logits
        return F.cross_entropy(logits[:, :-1][where].float(), targets[where], reduction="none"), where
    decoder, head = split
    hidden = decoder(**_inputs(batch)).last_hidden_state  # (batch, seq, hidden)
    return linear_cross_entropy(hidden[:, :-1][where], head, targets[where]), where


def row_logprobs(model, batch: dict[str, torch.Tensor], num_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of log-probabilities of each row's loss tokens, their count), per row of the batch.

    The log-likelihood of a whole response, which DPO compares between two responses; rows may
    be padded or packed (`row_ids` says which row each token belongs to).
    """
    batch = on_model(model, batch)
    per_token, where = _loss_tokens(model, batch)
    owner = batch["row_ids"][:, 1:][where]  # the row of each predicted token
    logps = torch.zeros(num_rows, dtype=per_token.dtype, device=owner.device).index_add(0, owner, -per_token)
    counts = torch.zeros(num_rows, dtype=torch.long, device=owner.device).index_add(0, owner, torch.ones_like(owner))
    return logps, counts


_PACKING_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@torch.no_grad()
def packing_works(model) -> bool:
    """Whether this model keeps packed rows apart (checked once per model on three tiny rows).

    Packing relies on transformers turning restarting position ids into a block-diagonal mask;
    a model whose attention ignores that would silently attend across rows, so compare the
    packed and padded results once and fall back to padding if they differ.
    """
    if model not in _PACKING_CHECKED:
        # packed as [A] and [B, C]: C's outputs change if it can see B
        rows = [
            Tokenized([5, 6, 7, 8, 9, 10], [IGNORE] * 6, 1),
            Tokenized([9, 8, 7], [IGNORE] * 3, 1),
            Tokenized([4, 3, 2], [IGNORE] * 3, 1),
        ]
        split = _split_head(model)
        run = split[0] if split else model
        was_training = model.training
        model.eval()
        try:
            padded = run(**_inputs(on_model(model, collate(rows, 0))))
            packed = run(**_inputs(on_model(model, pack(rows, 0))))
            key_out = "last_hidden_state" if split else "logits"
            a, b = padded[key_out], packed[key_out]
            # Relative to the outputs' scale: float32 noise over a deep model's hidden states (|h| ~ 50
            # in SmolLM2) reaches ~1e-5 of it and depends on the adapter loaded; a row attending to
            # another changes its outputs by a large share of that scale. An element-wise tolerance
            # made the verdict depend on which adapter happened to be loaded at the first check.
            scale = float(a.abs().max())
            err = max(
                float((x - y).abs().max())
                for x, y in [(a[0, :6], b[0, :6]), (a[1, :3], b[1, :3]), (a[2, :3], b[1, 3:6])]
            )
            ok = err <= 1e-3 * scale + 1e-5
        except Exception:  # noqa: BLE001 - any failure means: don't pack this model
            ok = False
        finally:
            model.train(was_training)
        if not ok:
            warnings.warn("this model does not keep packed rows apart; batches are padded instead", stacklevel=2)
        _PACKING_CHECKED[model] = ok
    return _PACKING_CHECKED[model]
