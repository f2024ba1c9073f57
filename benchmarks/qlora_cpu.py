"""QLoRA on the CPU: a client's step time and peak memory with the base weights in float32, int8 and NF4.

The default job's client: SmolLM2-135M-Instruct, LoRA r8 on the attention layers, the built-in
suite's rows (chat template, max_length 256), batch 8, AdamW. Each variant runs in its own process
(its own peak RSS, read by wait4), variants interleaved over the repeats so machine drift hits all,
torch threads pinned. Printed per variant: base weight bytes as stored, seconds per local step
(median over repeats of the mean of --steps steps after one warm-up step), peak RSS (reached while
transformers loads the float32 checkpoint, before quantizing), RSS after training, first and last loss.

    python benchmarks/qlora_cpu.py [--steps 6] [--repeats 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics

from worker import add_worker_arguments, answer_as_worker, run_worker  # benchmarks/ is first on sys.path

VARIANTS = ["none", "8bit", "4bit"]


def work(args) -> dict:
    import gc
    import time

    import torch

    from openfedllm import models
    from openfedllm.client import LocalSteps, train_local
    from openfedllm.data.suite import train_and_heldout
    from openfedllm.data.templates import tokenize

    torch.set_num_threads(args.threads)
    path = models.resolve_model("smollm2-135m-instruct")
    tokenizer = models.load_tokenizer(path)
    train, _ = train_and_heldout(40, 1, seed=0)
    rows = [r for r in (tokenize(e, "chat", tokenizer, 256) for e in train) if r]
    torch.manual_seed(0)
    base = models.load_base_model(path, quantization=args.worker)
    stored = sum(p.numel() * p.element_size() for p in base.parameters())
    model = models.add_lora(base, 8, 16, 0.05, [])

    def steps(n, seed):
        return train_local(
            model, rows, LocalSteps(steps=n, batch_size=8, lr=1e-3, seed=seed, pad_id=tokenizer.pad_token_id)
        )

    steps(1, 0)  # warm-up: first-call allocations, bitsandbytes' kernel selection
    start = time.perf_counter()
    result = steps(args.steps, 1)
    seconds = time.perf_counter() - start
    gc.collect()
    with open("/proc/self/status") as f:  # resident memory now, after the load's transient peak
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
    return {
        "rss_after_mib": rss,
        "seconds_per_step": seconds / args.steps,
        "weights_mib": stored / 2**20,
        "losses": [result.losses[0], result.losses[-1]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    add_worker_arguments(parser, VARIANTS)
    args = parser.parse_args()
    if answer_as_worker(args, work):
        return
    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for _ in range(args.repeats):
        for variant in VARIANTS:
            results[variant].append(
                run_worker(
                    __file__, variant, ["--steps", str(args.steps), "--threads", str(args.threads)], args.threads
                )
            )
    base = statistics.median(r["seconds_per_step"] for r in results["none"])
    for variant, runs in results.items():
        step = statistics.median(r["seconds_per_step"] for r in runs)
        print(
            f"{variant:>5}: base weights {runs[0]['weights_mib']:.0f} MiB, {step:.2f} s/step ({step / base:.2f}x), "
            f"peak RSS {max(r['peak_gib'] for r in runs):.2f} GiB, RSS after training "
            f"{statistics.median(r['rss_after_mib'] for r in runs) / 1024:.2f} GiB, loss {runs[0]['losses'][0]:.3f} -> "
            f"{runs[0]['losses'][1]:.3f}"
        )


if __name__ == "__main__":
    main()
