"""Every algorithm through the real CLI on the tiny model: degenerate equivalences and exact resume."""

import pytest
import torch
from safetensors.torch import load_file

from openfedllm import rounds
from openfedllm.algorithms import ALGORITHMS
from openfedllm.cli import main

from .conftest import tiny_run_args

NO_BASELINES = ["--baselines.local", "false", "--baselines.centralized", "false"]


def _adapter(run_dir):
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def _run(model_dir, out, *extra):
    assert main(tiny_run_args(model_dir, out, *NO_BASELINES, *extra)) == 0
    return _adapter(out)


@pytest.fixture(scope="module")
def fedavg_runs(tiny_model_dir, tmp_path_factory):
    """FedAvg after 3 rounds of 2 local steps, and after 1 round of 1 local step."""
    base = tmp_path_factory.mktemp("fedavg")
    return {
        "3x2": _run(tiny_model_dir, base / "a"),
        "1x1": _run(tiny_model_dir, base / "b", "--fed.rounds", "1", "--train.local_steps", "1"),
    }


@pytest.mark.parametrize(
    "algorithm, settings, which",
    [
        ("fedprox", ["--fed.fedprox_mu", "0"], "3x2"),
        ("fedavgm", ["--fed.fedavgm_momentum", "0", "--fed.fedavgm_server_lr", "1"], "3x2"),
        # zero control variates (the first round) and one local step
        ("scaffold", ["--fed.scaffold_server_lr", "1", "--fed.rounds", "1", "--train.local_steps", "1"], "1x1"),
    ],
    ids=["fedprox-mu0", "fedavgm-beta0-eta1", "scaffold-c0-K1"],
)
def test_degenerate_settings_equal_fedavg(algorithm, settings, which, fedavg_runs, tiny_model_dir, tmp_path):
    adapter = _run(tiny_model_dir, tmp_path / "r", "--fed.algorithm", algorithm, *settings)
    for name, expected in fedavg_runs[which].items():
        torch.testing.assert_close(adapter[name], expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("algorithm", [a for a in ALGORITHMS if a != "fedavg"])
def test_each_algorithm_trains_its_own_way_and_resumes_exactly(
    algorithm, fedavg_runs, tiny_model_dir, tmp_path, monkeypatch
):
    settings = ["--fed.algorithm", algorithm, "--fed.fedprox_mu", "1.0"]  # a mu large enough to show
    straight = _run(tiny_model_dir, tmp_path / "straight", *settings)
    assert any(not torch.allclose(straight[k], v) for k, v in fedavg_runs["3x2"].items())

    real_save = rounds.save_checkpoint
    calls = []

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:  # after round 2 of 3: SCAFFOLD's c_i and the server moments are non-zero
            raise KeyboardInterrupt

    monkeypatch.setattr(rounds, "save_checkpoint", save_then_die)
    out = tmp_path / "interrupted"
    assert main(tiny_run_args(tiny_model_dir, out, *NO_BASELINES, *settings)) == 130
    monkeypatch.setattr(rounds, "save_checkpoint", real_save)
    assert main(["sft", "--resume", str(out)]) == 0
    resumed = _adapter(out)
    for name in straight:
        assert torch.equal(resumed[name], straight[name]), name  # bit for bit
