"""One client's local training across processes (torch.distributed, gloo on CPU): with 2 processes
each taking half of every micro-batch and the adapter's gradients summed before the step, the adapter
equals one process's on the same global batch. LoRA dropout is off: with it on, the masks are drawn
per process and the two runs differ by the dropout noise, not by an error."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp

from openfedllm import models
from openfedllm.client import LocalSteps, StepHooks, data_parallel, train_local
from openfedllm.data.preference import tokenize_pair
from openfedllm.data.preference_suite import builtin_preferences
from openfedllm.dpo import DPOLoss, compute_reference

# float32 gradients summed in another order, then 3 plain SGD steps: agreement to about 1e-6 of the
# values. (Not AdamW: its m / sqrt(v) turns a near-zero gradient's last-bit difference into a step of
# up to lr, so one element in a few hundred differed by 1.6e-4 relative on an AVX-512 machine.)
TOLERANCE = {"rtol": 1e-4, "atol": 1e-6}


def _model(model_dir):
    torch.manual_seed(0)
    return models.add_lora(models.load_base_model(str(model_dir)), 4, 8, 0.0, [])


def _sft_rows(model_dir):
    from openfedllm.data.suite import train_and_heldout
    from openfedllm.data.templates import tokenize

    tokenizer = models.load_tokenizer(str(model_dir))
    train, _ = train_and_heldout(4, 1, seed=0)
    return [r for r in (tokenize(e, "chat", tokenizer, 128) for e in train) if r], tokenizer.pad_token_id


def _train(model_dir, objective: str, mu: float) -> dict:
    """3 SGD steps of 2 micro-batches of 5 rows (or pairs), FedProx's term on: the adapter after."""
    model = _model(model_dir)
    anchor = {k: v.clone() for k, v in models.trainable_parameters(model).items()}
    params = models.trainable_parameters(model)

    def proximal():
        return 0.5 * mu * torch.stack([((p - anchor[k]) ** 2).sum() for k, p in params.items()]).sum()

    hooks = StepHooks(extra_loss=proximal if mu else None)
    if objective == "sft":
        rows, pad = _sft_rows(model_dir)
        loss = None
    else:
        tokenizer = models.load_tokenizer(str(model_dir))
        train, _, _ = builtin_preferences(2, 1, seed=0)
        rows, pad = [tokenize_pair(p, "chat", tokenizer, 160, 96) for p in train[:10]], tokenizer.pad_token_id
        compute_reference(model, rows, pad, 4, True, adapter_disabled=True)
        loss = DPOLoss(beta=0.1)
    settings = LocalSteps(
        steps=3, batch_size=5, lr=0.5, seed=1, pad_id=pad, grad_accum=2, max_tokens_per_pass=300, optimizer="sgd"
    )
    result = train_local(model, rows, settings, hooks, **({"objective": loss} if loss else {}))
    return {"state": models.trainable_state(model), "losses": result.losses, "tokens": result.tokens}


def _worker(rank: int, world: int, init: str, model_dir: str, objective: str, mu: float, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        assert data_parallel() == (rank, world)
        result = _train(model_dir, objective, mu)
        if rank == 0:
            torch.save(result, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("objective,mu", [("sft", 0.5), ("dpo", 0.0)])  # SFT with FedProx's term; DPO
def test_two_processes_equal_one_on_the_same_global_batch(tiny_model_dir, tmp_path, objective, mu):
    alone = _train(tiny_model_dir, objective, mu)
    out = tmp_path / "rank0.pt"
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_worker, args=(2, init, str(tiny_model_dir), objective, mu, str(out)), nprocs=2, join=True)
    shared = torch.load(out)
    assert shared["tokens"] == alone["tokens"]  # each process counted its share; the sum is the batch's
    assert shared["losses"] == pytest.approx(alone["losses"], rel=1e-5)
    assert set(shared["state"]) == set(alone["state"])
    start = models.trainable_state(_model(tiny_model_dir))
    moved = max(float((alone["state"][k] - v).abs().max()) for k, v in start.items())
    assert moved > 1e-4  # the steps did move the adapter: equality below is not of two untouched adapters
    for name, tensor in shared["state"].items():
        torch.testing.assert_close(tensor, alone["state"][name], **TOLERANCE)


def test_a_whole_run_under_torchrun_equals_one_process(tiny_model_dir, tmp_path):
    """`torchrun --nproc_per_node 2 -m openfedllm.cli sft ...`: rank 0 writes the run, and its adapter
    is the single process's; the other rank wrote only into its own temporary folder."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    from openfedllm.cli import main

    from .conftest import tiny_run_args

    settings = ["--lora.dropout", "0", "--fed.rounds", "2", "--baselines.local", "false"]
    assert main(tiny_run_args(tiny_model_dir, tmp_path / "one", *settings)) == 0
    args = tiny_run_args(tiny_model_dir, tmp_path / "two", *settings)
    env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp_path))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run([*cmd, "-m", "openfedllm.cli", *args], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "data-parallel over 2 processes" in done.stdout
    assert done.stdout.count("Federated instruction tuning finished") == 1  # rank 1 printed nothing
    a = load_file(str(tmp_path / "one" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "two" / "adapter" / "adapter_model.safetensors"))
    for name in a:
        torch.testing.assert_close(b[name], a[name], **TOLERANCE)
    assert not list(tmp_path.glob("openfedllm-rank1-*"))  # the follower's folder is gone
