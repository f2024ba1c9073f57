"""What the real-size recipes need: memory per client, bytes on the wire and hours, estimated.

For each recipe in configs/paper and configs/flowertune: the peak memory of one client on a CUDA GPU
in bfloat16 (`openfedllm.memory.estimate`, the same estimate a run prints before it loads weights),
the adapter's size and the run's communication (clients per round x up and down x rounds x adapter
bytes, float32 as sent), and the compute time from a FLOPs model:

    time = rounds x clients per round x local steps x rows per step x max_length
           x (2N forward + 2N backward to the activations + 2N recomputed with gradient checkpointing)
           / (GPU peak x MFU)

N: the base model's parameters (frozen weights need no weight gradients); rows per step: batch size
(x2 for DPO, chosen and rejected, plus one reference forward per pair). Sequences are taken at
max_length, so hours are an upper bound for data whose rows are shorter. These are estimates, not
measurements: no GPU was used.

    python benchmarks/recipe_plan.py [--shapes tests/fixtures/models] [--mfu 0.3]
"""

from __future__ import annotations

import argparse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# model id -> folder (under --shapes) with its config.json; the DPO recipe's model is a Llama-7B
SHAPES = {
    "meta-llama/Llama-2-7b-hf": "llama-2-7b",
    "ehartford/Wizard-Vicuna-7B-Uncensored": "llama-2-7b",
    "mistralai/Mistral-7B-v0.3": "mistral-7b-v0.3",
}
GPUS = {"A100 (bf16 312 TFLOP/s)": 312e12, "RTX 3090 (fp16 71 TFLOP/s)": 71e12}


def plan(recipe: Path, shapes: Path, mfu: float) -> dict:
    import torch

    from openfedllm import config as cfg_mod
    from openfedllm import memory

    raw = cfg_mod.load_yaml(str(recipe))
    objective = raw.get("train", {}).get("objective", "sft")
    config = cfg_mod.build(cfg_mod.preset(objective, raw))
    folder = str(shapes / SHAPES[config.model.name])
    if config.model.dtype == "auto":
        config.model.dtype = "bfloat16"  # what auto is on a GPU that has it (Ampere or newer)
    estimate = memory.estimate(config, folder, torch.device("cuda", 0))
    params = sum(p.numel() for p in memory.meta_model(folder).parameters())
    f, t = config.fed, config.train
    adapter_bytes = estimate.trainable_parameters * 4
    rows = t.batch_size * t.grad_accum * (2 if objective == "dpo" else 1)
    tokens = f.rounds * f.clients_per_round * t.local_steps * rows * config.data.max_length
    flops = tokens * params * (6 if t.gradient_checkpointing else 4)
    if objective == "dpo":  # one reference forward per pair (both responses) used
        flops += tokens * params * 2
    return {
        "recipe": str(recipe.relative_to(ROOT)),
        "memory": estimate.describe(),
        "adapter": f"{estimate.trainable_parameters / 1e6:.1f} M parameters, {adapter_bytes / 1e6:.1f} MB",
        "communication": f"{2 * f.clients_per_round * f.rounds * adapter_bytes / 1e9:.1f} GB",
        "hours": {gpu: round(flops / (peak * mfu) / 3600, 1) for gpu, peak in GPUS.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=str(ROOT / "tests" / "fixtures" / "models"))
    parser.add_argument("--mfu", type=float, default=0.3, help="model FLOPs utilisation assumed")
    args = parser.parse_args()
    recipes = sorted((ROOT / "configs" / "paper").glob("*.yaml")) + sorted(
        (ROOT / "configs" / "flowertune").glob("*.yaml")
    )
    for recipe in recipes:
        p = plan(recipe, Path(args.shapes), args.mfu)
        hours = ", ".join(f"{h} h on {gpu}" for gpu, h in p["hours"].items())
        print(f"{p['recipe']}: {p['memory']}; adapter {p['adapter']}; communication {p['communication']}; {hours}")


if __name__ == "__main__":
    main()
