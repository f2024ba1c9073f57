"""How many activation bytes a training pass keeps, counted, against `openfedllm.memory`'s estimate.

Autograd's saved-tensor hooks see every tensor kept for the backward pass; their bytes (each
storage once) are what a pass holds beyond the weights. Counted for one forward/backward of
`train.max_tokens_per_pass` tokens of the built-in suite's rows on SmolLM2-135M-Instruct (the default
job's client: LoRA r8 on the attention layers, packing), with and without gradient checkpointing,
and printed next to the estimate. The coefficients in memory.py (_PER_TOKEN_HIDDEN, _PER_TOKEN_MLP)
come from this count.

    python benchmarks/memory_model.py [--model smollm2-135m-instruct] [--tokens 640]
"""

from __future__ import annotations

import argparse


def saved_bytes(model, batch) -> int:
    """Bytes of the distinct storages autograd saves during one forward (and frees in backward)."""
    import torch

    from openfedllm.batching import token_losses

    storages: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = token_losses(model, batch)
    loss.backward()
    return sum(n for ptr, n in storages.items() if ptr not in params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--tokens", type=int, default=640, help="train.max_tokens_per_pass")
    args = parser.parse_args()
    import torch

    from openfedllm import memory, models
    from openfedllm.batching import make_batch, split_passes
    from openfedllm.config import RunConfig
    from openfedllm.data.suite import train_and_heldout
    from openfedllm.data.templates import tokenize

    path = models.resolve_model(args.model)
    tokenizer = models.load_tokenizer(path)
    train, _ = train_and_heldout(40, 1, seed=0)
    rows = [r for r in (tokenize(e, "chat", tokenizer, 256) for e in train) if r]
    batch = split_passes(make_batch(rows[:64], tokenizer.pad_token_id, True), args.tokens)[0]
    tokens = batch["input_ids"].numel()
    for checkpointing in (False, True):
        config = RunConfig()
        config.model.name, config.model.device = args.model, "cpu"
        config.train.max_tokens_per_pass, config.train.gradient_checkpointing = tokens, checkpointing
        torch.manual_seed(0)
        model = models.add_lora(models.load_base_model(path, gradient_checkpointing=checkpointing), 8, 16, 0.05, [])
        model.train()
        counted = saved_bytes(model, batch)
        estimated = memory.estimate(config, path, torch.device("cpu")).activations
        print(
            f"gradient_checkpointing={checkpointing}: {tokens} tokens in the pass; saved by autograd "
            f"{counted / 2**20:.1f} MiB; estimated {estimated / 2**20:.1f} MiB ({estimated / counted:.2f}x)"
        )


if __name__ == "__main__":
    main()
