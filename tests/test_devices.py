"""The accelerator path as far as a CPU can check it: device names and their errors, the dtype rules,
float16 training with a loss scaler, gradient checkpointing, the memory estimate, and LoRA targets
and training across model families (tiny random Llama, Qwen2, Mistral, Phi-3 and GPT-2 built offline).
Tests that need a CUDA GPU are marked and skip with their reason here."""

import pytest
import torch

from openfedllm import memory, models
from openfedllm.cli import main
from openfedllm.client import LocalSteps, train_local
from openfedllm.config import RunConfig
from openfedllm.data.templates import IGNORE, Tokenized
from openfedllm.errors import UserError

from .conftest import tiny_run_args

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
ROWS = [Tokenized(list(range(5, 45)), [IGNORE] * 12 + list(range(17, 45)), 12) for _ in range(8)]


def test_auto_and_cpu_resolve_to_a_device_that_exists():
    assert models.resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert models.resolve_device("auto").type == expected


@no_cuda
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "cuda:3"])
def test_an_absent_cuda_device_is_one_line_naming_what_torch_sees(name):
    with pytest.raises(UserError) as err:
        models.resolve_device(name)
    assert str(err.value).startswith(f"model.device: {name} was asked for") and "\n" not in str(err.value)
    assert torch.__version__ in str(err.value)


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "cuda:", "cpu:0", "CUDA"])
def test_a_malformed_device_lists_the_forms(name):
    with pytest.raises(UserError, match="model.device: unknown value .* auto, cpu, cuda, cuda:N or mps"):
        models.parse_device(name)


@no_cuda
def test_the_cli_refuses_an_absent_device_before_writing_anything(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(tiny_run_args(tiny_model_dir, out, "--model.device", "cuda:1")) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("openfedllm sft: error: model.device: cuda:1 was asked for") and "\n" not in err
    assert not out.exists()


def test_dtype_auto_is_float32_on_the_cpu_and_half_precision_on_a_gpu(monkeypatch):
    assert models.resolve_dtype("auto", torch.device("cpu")) == "float32"
    assert models.resolve_dtype("auto", torch.device("mps")) == "float32"
    assert models.resolve_dtype("bfloat16", torch.device("cpu")) == "bfloat16"  # asked for: kept
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert models.resolve_dtype("auto", torch.device("cuda", 0)) == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # e.g. a V100 or T4
    assert models.resolve_dtype("auto", torch.device("cuda", 0)) == "float16"
    assert models.resolve_dtype("float32", torch.device("cuda", 0)) == "float32"


def _lora(path, dtype="float32", checkpointing=False, dropout=0.1):
    torch.manual_seed(0)
    base = models.load_base_model(str(path), dtype, gradient_checkpointing=checkpointing)
    return models.add_lora(base, 4, 8, dropout, [])


def _steps(model, steps=3):
    return train_local(model, ROWS, LocalSteps(steps=steps, batch_size=4, lr=1e-3, seed=1, pad_id=0))


def test_float16_trains_float32_adapters_with_a_loss_scaler(tiny_model_dir, monkeypatch):
    scaled = []
    original = torch.amp.GradScaler.scale
    monkeypatch.setattr(torch.amp.GradScaler, "scale", lambda self, x: scaled.append(1) or original(self, x))
    half = _lora(tiny_model_dir, "float16", dropout=0.0)
    assert {p.dtype for p in half.parameters() if p.requires_grad} == {torch.float32}
    assert {p.dtype for p in half.parameters() if not p.requires_grad} == {torch.float16}
    result = _steps(half)
    assert scaled, "the float16 model's backward passes did not go through the loss scaler"
    full = _steps(_lora(tiny_model_dir, "float32", dropout=0.0))
    # the same steps in half precision: losses agree to half precision's resolution
    assert result.losses == pytest.approx(full.losses, rel=2e-3)
    adapter = models.trainable_state(half)
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in adapter.values())


def test_float32_and_bfloat16_use_no_loss_scaler(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(torch.amp.GradScaler, "scale", lambda self, x: pytest.fail("scaler used"))
    _steps(_lora(tiny_model_dir, "bfloat16"), steps=1)
    _steps(_lora(tiny_model_dir, "float32"), steps=1)


def test_full_finetuning_in_float16_is_refused_in_one_line(tiny_model_dir):
    model = models.load_base_model(str(tiny_model_dir), "float16")
    with pytest.raises(UserError, match="model.dtype: float16 weights cannot be trained directly"):
        _steps(model, steps=1)


def test_gradient_checkpointing_gives_the_same_adapter(tiny_model_dir):
    plain, checkpointed = _lora(tiny_model_dir), _lora(tiny_model_dir, checkpointing=True)
    assert checkpointed.get_base_model().model.gradient_checkpointing
    assert not plain.get_base_model().model.gradient_checkpointing
    a, b = _steps(plain), _steps(checkpointed)  # LoRA dropout on: the replayed RNG gives the same masks
    assert a.losses == pytest.approx(b.losses, rel=1e-5)
    sa, sb = models.trainable_state(plain), models.trainable_state(checkpointed)
    assert all(torch.allclose(sa[k], sb[k], atol=1e-6) for k in sa)


def test_the_run_config_turns_gradient_checkpointing_on(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    assert main(tiny_run_args(tiny_model_dir, out, "--train.gradient_checkpointing", "true", "--fed.rounds", "1")) == 0
    assert "gradient_checkpointing: true" in (out / "config.yaml").read_text()


def _config(path, **train):
    config = RunConfig()
    config.model.name = str(path)
    for key, value in train.items():
        setattr(config.train, key, value)
    return config


@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_the_estimate_counts_the_weights_and_adapter_the_model_has(tiny_model_dir, quantization):
    config = _config(tiny_model_dir)
    config.model.quantization = quantization
    found = memory.estimate(config, str(tiny_model_dir), torch.device("cpu"))
    model = models.add_lora(models.load_base_model(str(tiny_model_dir), quantization=quantization), 8, 16, 0.0, [])
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert found.trainable_parameters == trainable
    assert found.trainable == trainable * 4 * 4  # float32 weight, gradient, AdamW's two moments
    stored = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad) + sum(
        b.numel() * b.element_size() for b in model.buffers() if b.dtype.is_floating_point
    )
    if quantization == "none":
        assert found.weights == stored - sum(b.numel() * 4 for b in model.buffers() if b.dtype.is_floating_point)
    else:  # bitsandbytes keeps packed weights plus absmax constants; ours counts the same bits per weight
        assert 0.9 < found.weights / stored < 1.1


def test_checkpointing_and_a_smaller_pass_shrink_the_activation_estimate(tiny_model_dir):
    cpu = torch.device("cpu")
    base = memory.estimate(_config(tiny_model_dir), str(tiny_model_dir), cpu).activations
    checkpointed = memory.estimate(_config(tiny_model_dir, gradient_checkpointing=True), str(tiny_model_dir), cpu)
    smaller = memory.estimate(_config(tiny_model_dir, max_tokens_per_pass=320), str(tiny_model_dir), cpu)
    assert checkpointed.activations < base and smaller.activations < base


def test_a_client_that_cannot_fit_fails_before_the_weights_load(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(memory, "available", lambda device: 1024**2)  # a 1 MiB device
    loaded = []
    monkeypatch.setattr(models, "load_base_model", lambda *a, **k: loaded.append(1))
    out = tmp_path / "run"
    assert main(tiny_run_args(tiny_model_dir, out)) != 0
    err = capsys.readouterr().err.strip()
    assert "one client needs about" in err and "has 0.0 GiB" in err and "model.quantization: 4bit" in err
    assert not loaded and not out.exists()


# --- model families -------------------------------------------------------------------------------

FAMILIES = {
    "llama": ["k_proj", "o_proj", "q_proj", "v_proj"],
    "qwen2": ["k_proj", "o_proj", "q_proj", "v_proj"],
    "mistral": ["k_proj", "o_proj", "q_proj", "v_proj"],
    "phi3": ["o_proj", "qkv_proj"],
    "gpt2": ["attn.c_proj", "c_attn"],  # c_proj qualified: GPT-2's MLP has a c_proj too
}


@pytest.fixture(scope="module")
def family_dirs(tiny_model_dir, tmp_path_factory):
    """Tiny random models of each family, with the test tokenizer, saved as ordinary folders."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)  # the special ids for the configs
    shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    special = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    dirs = {}
    for family in FAMILIES:
        if family == "gpt2":
            config = AutoConfig.for_model("gpt2", n_embd=64, n_layer=2, n_head=4, n_positions=512, **special)
        else:
            config = AutoConfig.for_model(
                family, num_key_value_heads=2, max_position_embeddings=512, **shape, **special
            )
        config.pad_token_id = tokenizer.pad_token_id
        torch.manual_seed(0)
        path = tmp_path_factory.mktemp(family)
        AutoModelForCausalLM.from_config(config).save_pretrained(path)
        own = AutoTokenizer.from_pretrained(tiny_model_dir)
        if family == "gpt2":
            own.chat_template = None  # a base model: no chat template, as GPT-2's own tokenizer
        own.save_pretrained(path)
        dirs[family] = path
    return dirs


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_gets_its_attention_layers_and_trains(family_dirs, family):
    base = models.load_base_model(str(family_dirs[family]))
    assert base.config._attn_implementation == "sdpa"  # transformers' default where the family has it
    assert models.attention_modules(base) == FAMILIES[family]
    model = models.add_lora(base, 4, 8, 0.0, [])
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in model.named_parameters() if ".lora_A" in n}
    assert adapted and all(any(a.endswith("." + t) for t in FAMILIES[family]) for a in adapted)
    if family == "gpt2":
        assert not any(".mlp." in a for a in adapted)
    result = _steps(model, steps=2)
    assert all(torch.isfinite(torch.tensor(result.losses)))
    config = _config(family_dirs[family])
    config.lora.rank = 4
    assert memory.estimate(config, str(family_dirs[family]), torch.device("cpu")).trainable_parameters == sum(
        p.numel() for p in model.parameters() if p.requires_grad
    )


def test_the_chat_template_comes_from_the_tokenizer_and_a_base_model_without_one_is_one_line(
    family_dirs, tmp_path, capsys
):
    from openfedllm.evaluation.lm import default_template

    assert default_template(models.load_tokenizer(str(family_dirs["qwen2"]))) == "chat"
    assert default_template(models.load_tokenizer(str(family_dirs["gpt2"]))) == "alpaca"
    out = tmp_path / "run"
    assert main(tiny_run_args(family_dirs["gpt2"], out)) != 0
    err = capsys.readouterr().err.strip()
    assert err.endswith("data.template=chat: this model has no chat template; use alpaca or vicuna") and "\n" not in err
    assert not out.exists()
    assert main(tiny_run_args(family_dirs["gpt2"], out, "--data.template", "alpaca", "--fed.rounds", "1")) == 0


def test_a_run_records_the_target_modules_it_used(family_dirs, tmp_path):
    import yaml

    out = tmp_path / "run"
    assert main(tiny_run_args(family_dirs["phi3"], out, "--fed.rounds", "1", "--baselines.local", "false")) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["lora"]["target_modules"] == ["o_proj", "qkv_proj"]


@needs_cuda
def test_a_gpu_run_shares_cpu_tensors_and_resumes_on_the_cpu(tiny_model_dir, tmp_path):
    model = models.add_lora(models.load_base_model(str(tiny_model_dir), device="cuda"), 4, 8, 0.0, [])
    _steps(model, steps=2)
    state = models.trainable_state(model)
    assert {t.device.type for t in state.values()} == {"cpu"}
    on_cpu = models.add_lora(models.load_base_model(str(tiny_model_dir)), 4, 8, 0.0, [])
    models.load_trainable_state(on_cpu, state)
    assert all(torch.equal(state[k], v) for k, v in models.trainable_state(on_cpu).items())


@no_cuda
def test_the_gpu_check_skips_in_one_line_on_a_cpu_machine():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    assert proc.stdout.strip().startswith("gpu_check: no CUDA GPU here") and "\n" not in proc.stdout.strip()
