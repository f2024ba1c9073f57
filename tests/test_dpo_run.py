"""`openfedllm dpo` end to end on the tiny model: algorithms, files, resume, SFT -> DPO, bad input."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from openfedllm import config as cfg_mod
from openfedllm import models, rounds
from openfedllm.algorithms import ClientTask, FedAvg
from openfedllm.cli import main
from openfedllm.setup import prepare

from .conftest import tiny_run_args
from .test_dpo import _one_by_one

FIXTURES = Path(__file__).parent / "fixtures" / "preferences"
ROOT = Path(__file__).parent.parent


def dpo_args(model_dir, out, *extra):
    args = tiny_run_args(model_dir, out, "--data.max_length", "160", "--dpo.max_prompt_length", "96", *extra)
    args[0] = "dpo"
    return args


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("algorithm", ["fedavg", "scaffold"])
def test_federated_dpo_through_the_cli(algorithm, tiny_model_dir, tmp_path):
    out = tmp_path / algorithm
    assert main(dpo_args(tiny_model_dir, out, "--fed.algorithm", algorithm, "--train.lr", "5e-3")) == 0
    for name in [
        "adapter/adapter_model.safetensors",
        "baselines/local/adapter/adapter_model.safetensors",
        "baselines/centralized/adapter/adapter_model.safetensors",
        "plots/evaluation.png",
        "plots/train_loss.png",
        "checkpoints/progress.json",
    ]:
        assert (out / name).is_file(), name
    records = _records(out)
    before = records[0]
    assert before["type"] == "eval" and before["round"] == 0
    # the untrained policy is the reference: every reward is 0, every pair a tie, the loss log 2
    assert before["pref_accuracy"] == 0.5 and before["reward_margin"] == 0.0
    assert before["loss"] == pytest.approx(0.6931, abs=1e-4)
    assert {"refusal_rate", "benign_refusal_rate", "accuracy_mean"} <= set(before)
    clients = [r for r in records if r["type"] == "client" and r["phase"] == "federated"]
    assert len(clients) == 3 * 2 and {"reward_accuracy", "reward_margin"} <= set(clients[0])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["objective"] == "dpo" and summary["algorithm"] == algorithm
    final = summary["evaluation"]["federated"]
    assert final["reward_margin"] != 0.0 and final["loss"] != pytest.approx(0.6931, abs=1e-4)  # it trained
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["objective"] == "dpo"


def test_dpo_run_interrupted_resumes_bit_for_bit(tiny_model_dir, tmp_path, monkeypatch):
    settings = [
        "--baselines.local",
        "false",
        "--baselines.centralized",
        "false",
        "--fed.algorithm",
        "fedprox",
        "--fed.fedprox_mu",
        "1.0",
    ]
    assert main(dpo_args(tiny_model_dir, tmp_path / "straight", *settings)) == 0
    real_save, calls = rounds.save_checkpoint, []

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(rounds, "save_checkpoint", save_then_die)
    out = tmp_path / "interrupted"
    assert main(dpo_args(tiny_model_dir, out, *settings)) == 130
    monkeypatch.setattr(rounds, "save_checkpoint", real_save)
    assert main(["sft", "--resume", str(out)]) == 2  # a dpo run continues as one
    assert main(["dpo", "--resume", str(out)]) == 0
    straight = load_file(str(tmp_path / "straight" / "adapter" / "adapter_model.safetensors"))
    resumed = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    for name in straight:
        assert torch.equal(resumed[name], straight[name]), name


def test_dpo_starts_from_an_sft_adapter_and_uses_it_as_reference(tiny_model_dir, tmp_path):
    sft_dir = tmp_path / "sft"
    assert (
        main(
            tiny_run_args(
                tiny_model_dir,
                sft_dir,
                "--baselines.local",
                "false",
                "--baselines.centralized",
                "false",
                "--lora.rank",
                "4",
                "--train.lr",
                "1e-2",
            )
        )
        == 0
    )
    raw = cfg_mod.merge(
        cfg_mod.DPO_DEFAULTS,
        {
            "model": {"name": str(tiny_model_dir), "adapter": str(sft_dir)},
            "data": {"train_per_domain": 2, "heldout_per_domain": 1, "max_length": 160},
            "dpo": {"max_prompt_length": 96},
            "fed": {"num_clients": 2, "clients_per_round": 2, "split": "iid"},
        },
    )
    config = cfg_mod.build(raw)
    setup = prepare(config)
    assert config.lora.rank == 4  # the adapter's own shape
    saved = load_file(str(sft_dir / "adapter" / "adapter_model.safetensors"))
    assert set(saved) == set(setup.initial_state)
    for name, value in saved.items():
        assert torch.equal(setup.initial_state[name], value), name  # the policy starts at the SFT adapter
    setup.objective.reference.ensure(setup.train_rows)  # training pairs get theirs on first use
    from peft import PeftModel

    sft_model = PeftModel.from_pretrained(models.load_base_model(str(tiny_model_dir)), str(sft_dir / "adapter")).eval()
    want_c, want_r = _one_by_one(sft_model, setup.train_rows)
    torch.testing.assert_close(torch.tensor([p.ref_chosen for p in setup.train_rows]), want_c, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.tensor([p.ref_rejected for p in setup.train_rows]), want_r, rtol=1e-4, atol=1e-4)
    base_c, _ = _one_by_one(models.load_base_model(str(tiny_model_dir)).eval(), setup.train_rows)
    assert not torch.allclose(base_c, want_c, atol=1e-2)  # the SFT adapter is not the base model


def test_full_finetune_dpo_reference_is_the_starting_model_for_pairs_first_drawn_late(tiny_model_dir):
    """With every weight training there is no adapter to switch off: the reference of a pair first
    drawn after some steps must still be the model as it started, not the partly trained one."""
    raw = cfg_mod.merge(
        cfg_mod.DPO_DEFAULTS,
        {
            "model": {"name": str(tiny_model_dir), "finetune": "full"},
            "train": {"lr": 1e-2},
            "eval": {"batch_size": 2},  # reference chunks of two pairs: the last pair's is computed late
            "data": {"train_per_domain": 3, "heldout_per_domain": 1, "max_length": 160},
            "dpo": {"max_prompt_length": 96},
            "fed": {"num_clients": 2, "clients_per_round": 2, "split": "iid"},
        },
    )
    setup = prepare(cfg_mod.build(raw))
    assert not models.is_peft(setup.model)
    late = setup.train_rows[-1:]  # its chunk has not been used yet
    early = [p for p in setup.train_rows if setup.objective.reference.chunk_of[id(p)] == 0][:2]
    assert setup.objective.reference.chunk_of[id(late[0])] != 0
    start_c, start_r = _one_by_one(setup.model.eval(), late)
    task = ClientTask(global_state=setup.initial_state, message={}, lr=1e-2, steps=3)
    rounds.train_client(setup, FedAvg(), "federated", 0, 0, early, task, {})  # the model moves
    moved_c, _ = _one_by_one(setup.model.eval(), late)
    assert not torch.allclose(moved_c, start_c, atol=1e-3)
    setup.objective.reference.ensure(late)  # first drawn now, after training steps
    torch.testing.assert_close(torch.tensor([late[0].ref_chosen]), start_c, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.tensor([late[0].ref_rejected]), start_r, rtol=1e-5, atol=1e-5)
    after_c, _ = _one_by_one(setup.model.eval(), late)
    torch.testing.assert_close(after_c, moved_c)  # and the trained weights are back


def test_dpo_forward_passes_run_without_dropout_unless_asked(tiny_model_dir):
    from openfedllm.client import Batching

    def two_passes(disable: bool):
        raw = cfg_mod.merge(
            cfg_mod.DPO_DEFAULTS,
            {
                "model": {"name": str(tiny_model_dir)},
                "lora": {"dropout": 0.5},
                "data": {"train_per_domain": 1, "heldout_per_domain": 1, "max_length": 160},
                "dpo": {"max_prompt_length": 96, "disable_dropout": disable},
                "fed": {"num_clients": 1, "clients_per_round": 1, "split": "iid"},
            },
        )
        setup = prepare(cfg_mod.build(raw))
        torch.manual_seed(0)  # a fresh adapter's B is zero, which would hide any dropout before it
        models.load_trainable_state(setup.model, {k: torch.randn_like(v) for k, v in setup.initial_state.items()})
        setup.model.train()
        batching = Batching(setup.tokenizer.pad_token_id, True, 0)
        with torch.no_grad():
            return [setup.objective.pair_losses(setup.model, setup.train_rows[:2], batching)[0] for _ in range(2)]

    first, second = two_passes(True)
    assert torch.equal(first, second)  # train mode, yet deterministic: trl's disable_dropout
    first, second = two_passes(False)
    assert not torch.equal(first, second)  # lora.dropout 0.5 kept on request


@pytest.mark.parametrize(
    "fixture", ["hh_rlhf.jsonl", "ultrafeedback_binarized.jsonl", "sharegpt_dpo.json", "plain.jsonl"]
)
def test_quick_config_runs_on_a_users_preference_file(fixture, tiny_model_dir, tmp_path):
    # the fixture's rows four times over, in its own layout: enough rows for two clients and a held-out set
    source = FIXTURES / fixture
    data = tmp_path / fixture
    if fixture.endswith(".json"):
        data.write_text(json.dumps(json.loads(source.read_text()) * 4))
    else:
        data.write_text(source.read_text() * 4)
    out = tmp_path / "run"
    code = main(
        [
            "dpo",
            "--config",
            str(ROOT / "configs" / "dpo_quick.yaml"),
            "--model.name",
            str(tiny_model_dir),
            "--data.path",
            str(data),
            "--output-dir",
            str(out),
            "--eval.max_new_tokens",
            "2",
        ]
    )
    assert code == 0
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def test_malformed_rows_are_reported_and_a_file_with_none_usable_fails_cleanly(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "dpo",
        "--config",
        str(ROOT / "configs" / "dpo_quick.yaml"),
        "--model.name",
        str(tiny_model_dir),
        "--output-dir",
        str(out),
        "--eval.max_new_tokens",
        "2",
    ]
    assert main(args + ["--data.path", str(FIXTURES / "malformed.jsonl")]) == 0
    assert (
        "10 rows read, 6 usable; dropped: 2 empty prompt, 1 missing chosen or rejected, 1 chosen equals rejected"
    ) in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "x", "rejected": "x"}\n')
    out2 = tmp_path / "run2"
    assert main(args[:-4] + ["--output-dir", str(out2), "--data.path", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no usable preference pair" in err[0] and "chosen equals rejected" in err[0]
    assert not out2.exists()


@pytest.mark.parametrize(
    "override, message",
    [
        (["--data.format", "alpaca"], "data.format: unknown value 'alpaca'; valid: auto, hh, ultrafeedback"),
        (["--dpo.loss", "kto"], "dpo.loss: unknown value 'kto'; valid: sigmoid, ipo, hinge"),
        (["--dpo.beta", "0"], "dpo.beta must be > 0"),
        (["--dpo.max_prompt_length", "300"], "dpo.max_prompt_length (300) leaves no room"),
        (["--model.adapter", "/nonexistent"], "model.adapter: no adapter_config.json in /nonexistent"),
        (["--train.objective", "sft"], "train.objective: sft in openfedllm dpo; use openfedllm sft"),
    ],
)
def test_bad_dpo_settings_are_one_line_errors(override, message, tmp_path, capsys):
    assert main(["dpo", "--output-dir", str(tmp_path / "x"), *override]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_dpo_default_yaml_is_the_dpo_defaults_and_quick_yaml_is_valid():
    def recipe(name):
        return cfg_mod.load_yaml(str(ROOT / "configs" / name))

    assert cfg_mod.build(recipe("dpo_default.yaml")) == cfg_mod.build(cfg_mod.DPO_DEFAULTS)
    quick = cfg_mod.build(cfg_mod.merge(cfg_mod.DPO_DEFAULTS, recipe("dpo_quick.yaml")))
    quick.validate()
    assert quick.fed.split == "iid" and quick.train.objective == "dpo"
