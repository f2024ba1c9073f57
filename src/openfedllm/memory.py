"""How much memory one client's training needs, estimated from the model's config before any weight loads.

peak ~ base weights (as stored: dtype, int8 or NF4) + trainable part (weights, gradients, optimizer
state, all float32) + activations of one forward/backward pass (`train.max_tokens_per_pass` tokens;
with `train.gradient_checkpointing` only each layer's input plus one layer's activations).

The model is built on torch's meta device from its config, so a 7B recipe is sized on a laptop
without its weights. The activation coefficients are counted, not guessed: `benchmarks/memory_model.py`
sums the bytes autograd saves for a pass (saved-tensor hooks) on SmolLM2-135M and compares.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from . import models
from .errors import UserError

GiB = 1024**3
# Bytes per weight of a quantized linear layer: NF4 is 4 bits plus one absmax per 64 weights, itself
# 8-bit with one float32 per 256 blocks (double quantization): 4 + 8/64 + 32/(64*256) bits.
_QUANTIZED_BYTES = {"4bit": (4 + 8 / 64 + 32 / (64 * 256)) / 8, "8bit": 1 + 4 / 4096}
# Activation elements autograd keeps per token and layer, in units of the hidden size h and the MLP
# width i (Llama-style block, SDPA attention, LoRA on the attention layers); see benchmarks/memory_model.py.
_PER_TOKEN_HIDDEN = 11
_PER_TOKEN_MLP = 4  # gate and up outputs, the activation, its product with up (down_proj's input)
_OPTIMIZER_STATES = {"adamw": 2, "sgd": 0}  # float32 tensors per trainable weight


@dataclass
class Estimate:
    weights: int  # bytes of the frozen (or full) base weights as stored
    trainable: int  # bytes of trainable weights, their gradients and optimizer state
    activations: int  # bytes autograd keeps during one forward/backward pass
    trainable_parameters: int

    @property
    def total(self) -> int:
        return self.weights + self.trainable + self.activations

    def describe(self) -> str:
        return (
            f"{self.total / GiB:.2f} GiB (weights {self.weights / GiB:.2f}, adapter + optimizer "
            f"{self.trainable / GiB:.2f}, activations {self.activations / GiB:.2f})"
        )


def meta_model(model_path: str):
    """The architecture with no weights (torch's meta device): shapes and names only."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(model_path)
    except (OSError, ValueError) as exc:
        raise UserError(f"model.name: cannot read the model config of {model_path}: {exc}") from None
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def estimate(config, model_path: str, device: torch.device) -> Estimate:
    """The peak memory of one client training with `config` (a RunConfig) on `device`."""
    from transformers.pytorch_utils import Conv1D

    model = meta_model(model_path)
    linear = (torch.nn.Linear, Conv1D)  # GPT-2's linear layers are Conv1D
    dtype_bytes = torch.finfo(getattr(torch, models.resolve_dtype(config.model.dtype, device))).bits // 8
    quantized = config.model.quantization
    head = model.get_output_embeddings()
    weights, seen = 0, set()
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if id(param) in seen:  # tied weights (input embedding = output layer) are stored once
                continue
            seen.add(id(param))
            if quantized != "none" and isinstance(module, linear) and module is not head:
                weights += int(param.numel() * _QUANTIZED_BYTES[quantized])
            else:  # peft's k-bit preparation keeps everything not quantized in float32
                weights += param.numel() * (4 if quantized != "none" else dtype_bytes)
    if config.model.finetune == "full":
        trainable = sum(p.numel() for p in model.parameters())
    else:
        targets = config.lora.target_modules or models.attention_modules(model)
        trainable = sum(
            config.lora.rank * sum(m.weight.shape)  # A: r x in, B: out x r
            for name, m in model.named_modules()
            if isinstance(m, linear) and any(name == t or name.endswith("." + t) for t in targets)
        )
    states = 2 + _OPTIMIZER_STATES.get(config.train.optimizer, 2)  # weight, gradient, optimizer state
    return Estimate(
        weights=weights,
        trainable=trainable * 4 * states,
        activations=_activations(model.config, config, dtype_bytes),
        trainable_parameters=trainable,
    )


def _activations(model_config, config, dtype_bytes: int) -> int:
    # transformers maps these names onto each family's own (GPT-2: n_embd, n_layer); GPT-2's MLP is 4h wide
    hidden = int(model_config.hidden_size)
    layers = int(model_config.num_hidden_layers)
    mlp = int(getattr(model_config, "intermediate_size", None) or getattr(model_config, "n_inner", None) or 4 * hidden)
    t = config.train
    tokens = t.max_tokens_per_pass or t.batch_size * config.data.max_length
    tokens = min(tokens, t.batch_size * config.data.max_length)  # a pass never holds more than a batch
    per_layer = tokens * (_PER_TOKEN_HIDDEN * hidden + _PER_TOKEN_MLP * mlp) * dtype_bytes
    if t.gradient_checkpointing:  # each layer's input is kept; one layer's activations live at a time
        kept = layers * tokens * hidden * dtype_bytes + per_layer
    else:
        kept = layers * per_layer
    # The output layer: the loss keeps a (tokens x hidden) gradient, and one 256-token chunk of logits
    # and their softmax exist at a time (transient, but part of the peak).
    return kept + tokens * hidden * 4 + 256 * model_config.vocab_size * 4 * 2


def available(device: torch.device) -> int | None:
    """Bytes the device can hold: a GPU's total memory, the CPU's available RAM; None when unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[1]
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                fields = dict(line.split(":", 1) for line in f)
            return int(fields["MemAvailable"].split()[0]) * 1024
        except (OSError, KeyError, ValueError):
            return None
    return None  # MPS shares the system's memory; macOS does not say how much it may take


def check(config, model_path: str, device: torch.device) -> Estimate:
    """Print the estimate; refuse with one line when it cannot fit on the device."""
    found = estimate(config, model_path, device)
    room = available(device)
    where = f"{device}" + (f", {room / GiB:.1f} GiB there" if room is not None else "")
    print(f"Memory per client (estimate): {found.describe()} on {where}", flush=True)
    if room is not None and found.total > room and not os.environ.get("OPENFEDLLM_SKIP_MEMORY_CHECK"):
        raise UserError(
            f"model: one client needs about {found.total / GiB:.1f} GiB but {device} has {room / GiB:.1f} GiB; "
            "try model.quantization: 4bit, train.gradient_checkpointing: true or a smaller "
            "train.max_tokens_per_pass (OPENFEDLLM_SKIP_MEMORY_CHECK=1 tries anyway)"
        )
    return found
