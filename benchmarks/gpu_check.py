"""One short federated round of a 7B-class model on a CUDA GPU, in 4-bit (QLoRA) and in bf16.

For each precision: the model is loaded through openfedllm's own path (`models.load_base_model`, the
run's device and dtype rules, gradient checkpointing), gets a LoRA adapter (r16 on the attention
layers), and two clients each take --steps local steps (`client.train_local`, AdamW, batch
--batch rows of --length tokens, loss on the second half of each row) from the same global adapter;
the server averages them (FedAvg). Printed per precision: tokens/s of local training, model FLOPs
utilisation (6N FLOPs per token: forward, backward to the activations and the recomputation of
gradient checkpointing, over the GPU's dense bf16 peak) and peak GPU memory per client
(torch.cuda.max_memory_allocated, reset per client).

    python benchmarks/gpu_check.py [--model meta-llama/Llama-2-7b-hf | /path/to/folder] [--steps 5]

On a machine without a CUDA GPU it says so in one line and exits 0.
"""

from __future__ import annotations

import argparse
import sys
import time

# dense bf16 peak FLOP/s by device name; --peak-tflops for any other GPU
PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "4090": 165e12, "3090": 71e12}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="meta-llama/Llama-2-7b-hf", help="hub id or local folder")
    parser.add_argument("--steps", type=int, default=5, help="local steps per client")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, if not in the table")
    parser.add_argument("--precisions", default="4bit,bf16")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print(f"gpu_check: no CUDA GPU here (torch {torch.__version__}); nothing to check")
        return 0
    from openfedllm import models
    from openfedllm.algorithms import FedAvg
    from openfedllm.algorithms.base import ClientUpdate
    from openfedllm.client import LocalSteps, train_local
    from openfedllm.data.templates import IGNORE, Tokenized

    device = torch.device("cuda", 0)
    name = torch.cuda.get_device_name(device)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else next((v for k, v in PEAKS.items() if k in name), None)
    path = models.resolve_model(args.model)
    print(
        f"{name}, torch {torch.__version__}, model {args.model}, "
        f"{args.steps} steps x {args.batch} x {args.length} tokens per client"
    )
    generator = torch.Generator().manual_seed(0)
    half = args.length // 2
    for precision in args.precisions.split(","):
        quantization = "4bit" if precision == "4bit" else "none"
        torch.cuda.reset_peak_memory_stats(device)
        base = models.load_base_model(path, "auto", quantization, device, gradient_checkpointing=True)
        vocab = base.config.vocab_size
        params = sum(p.numel() for p in base.parameters())  # packed 4-bit weights count half: use bf16's
        if quantization != "none":
            params = sum(p.numel() * (2 if p.dtype == torch.uint8 else 1) for p in base.parameters())
        torch.manual_seed(0)
        model = models.add_lora(base, 16, 32, 0.05, [])
        global_state = models.trainable_state(model)
        updates, seconds, peaks = [], 0.0, []
        for client in range(2):
            ids = torch.randint(3, vocab, (args.batch * 2, args.length), generator=generator).tolist()
            rows = [Tokenized(r, [IGNORE] * half + r[half:], half) for r in ids]
            models.load_trainable_state(model, global_state)
            torch.cuda.reset_peak_memory_stats(device)
            torch.cuda.synchronize(device)
            start = time.perf_counter()
            train_local(
                model,
                rows,
                LocalSteps(
                    steps=args.steps, batch_size=args.batch, lr=1e-4, seed=client, pad_id=0, max_tokens_per_pass=0
                ),
            )
            torch.cuda.synchronize(device)
            seconds += time.perf_counter() - start
            peaks.append(torch.cuda.max_memory_allocated(device))
            updates.append(ClientUpdate(client, models.trainable_state(model), args.steps * args.batch))
        FedAvg().aggregate(global_state, updates)
        tokens = 2 * args.steps * args.batch * args.length
        mfu = f"{tokens * 6 * params / seconds / peak:.1%}" if peak else "n/a (give --peak-tflops)"
        print(
            f"{precision:>5}: {tokens / seconds:,.0f} tokens/s, MFU {mfu}, "
            f"peak GPU memory per client {max(peaks) / 2**30:.1f} GiB ({params / 1e9:.2f} B parameters)"
        )
        del model, base
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
