"""Padding token lists into batches, and the causal-LM loss on response tokens only."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .data.templates import IGNORE, Tokenized


def collate(rows: list[Tokenized], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row of the batch; padding carries no loss and no attention."""
    width = max(len(r.input_ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r.input_ids)
        ids[i, :n] = torch.tensor(r.input_ids)
        labels[i, :n] = torch.tensor(r.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


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


def token_losses(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(sum of token losses, number of loss tokens) for a batch.

    With a 49k vocabulary the output layer costs about a fifth of the forward pass, and most
    positions (the prompt, the padding) carry no loss: so the logits are computed only at the
    positions whose next token is a label, which gives exactly the loss of the full computation.
    """
    labels = batch["labels"]
    targets = labels[:, 1:]  # (batch, seq-1): position t predicts token t+1
    where = targets != IGNORE
    count = int(where.sum())
    split = _split_head(model)
    if split is None:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        picked = logits[:, :-1][where]  # (count, vocab)
    else:
        decoder, head = split
        hidden = decoder(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state  # (batch, seq, hidden)
        picked = head(hidden[:, :-1][where])  # (count, vocab)
    loss_sum = F.cross_entropy(picked.float(), targets[where], reduction="sum")
    return loss_sum, count
