"""Flower's Simulation Engine: `--federation local-simulation` runs the same ServerApp and ClientApp
with Ray running the virtual clients (one Ray actor per CPU, clients in parallel), and gives the
in-process simulation's adapter."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from openfedllm.cli import main

from .conftest import tiny_run_args

SETTINGS = [
    "--fed.num_clients",
    "3",
    "--fed.clients_per_round",
    "2",
    "--fed.rounds",
    "2",
    "--fed.algorithm",
    "scaffold",  # client state (c_i) kept by each virtual node between rounds
    "--baselines.local",
    "false",
    "--baselines.centralized",
    "false",
]


def _adapter(run_dir: Path) -> dict:
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


@pytest.mark.slow
def test_two_virtual_clients_in_parallel_give_the_in_process_adapter(tiny_model_dir, tmp_path, monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the nodes' client state lands in a fresh place
    simulated = tmp_path / "in-process"
    assert main(tiny_run_args(tiny_model_dir, simulated, *SETTINGS)) == 0
    engine = tmp_path / "engine"
    args = tiny_run_args(
        tiny_model_dir, engine, *SETTINGS, "--fed.client_cpus", "1", "--federation", "local-simulation"
    )
    assert main(args) == 0
    a, b = _adapter(engine), _adapter(simulated)
    assert set(a) == set(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)
    assert (engine / "summary.json").exists() and (engine / "checkpoints" / "progress.json").exists()
    # each round's two sampled clients trained on their virtual nodes, SCAFFOLD's c_i on their disks
    assert len(list((tmp_path / "home" / ".cache" / "openfedllm" / "nodes").glob("client-*/*"))) >= 2


def test_without_the_simulation_extra_it_is_one_line(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails, as without flwr[simulation]
    out = tmp_path / "run"
    assert main(tiny_run_args(tiny_model_dir, out, "--federation", "local-simulation")) != 0
    err = capsys.readouterr().err.strip()
    assert err.endswith("needs Flower's simulation extra: pip install 'flwr[simulation]==1.41.0'") and "\n" not in err
    assert not out.exists()
