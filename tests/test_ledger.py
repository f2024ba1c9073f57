"""The byte ledger: each client's bytes_up / bytes_down, the run's communication, comm.budget_mb."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from openfedllm.cli import main
from openfedllm.compression import Wire, array_bytes
from openfedllm.config import build
from openfedllm.flower.transport import arrays_record, content_bytes

from .conftest import tiny_run_args

NO_BASELINES = ["--baselines.local", "false", "--baselines.centralized", "false"]


@pytest.mark.parametrize(
    "state",
    [
        {"a": torch.ones(3, 4), "b": torch.zeros(5)},
        {"a": torch.ones(3, 4, dtype=torch.bfloat16), "b": torch.zeros(7, dtype=torch.float16)},  # sent as float32
        {"a": torch.ones(2, dtype=torch.float64), "b": torch.zeros(100_000)},  # one float64 widens the vector
    ],
)
def test_the_simulations_bytes_are_what_the_message_carries(state):
    from flwr.app import RecordDict

    arrays = Wire.of(build({})).send_state(state)  # uncompressed: one packed float vector
    sent = RecordDict({"arrays": arrays_record(arrays)})
    assert array_bytes(arrays) == content_bytes(sent) == len(sent["arrays"]["trainable"].data)
    assert array_bytes(Wire.of(build({})).send_state({})) == 0


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_every_client_record_has_its_bytes_and_the_summary_their_sum(tiny_model_dir, tmp_path):
    """SCAFFOLD sends y_i and its c_i change up, x and (from round 2: c is 0 before) c down."""
    out = tmp_path / "run"
    args = tiny_run_args(tiny_model_dir, out, *NO_BASELINES, "--fed.algorithm", "scaffold", "--fed.rounds", "2")
    assert main(args) == 0
    adapter = sum(t.numel() for t in load_file(str(out / "adapter" / "adapter_model.safetensors")).values())
    one = 128 + 4 * adapter  # the .npy header and the float32 values of one packed vector
    clients = [r for r in _records(out) if r["type"] == "client"]
    assert len(clients) == 4  # 2 rounds x 2 sampled
    assert [(r["round"], r["bytes_up"], r["bytes_down"]) for r in clients] == [(1, 2 * one, one)] * 2 + [
        (2, 2 * one, 2 * one)
    ] * 2
    summary = json.loads((out / "summary.json").read_text())["communication"]
    assert summary == {"bytes_up": 8 * one, "bytes_down": 6 * one, "bytes_total": 14 * one}


def test_a_budget_refuses_a_plan_that_cannot_fit_and_stops_an_extension_before_the_round_past_it(
    tiny_model_dir, tmp_path, capsys
):
    out = tmp_path / "run"
    # FedAvg, 2 sampled clients: a round moves 4 packed adapters (x down, y_i up, each client)
    probe = tmp_path / "probe"
    assert main(tiny_run_args(tiny_model_dir, probe, *NO_BASELINES, "--fed.rounds", "1")) == 0
    per_round = json.loads((probe / "summary.json").read_text())["communication"]["bytes_total"]
    budget = str((2.5 * per_round) / 1e6)  # two rounds fit, not three

    assert main(tiny_run_args(tiny_model_dir, out, *NO_BASELINES, "--comm.budget_mb", budget)) == 2
    assert "3 rounds of about" in capsys.readouterr().err and not out.exists()  # nothing half-written

    assert main(tiny_run_args(tiny_model_dir, out, *NO_BASELINES, "--fed.rounds", "2", "--comm.budget_mb", budget)) == 0
    capsys.readouterr()
    assert main(["sft", "--resume", str(out), "--fed.rounds", "3"]) == 2
    err = capsys.readouterr().err
    assert "round 3 would bring the run's communication to" in err and "\n" not in err.strip()
    assert json.loads((out / "checkpoints" / "progress.json").read_text())["round"] == 2
    spent = sum(r["bytes_up"] + r["bytes_down"] for r in _records(out) if r["type"] == "client")
    assert spent == 2 * per_round <= float(budget) * 1e6 < 3 * per_round
    np.testing.assert_equal(spent, json.loads((out / "summary.json").read_text())["communication"]["bytes_total"])


def test_tensorboard_and_mlflow_mirror_metrics_jsonl_read_back_with_their_own_readers(tiny_model_dir, tmp_path):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    args = tiny_run_args(tiny_model_dir, out, *NO_BASELINES, "--fed.rounds", "2", "--log.tensorboard", "true")
    assert main([*args, "--log.mlflow", "local"]) == 0
    records = _records(out)
    evals = {r["round"]: r["loss"] for r in records if r["type"] == "eval"}
    client = next(r for r in records if r["type"] == "client")
    steps = [(r["global_step"], r["loss"]) for r in records if r["type"] == "step" and r["client"] == client["client"]]
    sent = f"federated/client/client{client['client']}/bytes_up"

    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert {e.step: e.value for e in events.Scalars("federated/eval/loss")} == pytest.approx(evals)
    assert [e.value for e in events.Scalars(sent) if e.step == client["round"]] == [client["bytes_up"]]
    tb_steps = [(e.step, e.value) for e in events.Scalars(f"federated/step/client{client['client']}/loss")]
    assert [t for t, _ in tb_steps] == [t for t, _ in steps]
    assert [v for _, v in tb_steps] == pytest.approx([v for _, v in steps])

    mlflow = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    run_id = (out / "mlflow_run_id").read_text()
    history = {m.step: m.value for m in mlflow.get_metric_history(run_id, "federated/eval/loss")}
    assert history == pytest.approx(evals) and len(history) == 3  # before training, rounds 1 and 2
    run = mlflow.get_run(run_id)
    assert run.data.params["fed.rounds"] == "2" and run.info.status == "FINISHED"
    mine = [r["bytes_up"] for r in records if r["type"] == "client" and r["client"] == client["client"]]
    assert run.data.metrics[sent] == mine[-1]
