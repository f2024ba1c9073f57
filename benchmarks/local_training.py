"""Local training throughput: openfedllm's client loop vs a plain PyTorch + peft loop.

Both do the same optimizer steps on the same batches of the same client data, from the same
initial adapter: (A) the plain loop, `model(**batch).loss` with full-vocabulary logits, backward,
clip, AdamW; (B) `openfedllm.client.train_local`. They run interleaved A/B/A/B so that machine
drift hits both, with torch threads pinned. Prints tokens/s (padded tokens, as a GPU would
compute them, and loss tokens), the ratio B/A, and both loss trajectories (they must agree: a
faster step that learns differently does not count).

    python benchmarks/local_training.py [--steps 8] [--batch-size 8] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from openfedllm import models
from openfedllm.batching import collate
from openfedllm.client import batch_order, train_local
from openfedllm.data import suite
from openfedllm.data.templates import tokenize


def plain_loop(model, rows, steps, batch_size, lr, seed, pad_id):
    """The reference: what a careful user writes by hand with transformers + peft."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    torch.manual_seed(seed)
    model.train()
    losses = []
    for idx in batch_order(len(rows), steps, batch_size, seed):
        batch = collate([rows[i] for i in idx], pad_id)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return losses


def padded_tokens(rows, steps, batch_size, seed):
    total = 0
    for idx in batch_order(len(rows), steps, batch_size, seed):
        total += len(idx) * max(len(rows[i].input_ids) for i in idx)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=models.DEFAULT_MODEL)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    path = models.resolve_model(args.model)
    tokenizer = models.load_tokenizer(path)
    model = models.load_base_model(path)
    torch.manual_seed(0)
    model = models.add_lora(model, 8, 16, 0.05, ["q_proj", "k_proj", "v_proj", "o_proj"])
    initial = models.trainable_state(model)
    examples = suite.generate(200, seed=0)
    rows = [tokenize(e, "chat", tokenizer, 256) for e in examples]
    pad = tokenizer.pad_token_id
    seed = 1234
    n_padded = padded_tokens(rows, args.steps, args.batch_size, seed)
    print(f"model {args.model}, {args.steps} steps x batch {args.batch_size}, {n_padded} padded tokens "
          f"per run, torch threads {torch.get_num_threads()}")

    times = {"A": [], "B": []}
    loss_a = loss_b = None
    for rep in range(args.repeats + 1):  # the first pair warms caches up and is not counted
        for which in "AB":
            models.load_trainable_state(model, initial)
            start = time.perf_counter()
            if which == "A":
                loss_a = plain_loop(model, rows, args.steps, args.batch_size, args.lr, seed, pad)
            else:
                result = train_local(model, rows, steps=args.steps, batch_size=args.batch_size,
                                     grad_accum=1, lr=args.lr, weight_decay=0.0, max_grad_norm=1.0,
                                     seed=seed, pad_id=pad)
                loss_b = result.loss
            elapsed = time.perf_counter() - start
            if rep:
                times[which].append(elapsed)
            print(f"  {'warm-up' if not rep else f'repeat {rep}'} {which}: {elapsed:.2f} s "
                  f"({n_padded / elapsed:.0f} padded tokens/s)")
    ratios = [b / a for a, b in zip(times["A"], times["B"])]
    med_a, med_b = statistics.median(times["A"]), statistics.median(times["B"])
    print(f"A plain loop     : median {med_a / args.steps:.3f} s/step, {n_padded / med_a:.0f} tokens/s")
    print(f"B openfedllm     : median {med_b / args.steps:.3f} s/step, {n_padded / med_b:.0f} tokens/s")
    print(f"time ratio B/A   : min {min(ratios):.3f}  median {statistics.median(ratios):.3f}  "
          f"max {max(ratios):.3f}   (throughput B/A = {med_a / med_b:.2f}x)")
    print(f"mean train loss  : A {statistics.mean(loss_a):.5f}  B {loss_b:.5f}")


if __name__ == "__main__":
    main()
