"""Federated round speed: openfedllm's local training vs a plain PyTorch + peft loop.

The job shape of the reference measurement (issue 8): SmolLM2-135M-Instruct, Alpaca-format rows
(alpaca template, max length 256, so most batches reach the cap), FedAvg, 4 iid clients with 2
sampled per round, 5 local steps of batch 4, LoRA r=8 alpha=16 dropout 0.05 on q_proj/v_proj,
AdamW lr 5e-5 with a cosine across rounds, fp32, gradient clipping 1.0.

  A  the stand-in for the reference: a plain loop, `model(**batch).loss` (full-vocabulary
     logits at every position), padding to the longest row of the batch, and
     --reference gc:    gradient checkpointing on, as the reference runs by default;
     --reference plain: no gradient checkpointing (the loop a careful user writes by hand).
  B  `openfedllm.client.train_local` with openfedllm's defaults.
  C  (with --bf16) B on a bfloat16 base model (`model.dtype: bfloat16`), the adapter in float32: a
     different number format, so its losses are compared, not expected to be equal. Pays on CPUs
     with AMX / AVX512-BF16 (torch then runs bf16 matrix multiplies through oneDNN).
  D  (with --backward-bf16) B with `train.backward_precision: bfloat16`: the backward pass's
     products through frozen weights from bfloat16-rounded inputs, everything else float32. D
     draws the same dropout masks as B, so |B - D| is the precision's own effect on the losses.

Both run the same steps on the same batches from the same initial adapter. Each run is its own
process (so its peak RSS is its own), A/B/A/B interleaved so that machine drift hits both, torch
threads pinned. Printed: time per step, padded tokens/s, peak memory, the time ratio B/A with
min/median/max over the pairs, and both loss trajectories (a faster step that learns differently
does not count).

    python benchmarks/round_speed.py [--data ALPACA.json] [--rounds 3] [--repeats 3]
                                     [--reference gc|plain] [--threads 2] [--bf16] [--backward-bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from worker import add_worker_arguments, answer_as_worker, run_worker  # benchmarks/ is first on sys.path

HERE = Path(__file__).resolve().parent


def job_data(args, tokenizer):
    """The job's tokenized rows and their iid split over 4 clients (the same for A and B)."""
    from openfedllm.data.alpaca import load_alpaca
    from openfedllm.data.templates import tokenize
    from openfedllm.partition import partition

    rows = [r for r in (tokenize(e, "alpaca", tokenizer, args.max_length) for e in load_alpaca(args.data)) if r]
    return rows, partition(["x"] * len(rows), 4, "iid", seed=0)


def worker(args) -> dict:
    """One whole run (all rounds) of variant A or B; returns its per-step figures."""
    import torch

    torch.set_num_threads(args.threads)
    from openfedllm import models
    from openfedllm.algorithms import ClientUpdate, FedAvg
    from openfedllm.batching import collate
    from openfedllm.client import LocalSteps, batch_order, cosine_lr, train_local
    from openfedllm.config import TrainConfig
    from openfedllm.rounds import derive_seed, sample_clients

    path = models.resolve_model(args.model)
    tokenizer = models.load_tokenizer(path)
    model = models.load_base_model(path, dtype="bfloat16" if args.worker == "C" else "float32")
    torch.manual_seed(0)
    if args.worker == "A":  # peft as a plain loop uses it: its own nn.Dropout on the LoRA input
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=8,
            lora_alpha=16,
            lora_dropout=0.05,
            target_modules=["q_proj", "v_proj"],
            bias="none",
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    else:  # the same initial adapter (same seed, same shapes), with openfedllm's SkipDropout
        model = models.add_lora(model, 8, 16, 0.05, ["q_proj", "v_proj"])
    if args.worker == "D":
        from openfedllm.backward_precision import use_bf16_backward

        use_bf16_backward(model)
    rows, clients = job_data(args, tokenizer)
    pad = tokenizer.pad_token_id
    defaults = TrainConfig()

    if args.worker == "A" and args.reference == "gc":
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()  # what peft/trl do so checkpointed blocks get gradients

    def plain_steps(client_rows, lr, seed):
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        torch.manual_seed(seed)
        model.train()
        losses, times = [], []
        for idx in batch_order(len(client_rows), args.local_steps, args.batch_size, seed):
            start = time.perf_counter()
            loss = model(**collate([client_rows[i] for i in idx], pad)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
            losses.append(float(loss.detach()))
        return losses, times

    state = models.trainable_state(model)
    algorithm = FedAvg()
    step_times, losses, padded, loss_tokens = [], [], 0, 0
    for r in range(args.rounds):
        lr = cosine_lr(r, args.rounds, args.lr, 1e-6)
        updates = []
        for cid in sample_clients(0, "federated", r, 4, 2):
            client_rows = [rows[i] for i in clients[cid]]
            seed = derive_seed(0, "federated", r, cid)
            for idx in batch_order(len(client_rows), args.local_steps, args.batch_size, seed):
                padded += len(idx) * max(len(client_rows[i].input_ids) for i in idx)
                loss_tokens += sum(sum(t != -100 for t in client_rows[i].labels[1:]) for i in idx)
            models.load_trainable_state(model, state)
            if args.worker == "A":  # B, C and D: train_local
                step_losses, times = plain_steps(client_rows, lr, seed)
            else:
                result = train_local(
                    model,
                    client_rows,
                    LocalSteps(
                        steps=args.local_steps,
                        batch_size=args.batch_size,
                        lr=lr,
                        seed=seed,
                        pad_id=pad,
                        weight_decay=defaults.weight_decay,
                        max_grad_norm=defaults.max_grad_norm,
                    ),
                )
                step_losses, times = result.losses, [result.seconds / result.steps] * result.steps
            losses += step_losses
            step_times += times
            updates.append(ClientUpdate(cid, models.trainable_state(model), len(client_rows)))
        state = algorithm.aggregate(state, updates)
    return {"step_times": step_times, "losses": losses, "padded_tokens": padded, "loss_tokens": loss_tokens}


def run_variant(args, variant: str) -> dict:
    """Run one variant in a fresh process; its peak RSS comes from the kernel (wait4)."""
    return run_worker(
        __file__,
        variant,
        [
            "--data",
            args.data,
            "--rounds",
            str(args.rounds),
            "--reference",
            args.reference,
            "--threads",
            str(args.threads),
            "--model",
            args.model,
            "--local-steps",
            str(args.local_steps),
            "--batch-size",
            str(args.batch_size),
            "--max-length",
            str(args.max_length),
            "--lr",
            str(args.lr),
        ],
        args.threads,
    )


def batch_stats(args) -> str:
    """How the job's batches look: share reaching the length cap, share of tokens carrying loss."""
    from openfedllm import models
    from openfedllm.client import batch_order
    from openfedllm.rounds import derive_seed, sample_clients

    rows, clients = job_data(args, models.load_tokenizer(models.resolve_model(args.model)))
    capped = total = 0
    for r in range(args.rounds):
        for cid in sample_clients(0, "federated", r, 4, 2):
            client_rows = [rows[i] for i in clients[cid]]
            for idx in batch_order(
                len(client_rows), args.local_steps, args.batch_size, derive_seed(0, "federated", r, cid)
            ):
                total += 1
                capped += max(len(client_rows[i].input_ids) for i in idx) >= args.max_length
    return f"{capped} of {total} batches reach the {args.max_length}-token cap"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="Alpaca-format JSON/JSONL (default: benchmarks/alpaca_like.py output)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="A/B pairs")
    parser.add_argument("--reference", choices=["gc", "plain"], default="gc")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--local-steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--bf16", action="store_true", help="also run C: B on a bfloat16 base model")
    parser.add_argument("--backward-bf16", action="store_true", help="also run D: B with bfloat16 backward products")
    add_worker_arguments(parser, ["A", "B", "C", "D"])
    args = parser.parse_args()
    if answer_as_worker(args, worker):
        return
    tmp = None
    if not args.data:
        sys.path.insert(0, str(HERE))
        from alpaca_like import rows

        tmp = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)
        json.dump(rows(999, 0), tmp)
        tmp.close()
        args.data = tmp.name
    print(
        f"job: {args.rounds} rounds x 2 of 4 clients x {args.local_steps} steps, batch {args.batch_size}, "
        f"max length {args.max_length}, data {args.data}; torch threads {args.threads}; "
        f"reference A = plain loop {'with' if args.reference == 'gc' else 'without'} gradient checkpointing"
    )
    print(batch_stats(args))
    variants = "AB" + ("C" if args.bf16 else "") + ("D" if args.backward_bf16 else "")
    results: dict[str, list] = {v: [] for v in variants}
    for rep in range(args.repeats):
        for variant in variants:
            res = run_variant(args, variant)
            results[variant].append(res)
            total = sum(res["step_times"])
            print(
                f"  pair {rep + 1} {variant}: {total / len(res['step_times']):.3f} s/step, "
                f"{res['padded_tokens'] / total:.0f} padded tokens/s, peak {res['peak_gib']:.2f} GiB",
                flush=True,
            )
    first = results["A"][0]
    print(f"tokens: {first['padded_tokens']} padded, {first['loss_tokens'] / first['padded_tokens']:.0%} carry loss")
    for variant in variants:
        per_step = [sum(r["step_times"]) / len(r["step_times"]) for r in results[variant]]
        tps = [r["padded_tokens"] / sum(r["step_times"]) for r in results[variant]]
        print(
            f"{variant}: median {statistics.median(per_step):.3f} s/step, {statistics.median(tps):.0f} padded "
            f"tokens/s, peak {max(r['peak_gib'] for r in results[variant]):.2f} GiB"
        )
    loss_a = results["A"][0]["losses"]
    print("loss per step A: " + " ".join(f"{x:.4f}" for x in loss_a))
    for variant in variants[1:]:
        ratios = [sum(v["step_times"]) / sum(a["step_times"]) for a, v in zip(results["A"], results[variant])]
        print(
            f"time ratio {variant}/A: min {min(ratios):.3f}  median {statistics.median(ratios):.3f}  "
            f"max {max(ratios):.3f}"
        )
        losses = results[variant][0]["losses"]
        print(f"loss per step {variant}: " + " ".join(f"{x:.4f}" for x in losses))
        gap = max(abs(a - b) for a, b in zip(loss_a, losses))
        print(f"largest per-step loss difference |A - {variant}|: {gap:.2e}")
    if "D" in variants:  # the same masks: the precision's own effect
        gap = max(abs(b - d) for b, d in zip(results["B"][0]["losses"], results["D"][0]["losses"]))
        print(f"largest per-step loss difference |B - D|: {gap:.2e}")
    if tmp:
        os.unlink(tmp.name)


if __name__ == "__main__":
    main()
