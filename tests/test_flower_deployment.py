"""The Flower deployment on 127.0.0.1: real SuperLink and SuperNode processes, the tiny model.

Same seeds and clients give the simulation's adapter; only trainable tensors and numbers reach the
server; a TLS SuperLink refuses plaintext nodes and, with authentication, unregistered ones; a
node lost mid-round is logged and the run goes on; a killed server resumes from its checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

pytest.importorskip("flwr")
from openfedllm.cli import main  # noqa: E402
from openfedllm.flower import federation  # noqa: E402

from .conftest import tiny_run_args  # noqa: E402

pytestmark = pytest.mark.slow  # real Flower federations: SuperLink, SuperNodes, TLS

NO_BASELINES = ["--baselines.local", "false", "--baselines.centralized", "false"]
CONN = federation.CONNECTION


def _adapter(run_dir: Path) -> dict:
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def _assert_same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


@pytest.fixture
def federation_up(tmp_path, monkeypatch):
    """Start a federation in tmp_path/fed (FLWR_HOME pointed at it); always taken down."""
    folders = []

    def start(nodes: int, **kwargs) -> dict:
        folder = tmp_path / f"fed{len(folders)}"
        folders.append(folder)
        record = federation.up(nodes, folder, threads=1, **kwargs)
        monkeypatch.setenv("FLWR_HOME", record["flwr_home"])
        return record

    yield start
    for folder in folders:
        if (folder / "processes.json").exists():
            federation.down(folder)


def _wait_log(path: Path, text: str, timeout: float, count: int = 1) -> bool:
    """Whether `text` shows `count` times in the file within `timeout` s (a cap, not a pace)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text(errors="replace").count(text) >= count:
            return True
        time.sleep(0.3)
    return False


def test_a_run_over_tls_with_node_auth_equals_the_simulation_and_sends_only_tensors(
    federation_up, tiny_model_dir, tmp_path
):
    settings = [
        "--fed.num_clients",
        "2",
        "--fed.clients_per_round",
        "2",
        "--fed.rounds",
        "2",
        "--fed.algorithm",
        "fedprox",
        "--fed.fedprox_mu",
        "1.0",
        *NO_BASELINES,
    ]
    simulated = tmp_path / "simulated"
    assert main(tiny_run_args(tiny_model_dir, simulated, *settings)) == 0

    fed = federation_up(2, auth=True)
    assert fed["tls"] and fed["auth"]
    deployed = tmp_path / "deployed"
    assert main(tiny_run_args(tiny_model_dir, deployed, *settings, "--federation", CONN)) == 0
    _assert_same(_adapter(deployed), _adapter(simulated))

    def ledger(run):  # the byte ledger: measured on the records deployed, computed in the simulation
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [(r["round"], r["client"], r["bytes_up"], r["bytes_down"]) for r in records if r["type"] == "client"]

    assert ledger(deployed) == ledger(simulated) and len(ledger(deployed)) == 4
    # and what Flower moved for them: the payload plus its framing (protobuf, object headers, the
    # settings text), a few kB a message; only a deployment has messages to measure
    sent = [r for r in _records(deployed) if r["type"] == "client"]
    for r in sent:
        assert r["bytes_up"] < r["wire_up"] < r["bytes_up"] + 4096
        assert r["bytes_down"] < r["wire_down"] < r["bytes_down"] + 8192
    assert not [r for r in _records(simulated) if "wire_up" in r]
    communication = json.loads((deployed / "summary.json").read_text())["communication"]
    assert communication["wire_total"] == sum(r["wire_up"] + r["wire_down"] for r in sent)
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "plots/train_loss.png", "checkpoints/progress.json"):
        assert (deployed / name).exists(), name

    # Every message the nodes sent, as the server received it: one float32 vector of exactly the
    # adapter's trainable values, and numeric metrics; nothing else.
    num_values = sum(t.numel() for t in _adapter(deployed).values())
    messages = [json.loads(line) for line in (deployed / "messages.jsonl").read_text().splitlines()]
    assert [m["type"] for m in messages].count("train") == 4 and [m["type"] for m in messages].count("query") == 2
    for m in messages:
        assert "error" not in m
        for name, record in m["records"].items():
            assert record["kind"] in ("arrays", "metrics"), (name, record)
            if record["kind"] == "arrays":
                assert record["tensors"] == {"trainable": "float32"} and record["shapes"] == {"trainable": [num_values]}
                assert 4 * num_values <= record["bytes"] <= 4 * num_values + 256  # the values and an .npy header
        if m["type"] == "train":
            assert set(m["records"]) == {"arrays", "metrics"}
            assert {"loss", "steps", "tokens", "num-examples"} <= set(m["records"]["metrics"]["keys"])


def _deployed_as_simulated(federation_up, model_dir, tmp_path, settings):
    """The run simulated, then deployed on 2 nodes: the same adapter. Returns (federation, deployed dir)."""
    simulated = tmp_path / "simulated"
    assert main(tiny_run_args(model_dir, simulated, *settings)) == 0
    fed = federation_up(2)
    deployed = tmp_path / "deployed"
    assert main(tiny_run_args(model_dir, deployed, *settings, "--federation", CONN)) == 0
    _assert_same(_adapter(deployed), _adapter(simulated))
    return fed, deployed


def _sent_only(deployed: Path, part: str | dict) -> None:
    """Each training message carried the shared factor only (`part` of the adapter), half of A and B;
    or, compressed, exactly the arrays of shapes `part`."""
    shapes = (
        part
        if isinstance(part, dict)
        else {"trainable": [sum(t.numel() for k, t in _adapter(deployed).items() if part in k)]}
    )
    trained = [m for m in _records(deployed, "messages.jsonl") if m["type"] == "train"]
    assert len(trained) == 4
    for m in trained:
        assert m["records"]["arrays"]["shapes"] == shapes


def _records(run_dir: Path, name: str = "metrics.jsonl") -> list[dict]:
    return [json.loads(line) for line in (run_dir / name).read_text().splitlines()]


def test_fedsa_with_compression_runs_deployed_as_simulated_and_each_node_keeps_its_b_and_residual(
    federation_up, tiny_model_dir, tmp_path
):
    """FedSA-LoRA (A alone travels), compressed both ways: x as int8 down, each move as its top 25%
    up. The same numbers and bytes as the simulation; each node keeps its B and top-k's residual."""
    settings = ["--fed.num_clients", "2", "--fed.clients_per_round", "2", "--fed.rounds", "2"]
    settings += ["--fed.lora_aggregation", "fedsa", *NO_BASELINES]
    settings += ["--comm.upload", "topk", "--comm.topk_fraction", "0.25", "--comm.download", "int8"]
    fed, deployed = _deployed_as_simulated(federation_up, tiny_model_dir, tmp_path, settings)
    shared = sum(t.numel() for k, t in _adapter(deployed).items() if ".lora_A." in k)
    k = -(-shared // 4)
    _sent_only(deployed, {"indices": [k], "values": [k]})
    records = {run: _records(tmp_path / run) for run in ("simulated", "deployed")}
    ledger = {
        run: [(r["bytes_up"], r["bytes_down"]) for r in rs if r["type"] == "client"] for run, rs in records.items()
    }
    assert ledger["deployed"] == ledger["simulated"] and ledger["deployed"][0][0] == 2 * 128 + 8 * k
    from safetensors.torch import load_file as read

    # each node keeps its own B on its disk, and what top-k has not sent yet, beside the algorithm's state
    kept = list(Path(fed["dir"]).glob("node-state/**/*.safetensors"))
    assert kept and all(any(".lora_B." in k for k in read(str(f))) and "comm/update" in read(str(f)) for f in kept)


def test_ffa_with_local_dp_and_an_attacker_runs_deployed_as_simulated(federation_up, tiny_model_dir, tmp_path):
    """FFA-LoRA (B alone travels), local DP's noise and a sign-flipping attacker on the nodes, the
    median on the server: the same numbers as the simulation, the attacker marked by the server,
    each node's noise secret kept on its disk."""
    settings = ["--fed.num_clients", "2", "--fed.clients_per_round", "2", "--fed.rounds", "2", *NO_BASELINES]
    settings += ["--fed.lora_aggregation", "ffa"]
    settings += ["--dp.mode", "local", "--dp.clip_norm", "0.05", "--dp.noise_multiplier", "0.5"]
    settings += ["--dp.noise_seed", "9", "--attack.fraction", "0.5", "--fed.aggregator", "median"]
    fed, deployed = _deployed_as_simulated(federation_up, tiny_model_dir, tmp_path, settings)
    _sent_only(deployed, ".lora_B.")
    records = [json.loads(line) for line in (deployed / "metrics.jsonl").read_text().splitlines()]
    marked = {r["client"] for r in records if r["type"] == "client" and r.get("malicious")}
    assert len(marked) == 1
    assert [r["type"] for r in records].count("privacy") == 2
    from safetensors.torch import load_file as read

    kept = list(Path(fed["dir"]).glob("node-state/**/*.safetensors"))
    assert kept and all("dp_secret" in read(str(f)) for f in kept)


def test_flora_at_ranks_by_size_runs_deployed_as_simulated_each_node_following_the_merges_into_w(
    federation_up, tiny_model_dir, tmp_path
):
    """FLoRA merges every round's stacked factors into W and restarts the adapter: each node rebuilds
    W from the merges it lacks (a client not sampled in a round catches up later) and trains at the
    rank the server gave it by data size; the same adapter and the same bytes as the simulation."""
    settings = ["--fed.lora_aggregation", "flora", "--fed.rank_by_size", "[2, 8]", "--fed.split", "dirichlet"]
    settings += NO_BASELINES
    simulated = tmp_path / "simulated"
    assert main(tiny_run_args(tiny_model_dir, simulated, *settings)) == 0
    fed = federation_up(3)
    deployed = tmp_path / "deployed"
    assert main(tiny_run_args(tiny_model_dir, deployed, *settings, "--federation", CONN)) == 0
    for name, value in _adapter(simulated).items():
        assert torch.equal(_adapter(deployed)[name], value), name  # bit for bit: every W the same
    configs = [yaml.safe_load((run / "config.yaml").read_text())["fed"] for run in (simulated, deployed)]
    assert configs[0]["client_ranks"] == configs[1]["client_ranks"] and sorted(configs[1]["client_ranks"]) == [2, 2, 8]
    records = {run: _records(run) for run in (simulated, deployed)}
    ledger = {
        run: [(r["round"], r["client"], r["bytes_up"], r["bytes_down"]) for r in rs if r["type"] == "client"]
        for run, rs in records.items()
    }
    assert ledger[deployed] == ledger[simulated]
    down = {(r, c): d for r, c, _, d in ledger[deployed]}
    x = min(down.values())  # round 1: the adapter alone
    assert all(d > x for (r, _), d in down.items() if r > 1)  # later: and the merges the client lacks
    # seed 42 samples [0, 2], [0, 1], [0, 2]: in round 3 client 2 catches up on two rounds' merges, client 0 on one
    assert down[(3, 2)] > down[(3, 0)] > x
    merges = list(Path(fed["dir"]).glob("node-state/**/merges/round*.safetensors"))
    assert {p.name for p in merges} == {"round0.safetensors", "round1.safetensors"}


def test_tls_refuses_plaintext_nodes_and_auth_refuses_unregistered_keys(federation_up, tmp_path):
    fed = federation_up(1, auth=True)
    folder = Path(fed["dir"])
    assert _wait_log(folder / "logs" / "node0.log", "SuperNode ID", 60)  # the registered node is in
    env = federation.flwr_env(Path(fed["flwr_home"]))
    address = f"127.0.0.1:{fed['port']}"
    stranger, _ = federation.make_node_key(tmp_path / "keys", "stranger")  # never registered
    attempts = {
        "plaintext": federation.supernode_command(
            address, federation.free_port(), "partition-id=1 num-partitions=2", None
        ),
        "unregistered": federation.supernode_command(
            address, federation.free_port(), "partition-id=1 num-partitions=2", folder / "certs" / "ca.crt", stranger
        ),
        "no key": federation.supernode_command(
            address, federation.free_port(), "partition-id=1 num-partitions=2", folder / "certs" / "ca.crt"
        ),
    }
    # All three at once, each until the SuperLink's refusal shows: the nodes without a key or with an
    # unregistered one are told so and exit (Flower's exit code 305, with the API error's code); the
    # plaintext node's connections fail at the TLS handshake, and it keeps retrying.
    logs = {what: tmp_path / f"{what.replace(' ', '-')}.log" for what in attempts}
    started = {what: federation.start(cmd, logs[what], env) for what, cmd in attempts.items()}
    refusals = {
        "no key": "[code: 2001] SuperNode authentication is enabled",
        "unregistered": "[code: 2004] Failed to activate SuperNode",
    }
    try:
        for what, process in started.items():
            if what in refusals:
                process.wait(timeout=300)  # a cap for a hung start, not a wait that decides the outcome
                log = logs[what].read_text(errors="replace")
                assert "Exit Code: 305" in log and refusals[what] in log, (what, log[-2000:])
            else:
                assert _wait_log(logs[what], "Connection attempt failed", 300, count=3), what
                assert process.poll() is None  # still outside, still retrying
    finally:
        for process in started.values():
            federation.stop_group(process.pid)
    for what in attempts:
        log = logs[what].read_text(errors="replace")
        assert "Starting Flower SuperNode" in log, what
        assert "SuperNode ID" not in log, (what, log[-2000:])  # never admitted into the federation


def test_a_node_killed_mid_round_is_logged_and_the_run_goes_on(federation_up, tiny_model_dir, tmp_path):
    fed = federation_up(3)
    out = tmp_path / "run"
    args = tiny_run_args(
        tiny_model_dir,
        out,
        *NO_BASELINES,
        "--fed.clients_per_round",
        "3",
        "--fed.rounds",
        "3",
        "--fed.min_clients",
        "2",
        "--fed.round_timeout",
        "120",  # long enough for every node under load; the killed one is given up when the SuperLink drops it
        "--train.local_steps",
        "30",
        "--federation",
        CONN,
    )
    run = subprocess.Popen(
        [sys.executable, "-m", "openfedllm.cli", *args],
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # Once round 1 is logged, round 2's messages are out: kill node 2 (its SuperNode and apps).
        assert _wait_log(out / "metrics.jsonl", '"round": 1, "client": 2', 180)
        federation.stop_group(fed["nodes"]["2"])
        output, _ = run.communicate(timeout=300)
    finally:
        run.kill()
    assert run.returncode == 0, output[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    lost = [r for r in records if r["type"] == "lost"]
    assert lost and all(r["client"] == 2 for r in lost)
    first_lost = lost[0]["round"]
    assert first_lost >= 2 and {r["client"] for r in records if r["type"] == "client" and r["round"] == 1} == {0, 1, 2}
    after = [r for r in records if r["type"] == "client" and r["round"] >= first_lost]
    assert {r["client"] for r in after} == {0, 1}  # the rounds went on with the two that replied
    assert [r["round"] for r in records if r["type"] == "eval"] == [0, 1, 2, 3]
    assert (out / "summary.json").is_file() and "client 2 (node" in output


def test_federated_dpo_on_the_nodes_equals_the_simulation(federation_up, tiny_model_dir, tmp_path):
    """DPO's reference log-probs are computed on each node from its own model; FedYogi's moments
    stay on the server."""

    def dpo(out, *extra):
        args = tiny_run_args(
            tiny_model_dir,
            out,
            *NO_BASELINES,
            "--fed.rounds",
            "2",
            "--fed.algorithm",
            "fedyogi",
            "--data.max_length",
            "160",
            "--dpo.max_prompt_length",
            "96",
            "--fed.num_clients",
            "2",
            *extra,
        )
        args[0] = "dpo"
        return main(args)

    assert dpo(tmp_path / "simulated") == 0
    federation_up(2)
    assert dpo(tmp_path / "deployed", "--federation", CONN) == 0
    _assert_same(_adapter(tmp_path / "deployed"), _adapter(tmp_path / "simulated"))
    summary = json.loads((tmp_path / "deployed" / "summary.json").read_text())
    assert summary["objective"] == "dpo" and "pref_accuracy" in summary["evaluation"]["federated"]


# 2 clients on 2 nodes, both sampled every round: every node holds a c_i from every round
RESUME_SETTINGS = [*NO_BASELINES, "--fed.algorithm", "scaffold", "--fed.rounds", "3"]
RESUME_SETTINGS += ["--fed.num_clients", "2", "--fed.clients_per_round", "2"]


@pytest.fixture(scope="module")
def scaffold_simulated(tiny_model_dir, tmp_path_factory) -> dict:
    """The uninterrupted simulation every killed-and-resumed deployment must equal."""
    out = tmp_path_factory.mktemp("scaffold") / "simulated"
    assert main(tiny_run_args(tiny_model_dir, out, *RESUME_SETTINGS)) == 0
    return _adapter(out)


@pytest.mark.parametrize(
    "kill_at, restart",
    [
        ("replies:1", False),  # before the first checkpoint; the nodes have trained round 1 and kept c_i
        # between the nodes' replies and the server's checkpoint, every process restarted: the resume
        # from checkpoint 1 is the ordinary one, and each node must pass over its round-2 c_i
        ("replies:2", True),
    ],
)
def test_a_killed_server_resumes_exactly_wherever_the_kill_lands(
    kill_at, restart, federation_up, scaffold_simulated, tiny_model_dir, tmp_path, monkeypatch
):
    """SCAFFOLD: the server's control variate comes back from the checkpoint, each node's c_i from
    the node's own disk; the result is the uninterrupted simulation's. The ServerApp kills itself
    (SIGKILL) at the named point of the round loop, so the test does not depend on machine speed."""
    from openfedllm import faults

    monkeypatch.setenv(faults.ENV, kill_at)  # the SuperLink's processes inherit it; the resumed run passes
    monkeypatch.setenv(faults.ONCE_ENV, str(tmp_path / "killed-once"))
    fed = federation_up(2)
    out = tmp_path / "run"
    args = tiny_run_args(tiny_model_dir, out, *RESUME_SETTINGS, "--federation", CONN)
    run = subprocess.Popen(
        [sys.executable, "-m", "openfedllm.cli", *args],
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        # The ServerApp writes its pid into the marker, then SIGKILLs itself; once it is gone, stop the
        # submitting `flwr run` (it would wait for Flower's 60 s heartbeat timeout to call the run failed).
        marker = tmp_path / "killed-once"
        while run.poll() is None and not (marker.exists() and marker.read_text()):
            time.sleep(0.1)
        assert marker.exists(), "the run ended without reaching " + kill_at
        server_pid = int(marker.read_text())
        while federation.alive(server_pid):
            time.sleep(0.1)
    finally:
        federation.stop_group(run.pid)
    assert not (out / "summary.json").exists()
    killed_after = int(kill_at.split(":")[1]) - (kill_at.startswith("replies"))
    if killed_after:
        assert json.loads((out / "checkpoints" / "progress.json").read_text())["round"] == killed_after
    else:
        assert not (out / "checkpoints").exists()
    if restart:  # the same folder again: the nodes find their client state where they left it
        federation.down(Path(fed["dir"]))
        assert federation.up(2, Path(fed["dir"]), threads=1)["flwr_home"] == fed["flwr_home"]

    assert main(["sft", "--federation", CONN, "--resume", str(out)]) == 0
    _assert_same(_adapter(out), scaffold_simulated)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records if r["type"] == "eval"] == [0, 1, 2, 3]
    assert not [r for r in records if r["type"] == "lost"]


def test_a_run_waiting_for_nodes_says_which_and_gives_up_at_the_connect_timeout(
    federation_up, tiny_model_dir, tmp_path, capsys
):
    # Two nodes with their own files (partitions 0 and 1); the run wants 3 clients
    rows = [{"instruction": f"Say {i}.", "output": str(i)} for i in range(12)]
    federation_up(2, data=[str(_alpaca(tmp_path / f"node{i}.json", rows)) for i in range(2)])
    out = tmp_path / "waiting"
    args = tiny_run_args(tiny_model_dir, out, *NO_BASELINES, "--fed.num_clients", "3", "--fed.connect_timeout", "30")
    assert main([*args, "--federation", CONN]) != 0
    said = capsys.readouterr()
    # said once the first nodes answered (however many by then), then every 10 s while it waits
    assert "Waiting for nodes: " in said.out and "of 3 connected (missing client" in said.out
    assert "only 2 of fed.num_clients=3 nodes connected within fed.connect_timeout=30 s (missing: client 2)" in said.err
    assert not out.exists()


def test_bad_federation_input_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "nowhere"))
    assert main(["sft", "--federation", "nosuch", "--output-dir", str(tmp_path / "r")]) == 2
    assert "no such connection" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    from openfedllm.errors import UserError
    from openfedllm.flower.node import node_settings

    with pytest.raises(UserError, match="partition-id"):
        node_settings({"num-partitions": 2})
    with pytest.raises(UserError, match="data-path"):
        node_settings({"partition-id": 0})
    with pytest.raises(UserError, match="unknown key 'datapath'"):
        node_settings({"partition-id": 0, "datapath": "x.json"})
    assert main(["federation", "down", "--dir", str(tmp_path / "none")]) == 2


def _alpaca(path: Path, rows: list[dict]) -> Path:
    path.write_text(json.dumps(rows))
    return path


def test_each_node_trains_on_its_own_file_and_a_bad_file_stops_the_run_naming_it(
    federation_up, tiny_model_dir, tmp_path, capsys
):
    math = _alpaca(
        tmp_path / "math.json",
        [{"instruction": f"Add {i} and {i}.", "input": "", "output": str(2 * i)} for i in range(30)],
    )
    sky = _alpaca(
        tmp_path / "sky.json",
        [{"instruction": "Colour of the sky?", "input": f"day {i}", "output": "blue"} for i in range(20)],
    )
    federation_up(2, data=[str(math), str(sky)])
    out = tmp_path / "run"
    args = tiny_run_args(
        tiny_model_dir,
        out,
        *NO_BASELINES,
        "--fed.num_clients",
        "2",
        "--fed.clients_per_round",
        "2",
        "--fed.rounds",
        "1",
        "--federation",
        CONN,
    )
    assert main(args) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # each node trains on its own file minus the held-out share (5%, at least one row): 30 - 2, 20 - 1
    assert {r["client"]: r["examples"] for r in records if r["type"] == "client"} == {0: 28, 1: 19}

    broken = _alpaca(tmp_path / "broken.json", [{"question": "no instruction column here"}])
    federation_up(2, data=[str(math), str(broken)])
    bad = tmp_path / "bad"
    capsys.readouterr()
    assert (
        main(
            tiny_run_args(
                tiny_model_dir,
                bad,
                *NO_BASELINES,
                "--fed.num_clients",
                "2",
                "--fed.clients_per_round",
                "2",
                "--fed.rounds",
                "1",
                "--federation",
                CONN,
            )
        )
        != 0
    )
    said = capsys.readouterr()
    line = next(x for x in said.err.splitlines() if "the federated run" in x and "failed" in x)
    assert "could not start" in line and "broken.json" in line, line
    assert "openfedllm server: error" in said.out  # and the server's own line in the run's log
    assert not bad.exists()  # nothing half-written


def test_secagg_hides_each_update_sums_them_within_the_quantization_error_and_survives_a_dropout(
    federation_up, tiny_model_dir, tmp_path, monkeypatch
):
    """Flower's SecAgg+ on 3 nodes, 2 rounds; client 2 fails at the masked-vector stage of round 2,
    after it shared its keys. What the server received from a node looks nothing like that node's
    move; the unmasked aggregate is the weighted mean of the moves the nodes sent, within the
    quantization error; the next round starts from x + that mean; the dropout costs the round
    nothing but client 2. Then local DP under SecAgg+ on the same federation."""
    import numpy as np

    from openfedllm.flower import secagg

    traces = tmp_path / "trace"
    monkeypatch.setenv(secagg.TRACE_ENV, str(traces))  # the nodes and the server inherit it
    monkeypatch.setenv(secagg.DROP_ENV, "2:2")
    federation_up(3)
    out = tmp_path / "run"
    c, q = 1.0, 2**22
    args = tiny_run_args(
        tiny_model_dir, out, *NO_BASELINES, "--fed.clients_per_round", "3", "--fed.rounds", "2",
        "--fed.min_clients", "2", "--secagg.enabled", "true", "--federation", CONN,
    )  # fmt: skip
    assert main(args) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    clients = {r["round"]: set() for r in records if r["type"] == "client"}
    for r in records:
        if r["type"] == "client":
            clients[r["round"]].add(r["client"])
            assert r["secagg_clipped"] == 0
            assert r["wire_up"] > r["bytes_up"] > 0 and r["wire_down"] > r["bytes_down"] > 0  # all stages' messages
    assert clients == {1: {0, 1, 2}, 2: {0, 1}}
    (lost,) = [r for r in records if r["type"] == "lost"]
    assert lost["client"] == 2 and lost["round"] == 2 and "collect_masked_vectors" in lost["reason"]

    def read(name):
        return np.load(traces / f"{name}.npy").astype(np.float64)

    for round_number, members in ((1, [0, 1, 2]), (2, [0, 1])):
        moves = [read(f"sent-round{round_number}-client{i}") for i in members]
        weights = [read(f"weight-round{round_number}-client{i}")[0] for i in members]
        exact = sum(w * m for w, m in zip(weights, moves)) / sum(weights)
        # each client rounds r_i * move_i by less than 2c/Q; the mean divides by sum_i r_i
        ratios = [w / max(weights) for w in weights]
        bound = len(members) / sum(ratios) * 2 * c / q + 1e-9
        secure = read(f"aggregate-round{round_number}")
        assert np.abs(secure - exact).max() <= bound
        assert np.abs(exact).max() > 100 * bound  # the moves are far larger than the tolerance
        for i, move in zip(members, moves):
            received = read(f"received-round{round_number}-client{i}")
            # read as if unmasked, it is uniform noise of the mask range, not the move
            assert abs(np.corrcoef(received, move)[0, 1]) < 0.05
            assert np.abs(received * 2 * c / q - c).mean() > 1000 * np.abs(move).max()
    # round 2 started from x + round 1's unmasked mean (float32 rounding of x + Delta)
    x1, x2 = read("x-round1-client0"), read("x-round2-client0")
    np.testing.assert_allclose(x2, x1 + read("aggregate-round1"), rtol=0, atol=1e-7)
    messages = [json.loads(line) for line in (out / "messages.jsonl").read_text().splitlines()]
    stages = [m.get("secagg_stage") for m in messages if m["type"] == "train"]
    assert stages.count("setup") == 6 and stages.count("unmask") == 5 and None not in stages
    for m in messages:
        assert all(rec["kind"] != "arrays" or not rec["bytes"] for rec in m.get("records", {}).values())

    # Local DP under SecAgg+ (distributed DP): each node clips and noises its own move, all weigh 1,
    # and the accountant counts the round; the server's only norm is the sum's.
    dp = tmp_path / "dp"
    dp_args = tiny_run_args(
        tiny_model_dir, dp, *NO_BASELINES, "--fed.clients_per_round", "3", "--fed.rounds", "1",
        "--secagg.enabled", "true", "--dp.mode", "local", "--dp.clip_norm", "0.05",
        "--dp.noise_multiplier", "0.5", "--federation", CONN,
    )  # fmt: skip
    assert main(dp_args) == 0
    (privacy,) = [json.loads(line) for line in (dp / "metrics.jsonl").read_text().splitlines() if '"privacy"' in line]
    assert privacy["epsilon"] > 0 and list(privacy["update_norms"]) == ["sum"]
    moves = [read(f"sent-round1-client{i}") for i in range(3)]
    assert [read(f"weight-round1-client{i}")[0] for i in range(3)] == [1, 1, 1]
    assert np.abs(read("aggregate-round1") - sum(moves) / 3).max() <= 2 * c / q + 1e-9
