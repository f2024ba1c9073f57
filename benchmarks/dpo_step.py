"""A client's DPO step: openfedllm's vs a plain PyTorch + peft loop computing the same loss.

The job is the default `openfedllm dpo` client: SmolLM2-135M-Instruct, LoRA r=8 alpha=16 dropout
0.05 on q/k/v/o, the built-in preference pairs (chat template), 4 pairs per step, sigmoid DPO
with beta 0.1, AdamW, gradient clipping 1.0, fp32.

  A  the plain loop a careful user writes: chosen and rejected rows right-padded into one batch,
     `model(...).logits` at every position, per-row log-probs by log_softmax + gather, and the
     reference log-probs by a no-grad forward of the same batch with the adapter disabled,
     every step (no second model in memory);
  B  `openfedllm.client.train_local` with `DPOLoss`: reference log-probs computed once per pair
     before the steps (`compute_reference`, timed and counted here), packed rows, log-probs
     from the hidden states at response positions only.

Both take the same steps on the same pairs from the same initial adapter; each runs in its own
process (its own peak RSS), A/B/A/B interleaved so machine drift hits both, torch threads
pinned. Printed: seconds per step, pairs per second (B counted with and without its one-off
reference pass over exactly the pairs its steps use), peak memory, both loss trajectories.

    python benchmarks/dpo_step.py [--steps 12] [--repeats 2] [--threads 2] [--pairs-per-domain 40]
"""

from __future__ import annotations

import argparse
import statistics
import time

from worker import add_worker_arguments, answer_as_worker, run_worker  # benchmarks/ is first on sys.path


def job(args):
    """The model with a fresh adapter, the training pairs, and the step order (the same for A and B)."""
    import torch

    from openfedllm import models
    from openfedllm.client import batch_order
    from openfedllm.config import DPO_DEFAULTS, build
    from openfedllm.data.preference import tokenize_pair
    from openfedllm.data.preference_suite import builtin_preferences

    cfg = build(DPO_DEFAULTS)
    path = models.resolve_model(args.model)
    tokenizer = models.load_tokenizer(path)
    train, _, _ = builtin_preferences(args.pairs_per_domain, 1, seed=0)
    pairs = [
        r
        for r in (tokenize_pair(p, "chat", tokenizer, cfg.data.max_length, cfg.dpo.max_prompt_length) for p in train)
        if r
    ]
    torch.manual_seed(0)
    model = models.add_lora(
        models.load_base_model(path), cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules
    )
    order = batch_order(len(pairs), args.steps, cfg.train.batch_size, seed=1)
    return cfg, tokenizer, model, pairs, order


def plain_logps(model, batch, labels):
    """Per-row sums of the response tokens' log-probabilities, from full logits."""
    import torch

    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    targets = labels[:, 1:]
    mask = targets != -100
    logp = torch.log_softmax(logits.float(), dim=-1).gather(2, targets.clamp(min=0)[..., None])[..., 0]
    return (logp * mask).sum(-1)


def worker(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from openfedllm.batching import collate
    from openfedllm.client import LocalSteps, train_local
    from openfedllm.dpo import DPOLoss, compute_reference, preference_loss

    cfg, tokenizer, model, pairs, order = job(args)
    pad, beta = tokenizer.pad_token_id, cfg.dpo.beta
    if args.worker == "A":
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=0.0)
        torch.manual_seed(1)
        model.train()
        losses, times = [], []
        for idx in order:
            start = time.perf_counter()
            chunk = [pairs[i] for i in idx]
            n = len(chunk)
            batch = collate([p.chosen for p in chunk] + [p.rejected for p in chunk], pad)
            logps = plain_logps(model, batch, batch["labels"])
            with torch.no_grad(), model.disable_adapter():
                ref = plain_logps(model, batch, batch["labels"])
            loss = preference_loss(logps[:n], logps[n:], ref[:n], ref[n:], beta, "sigmoid")[0].mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
            losses.append(float(loss.detach()))
        return {"step_seconds": sum(times), "reference_seconds": 0.0, "losses": losses}
    used = sorted({i for idx in order for i in idx})  # the pairs B's steps touch: their reference, once
    start = time.perf_counter()
    compute_reference(
        model, [pairs[i] for i in used], pad, cfg.eval.batch_size, cfg.train.packing, adapter_disabled=True
    )
    reference_seconds = time.perf_counter() - start
    result = train_local(
        model,
        pairs,
        LocalSteps(
            steps=args.steps,
            batch_size=cfg.train.batch_size,
            lr=cfg.train.lr,
            seed=1,
            pad_id=pad,
            max_grad_norm=cfg.train.max_grad_norm,
            max_tokens_per_pass=cfg.train.max_tokens_per_pass,
        ),
        objective=DPOLoss(beta, "sigmoid"),
    )
    return {"step_seconds": result.seconds, "reference_seconds": reference_seconds, "losses": result.losses}


def run_variant(args, variant: str) -> dict:
    return run_worker(
        __file__,
        variant,
        [
            "--steps",
            str(args.steps),
            "--threads",
            str(args.threads),
            "--model",
            args.model,
            "--pairs-per-domain",
            str(args.pairs_per_domain),
        ],
        args.threads,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12, help="DPO steps per run (the default job: 12 per client)")
    parser.add_argument("--repeats", type=int, default=2, help="A/B pairs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--pairs-per-domain", type=int, default=40)
    add_worker_arguments(parser, ["A", "B"])
    args = parser.parse_args()
    if answer_as_worker(args, worker):
        return
    print(f"job: {args.steps} DPO steps of 4 pairs, model {args.model}, torch threads {args.threads}")
    results = {"A": [], "B": []}
    for rep in range(args.repeats):
        for variant in "AB":
            res = run_variant(args, variant)
            results[variant].append(res)
            print(
                f"  pair {rep + 1} {variant}: {res['step_seconds'] / args.steps:.3f} s/step, reference pass "
                f"{res['reference_seconds']:.1f} s, peak {res['peak_gib']:.2f} GiB",
                flush=True,
            )
    pairs = 4 * args.steps
    a = statistics.median(r["step_seconds"] for r in results["A"])
    b = statistics.median(r["step_seconds"] for r in results["B"])
    b_all = statistics.median(r["step_seconds"] + r["reference_seconds"] for r in results["B"])
    print(
        f"A plain loop:  {pairs / a:.2f} pairs/s ({a / args.steps:.3f} s/step), "
        f"peak {statistics.median(r['peak_gib'] for r in results['A']):.2f} GiB"
    )
    print(
        f"B openfedllm:  {pairs / b:.2f} pairs/s in the steps, {pairs / b_all:.2f} pairs/s counting the "
        f"reference pass, peak {statistics.median(r['peak_gib'] for r in results['B']):.2f} GiB"
    )
    print(f"throughput B/A: {a / b:.2f}x (steps only), {a / b_all:.2f}x (with the reference pass)")
    print("losses A:", " ".join(f"{x:.3f}" for x in results["A"][0]["losses"]))
    print("losses B:", " ".join(f"{x:.3f}" for x in results["B"][0]["losses"]))


if __name__ == "__main__":
    main()
