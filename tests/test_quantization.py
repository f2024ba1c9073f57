"""QLoRA on CPU: the tiny model's base weights in 4-bit NF4 (and int8) through bitsandbytes, LoRA on
top in float32. It trains, resumes bit for bit, and its adapter moves between quantized and
unquantized bases."""

import pytest
import torch
from safetensors.torch import load_file

from openfedllm import models, rounds
from openfedllm.cli import main

from .conftest import tiny_run_args

pytest.importorskip("bitsandbytes")
NO_BASELINES = ["--baselines.local", "false", "--baselines.centralized", "false"]


def _run(tiny_model_dir, out, *extra):
    return main(tiny_run_args(tiny_model_dir, out, *NO_BASELINES, "--fed.rounds", "2", *extra))


@pytest.fixture(scope="module")
def nf4_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("qlora") / "nf4"
    assert _run(tiny_model_dir, out, "--model.quantization", "4bit") == 0
    return out


def test_nf4_base_weights_are_a_fraction_of_float32(tiny_model_dir):
    def linear_bytes(model):
        return sum(
            p.numel() * p.element_size() for n, p in model.named_parameters() if "layers." in n and "proj.weight" in n
        ) + sum(b.numel() * b.element_size() for n, b in model.named_buffers() if "layers." in n)

    full = linear_bytes(models.load_base_model(str(tiny_model_dir)))
    nf4 = models.load_base_model(str(tiny_model_dir), quantization="4bit")
    assert type(nf4.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    quantized = sum(
        p.numel() * p.element_size() for n, p in nf4.named_parameters() if "layers." in n and "proj.weight" in n
    )
    assert full / quantized >= 7.5  # 4 bits for 32 (the quantization constants live on the weights' state)


def test_a_4bit_run_trains_and_its_adapter_loads_on_the_unquantized_base(nf4_run, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = load_file(str(nf4_run / "adapter" / "adapter_model.safetensors"))
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in adapter.values())
    assert any(bool(t.abs().sum() > 0) for n, t in adapter.items() if "lora_B" in n)  # B moved off zero
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.tensor([[5, 6, 7, 8]])
    before = base(ids).logits
    moved = PeftModel.from_pretrained(base, str(nf4_run / "adapter"))(ids).logits
    assert torch.isfinite(moved).all() and not torch.allclose(moved, before)
    # and export --merge writes a plain float32 model from it
    assert main(["export", str(nf4_run), "--output-dir", str(nf4_run.parent / "merged"), "--merge"]) == 0
    merged = AutoModelForCausalLM.from_pretrained(nf4_run.parent / "merged")
    assert next(merged.parameters()).dtype == torch.float32


def test_a_4bit_run_resumes_bit_for_bit(nf4_run, tiny_model_dir, tmp_path, monkeypatch):
    out = tmp_path / "interrupted"
    real_save = rounds.save_checkpoint

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt  # after round 1's checkpoint

    monkeypatch.setattr(rounds, "save_checkpoint", save_then_die)
    assert _run(tiny_model_dir, out, "--model.quantization", "4bit") == 130
    monkeypatch.setattr(rounds, "save_checkpoint", real_save)
    assert main(["sft", "--resume", str(out)]) == 0
    resumed = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    straight = load_file(str(nf4_run / "adapter" / "adapter_model.safetensors"))
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[n], straight[n]) for n in straight)


def test_an_unquantized_adapter_continues_on_an_8bit_base(tiny_model_dir, tmp_path):
    fp32 = tmp_path / "fp32"
    assert _run(tiny_model_dir, fp32, "--fed.rounds", "1") == 0
    out = tmp_path / "int8"
    assert (
        _run(tiny_model_dir, out, "--fed.rounds", "1", "--model.quantization", "8bit", "--model.adapter", str(fp32))
        == 0
    )
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def test_quantizing_a_full_finetune_is_one_line(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(tiny_model_dir, out, "--model.quantization", "4bit", "--model.finetune", "full") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.quantization: 4bit needs model.finetune: lora" in err
    assert not out.exists()
