"""The real-size recipes (configs/paper, configs/flowertune) read, validate, and fit their GPUs: sized
offline from the published config.json of each model (tests/fixtures/models), no weights."""

import importlib.util
from pathlib import Path

import pytest
import torch

from openfedllm import config as cfg_mod
from openfedllm import memory
from openfedllm.cli import main

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "configs" / "paper").glob("*.yaml")) + sorted((ROOT / "configs" / "flowertune").glob("*.yaml"))
GiB = 1024**3


def _plan_module():
    spec = importlib.util.spec_from_file_location("recipe_plan", ROOT / "benchmarks" / "recipe_plan.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _config(recipe):
    raw = cfg_mod.load_yaml(str(recipe))
    objective = raw.get("train", {}).get("objective", "sft")
    config = cfg_mod.build(cfg_mod.preset(objective, raw))
    config.validate()
    return objective, config


def test_there_are_the_paper_and_flowertune_recipes():
    names = {f"{r.parent.name}/{r.stem}" for r in RECIPES}
    assert names == {
        "paper/sft_llama2_7b",
        "paper/dpo_llama2_7b",
        "flowertune/general",
        "flowertune/finance",
        "flowertune/medical",
        "flowertune/code",
    }


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: f"{r.parent.name}/{r.stem}")
def test_each_recipe_reads_through_the_cli(recipe, capsys):
    objective, config = _config(recipe)
    assert main([objective, "--config", str(recipe), "--print-config"]) == 0
    assert f"name: {config.model.name}" in capsys.readouterr().out
    assert config.model.quantization in ("8bit", "4bit") and config.train.gradient_checkpointing
    assert (config.fed.clients_per_round, config.fed.rounds, config.train.local_steps) == (2, 200, 10)
    assert (config.train.batch_size, config.data.max_length) == (16, 512)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: f"{r.parent.name}/{r.stem}")
def test_each_recipe_fits_a_24_gib_gpu(recipe, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    _, config = _config(recipe)
    folder = ROOT / "tests" / "fixtures" / "models" / _plan_module().SHAPES[config.model.name]
    found = memory.estimate(config, str(folder), torch.device("cuda", 0))
    # LoRA on q_proj and v_proj of 32 layers: r x (in + out) each; Llama-2: 4096 -> 4096 for both,
    # Mistral: v_proj 4096 -> 1024 (8 key-value heads)
    v_out = 1024 if "mistral" in config.model.name.lower() else 4096
    assert found.trainable_parameters == 32 * config.lora.rank * ((4096 + 4096) + (4096 + v_out))
    assert found.total < 24 * GiB  # an RTX 3090 / 4090
    # and it would not fit in 16-bit without quantization and checkpointing (what the recipes are for)
    config.model.quantization, config.train.gradient_checkpointing = "none", False
    assert memory.estimate(config, str(folder), torch.device("cuda", 0)).total > 24 * GiB


def test_flowertune_recipes_stay_within_the_leaderboard_communication_budget():
    plan = _plan_module()
    for recipe in RECIPES:
        if recipe.parent.name == "flowertune":
            found = plan.plan(recipe, ROOT / "tests" / "fixtures" / "models", mfu=0.3)
            assert found["communication"] == "43.6 GB"  # 2 x 2 x 200 x 13.6 M float32; the cap is 200 GB
