"""LoRA-aware aggregation: each method checked by hand on small matrices, then in real runs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml

from openfedllm.algorithms import ClientUpdate, FedAvg, FedProx
from openfedllm.lora_aggregation import LORA_AGGREGATIONS, aggregation_error, build
from openfedllm.lora_aggregation.factors import Stack, best_factors, error_norms, modules

from .conftest import interrupted_after_round_2_then_resumed, tiny_run_args

M = "base_model.model.model.layers.0.self_attn.q_proj"
A, B = f"{M}.lora_A.weight", f"{M}.lora_B.weight"
S = 2.0  # s = alpha / r


def _client(cid, n, b, a):
    return ClientUpdate(cid, {B: torch.tensor(b, dtype=torch.float32), A: torch.tensor(a, dtype=torch.float32)}, n)


# two clients of rank 1 on a 2 x 2 layer, weighted 1 : 3
UPDATES = [_client(0, 1, [[1.0], [0.0]], [[1.0, 2.0]]), _client(1, 3, [[0.0], [2.0]], [[3.0, -1.0]])]
GLOBAL = {B: torch.zeros(2, 1), A: torch.zeros(1, 2)}


def _mean_product():
    # by hand: 1/4 * 2 * [[1, 2], [0, 0]] + 3/4 * 2 * [[0, 0], [6, -2]]
    return torch.tensor([[0.5, 1.0], [9.0, -3.0]], dtype=torch.float64)


def _product(state, scale=S):
    return scale * state[B].double() @ state[A].double()


def test_a_stack_is_the_weighted_sum_of_products_and_its_norm_needs_no_dense_matrix():
    stack = Stack.of(
        [(0.5, torch.ones(3, 2), torch.arange(8.0).reshape(2, 4)), (-1.0, torch.eye(3)[:, :1], torch.ones(1, 4))]
    )
    dense = (
        0.5 * torch.ones(3, 2).double() @ torch.arange(8.0).reshape(2, 4).double()
        - torch.eye(3)[:, :1].double() @ torch.ones(1, 4).double()
    )
    assert torch.allclose(stack.dense(), dense)
    empty = Stack(torch.zeros(3, 0, dtype=torch.float64), torch.zeros(0, 4, dtype=torch.float64))
    assert error_norms(stack, empty) == (pytest.approx(float((dense**2).sum())), pytest.approx(float((dense**2).sum())))
    assert error_norms(stack, stack)[0] == pytest.approx(0.0, abs=1e-9)
    b, a = best_factors(stack.u[None], stack.v[None], rank=2, scale=0.5)  # rank 2 = R: exact
    assert torch.allclose(0.5 * b[0] @ a[0], dense, atol=1e-12)
    b1, a1 = best_factors(stack.u[None], stack.v[None], rank=1, scale=1.0)
    p, sigma, qt = torch.linalg.svd(dense)
    assert torch.allclose(b1[0] @ a1[0], sigma[0] * torch.outer(p[:, 0], qt[0]), atol=1e-12)  # Eckart-Young
    b3, a3 = best_factors(stack.u[None], stack.v[None], rank=3, scale=1.0)  # above R: zero-padded, still exact
    assert torch.allclose(b3[0] @ a3[0], dense, atol=1e-12) and not b3[0, :, 2].any() and not a3[0, 2].any()


def test_naive_averages_the_factors_apart_and_its_error_is_the_gap_to_the_mean_product():
    outcome = build("naive").aggregate(FedAvg(), GLOBAL, UPDATES, S, 0)
    assert torch.allclose(outcome.state[B], torch.tensor([[0.25], [1.5]]))  # (1*[1,0] + 3*[0,2]) / 4
    assert torch.allclose(outcome.state[A], torch.tensor([[2.5, -0.25]]))  # (1*[1,2] + 3*[3,-1]) / 4
    target = _mean_product()
    gap = target - _product(outcome.state)
    expected = math.sqrt(float((gap**2).sum()) / float((target**2).sum()))
    assert aggregation_error(UPDATES, outcome, S, GLOBAL) == {"q_proj": pytest.approx(expected)}
    # by hand: s mean(B) mean(A) = [[1.25, -0.125], [7.5, -0.75]]; the gap's squares sum to 9.140625,
    # the target's to 91.25
    assert expected == pytest.approx(math.sqrt(9.140625 / 91.25))


def test_ffa_averages_b_alone_which_is_the_mean_product_when_a_is_shared():
    shared_a = {A: torch.tensor([[1.0, 2.0]])}
    updates = [
        ClientUpdate(0, {B: torch.tensor([[1.0], [0.0]])}, 1),
        ClientUpdate(1, {B: torch.tensor([[0.0], [2.0]])}, 3),
    ]
    outcome = build("ffa").aggregate(FedAvg(), {B: torch.zeros(2, 1)}, updates, S, 0)
    assert set(outcome.state) == {B}  # A is neither trained nor sent
    mean = (1 * S * torch.tensor([[1.0], [0.0]]) @ shared_a[A] + 3 * S * torch.tensor([[0.0], [2.0]]) @ shared_a[A]) / 4
    assert torch.allclose(_product({**outcome.state, **shared_a}).float(), mean)
    assert aggregation_error(updates, outcome, S, shared_a)["q_proj"] < 1e-7


def test_svd_at_full_rank_is_exact_and_below_it_the_best_approximation():
    outcome = build("svd").aggregate(FedAvg(), {B: torch.zeros(2, 2), A: torch.zeros(2, 2)}, UPDATES, S, 0)
    assert torch.allclose(_product(outcome.state), _mean_product(), atol=1e-5)  # rank 2 >= R = 2
    outcome = build("svd").aggregate(FedAvg(), GLOBAL, UPDATES, S, 0)  # rank 1 < R = 2
    p, sigma, qt = torch.linalg.svd(_mean_product())
    best = sigma[0] * torch.outer(p[:, 0], qt[0])  # Eckart-Young
    assert torch.allclose(_product(outcome.state), best, atol=1e-5)
    error = aggregation_error(UPDATES, outcome, S, GLOBAL)["q_proj"]
    assert error == pytest.approx(float(sigma[1] / sigma.norm()), rel=1e-5)  # the dropped singular value


def test_flora_merges_the_exact_sum_of_any_ranks_and_restarts_the_adapter():
    mixed = [*UPDATES, ClientUpdate(2, {B: torch.eye(2), A: torch.tensor([[1.0, 0.0], [0.0, 1.0]])}, 4)]  # rank 2
    outcome = build("flora").aggregate(FedAvg(), GLOBAL, mixed, S, seed=7)
    by_hand = (_mean_product() * 4 + 4 * S * torch.eye(2, dtype=torch.float64)) / 8  # weights 1, 3, 4 of 8
    assert torch.allclose(outcome.merged[M].dense(), by_hand, atol=1e-12)
    assert not outcome.state[B].any()  # B = 0: the new adapter adds nothing yet
    bound = 1 / math.sqrt(2)  # peft's kaiming-uniform(a=sqrt(5)) bound for fan_in 2
    assert outcome.state[A].abs().max() <= bound and outcome.state[A].abs().max() > 0
    again = build("flora").aggregate(FedAvg(), GLOBAL, mixed, S, seed=7)
    other = build("flora").aggregate(FedAvg(), GLOBAL, mixed, S, seed=8)
    assert torch.equal(again.state[A], outcome.state[A]) and not torch.equal(other.state[A], outcome.state[A])
    assert aggregation_error(mixed, outcome, S, GLOBAL)["q_proj"] < 1e-7


def test_fedex_keeps_the_mean_factors_and_folds_the_residual_into_w():
    outcome = build("fedex").aggregate(FedProx(mu=0.1), GLOBAL, UPDATES, S, 0)
    naive = build("naive").aggregate(FedAvg(), GLOBAL, UPDATES, S, 0)
    assert torch.equal(outcome.state[B], naive.state[B]) and torch.equal(outcome.state[A], naive.state[A])
    assert torch.allclose(outcome.merged[M].dense() + _product(outcome.state), _mean_product(), atol=1e-6)
    assert aggregation_error(UPDATES, outcome, S, GLOBAL)["q_proj"] < 1e-7


def test_one_client_is_its_own_mean_for_every_method():
    one = UPDATES[:1]
    for name in LORA_AGGREGATIONS:
        outcome = build(name).aggregate(FedAvg(), GLOBAL, one, S, 0)
        assert aggregation_error(one, outcome, S, GLOBAL)["q_proj"] < 1e-7, name


def test_modules_pair_the_factors_by_name():
    found = modules([B, A, "x.lora_A.weight", "x.lora_B.weight"])
    assert [(m.name, m.kind) for m in found] == [(M, "q_proj"), ("x", "x")]


# --- in real runs ------------------------------------------------------------------------------------

LOCAL_ONLY = ["--baselines.centralized", "false"]  # the local baseline runs after the federation


def _adapter(run_dir, which="adapter"):
    from safetensors.torch import load_file

    return load_file(str(run_dir / which / "adapter_model.safetensors"))


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _lora_model(model_dir):
    from openfedllm import models

    model = models.load_base_model(models.resolve_model(str(model_dir)), "float32")
    return models.add_lora(model, 4, 8, 0.0, [])


def test_a_node_rebuilds_the_servers_frozen_weights_from_the_merges_it_lacks(tiny_model_dir, tmp_path):
    """FedEx-LoRA on a server and on a node's own copy of the model: a client sampled at rounds 1
    and 4 is sent the merges of rounds 1-3 at once and its W equals the server's bit for bit; a node
    asked for an earlier round (a resumed server) starts again from W_0; a restarted one reads its
    disk; what a client lacks is counted in bytes as sent, and dropped once every client has it."""
    from openfedllm import models
    from openfedllm.compression import array_bytes
    from openfedllm.lora_aggregation.merges import FrozenBase, MergeLog
    from openfedllm.lora_aggregation.server import LoraServer

    torch.manual_seed(0)
    server_model, node_model = _lora_model(tiny_model_dir), _lora_model(tiny_model_dir)
    server = LoraServer(build("fedex"), 2.0, num_clients=2, deployed=True)
    state = models.trainable_state(server_model)
    names = [m.name for m in modules(state)]
    w = [models.base_weights(server_model, names)]  # W_0, W_1, ...
    for r in range(3):
        updates = [ClientUpdate(c, {k: v + 0.1 * torch.randn_like(v) for k, v in state.items()}, 3 + c) for c in (0, 1)]
        state, error = server.aggregate(server_model, FedAvg(), state, updates, seed=r, round_index=r)
        assert max(error.values()) < 1e-6  # exact: the residual went into W
        w.append(models.base_weights(server_model, names))
        assert not torch.equal(w[-1][names[0]], w[-2][names[0]])
        if r == 0:
            server.merges.delivered(0, 1)  # client 0 trained round 2 (it holds round 1's merge); client 1 did not
    log = server.merges
    assert list(log.pending(1, 3)) == [0, 1, 2] and list(log.pending(0, 3)) == [1, 2]
    sent = log.arrays_for(1, 3)
    # per module and round: the clients' B in float32 with each column's coefficient, and V (their A) in float32
    assert len(sent) == 3 * 3 * len(names) and log.bytes_for(1, 3) == array_bytes(sent)
    assert {k.rsplit(":", 1)[1] for k in sent} == {"b", "coef", "v"}
    assert all(a.dtype == np.float32 for k, a in sent.items() if not k.endswith(":coef"))

    node, folder = FrozenBase(), tmp_path / "merges"
    node.bring(node_model, folder, 3, sent)
    for name in names:
        assert torch.equal(models.base_weights(node_model, names)[name], w[3][name]), name
    node.bring(node_model, folder, 1, {})  # the server resumed from its round-1 checkpoint
    assert all(torch.equal(models.base_weights(node_model, names)[n], w[1][n]) for n in names)
    restarted = _lora_model(tiny_model_dir)
    FrozenBase().bring(restarted, folder, 3, {})  # a new process: W_0 from the model, the merges from disk
    assert all(torch.equal(models.base_weights(restarted, names)[n], w[3][n]) for n in names)
    with pytest.raises(RuntimeError, match="lacks the merges of round 1 "):
        FrozenBase().bring(_lora_model(tiny_model_dir), tmp_path / "empty", 3, log.arrays_for(0, 2))

    log.delivered(1, 3)
    assert sorted(log.sizes) == [1, 2] and sorted(log.rounds) == [1, 2]  # round 1's merge: every client has it
    log.delivered(0, 3)
    assert not log.sizes and not log.rounds and log.bytes_for(0, 3) == 0
    again = MergeLog(2, keep_tensors=True)
    one = Stack(torch.ones(2, 1, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64))
    server.merges.add(3, {names[0]: one})
    again.load_state_dict(server.state_dict(server_model))
    assert again.known == {0: 3, 1: 3} and list(again.rounds) == [3]
    assert all(np.array_equal(again.arrays_for(0, 4)[k], v) for k, v in log.arrays_for(0, 4).items())


@pytest.fixture(scope="module")
def naive_run(tiny_model_dir, tmp_path_factory):
    from openfedllm.cli import main

    out = tmp_path_factory.mktemp("naive") / "run"
    assert main(tiny_run_args(tiny_model_dir, out, *LOCAL_ONLY)) == 0
    return out


def _model_of(run_dir, state, merged):
    """The model the server ended with: the base, plus the merges into W, plus the adapter."""
    from openfedllm import models
    from openfedllm.config import build as build_config
    from openfedllm.rundir import read_config

    cfg = build_config(read_config(run_dir))
    model = models.load_base_model(models.resolve_model(cfg.model.name), "float32")
    model = models.add_lora(model, cfg.lora.rank, cfg.lora.alpha, 0.0, cfg.lora.target_modules)
    models.load_trainable_state(model, state)
    models.add_to_base(model, merged)
    return model.eval()


@pytest.mark.parametrize("method", ["flora", "fedex"])
def test_a_method_that_merges_into_w_saves_the_whole_change_as_a_plain_peft_adapter(
    method, naive_run, tiny_model_dir, tmp_path, monkeypatch
):
    from peft import PeftModel

    from openfedllm import models
    from openfedllm.cli import main
    from openfedllm.rundir import FEDERATED_END, load_checkpoint

    settings = ["--fed.lora_aggregation", method, *LOCAL_ONLY]
    out = tmp_path / "straight"
    assert main(tiny_run_args(tiny_model_dir, out, *settings)) == 0
    end = load_checkpoint(out, FEDERATED_END)
    server = _model_of(out, end.state, end.server_state["lora_merged"])
    loaded = PeftModel.from_pretrained(
        models.load_base_model(models.resolve_model(str(tiny_model_dir)), "float32"), str(out / "adapter")
    ).eval()
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, server(input_ids=ids).logits, rtol=1e-4, atol=1e-4)
    errors = [r["aggregation_error"] for r in _records(out) if r["type"] == "aggregation" and r["phase"] == "federated"]
    assert len(errors) == 3 and all(e < 1e-6 for round_errors in errors for e in round_errors.values())
    # the baseline after it trains on the original frozen weights: the same bits as after a naive run
    for name, value in _adapter(naive_run, "baselines/local/adapter").items():
        assert torch.equal(_adapter(out, "baselines/local/adapter")[name], value), name

    resumed = interrupted_after_round_2_then_resumed(tiny_model_dir, tmp_path, settings, monkeypatch)
    for which in ("adapter", "baselines/local/adapter"):
        for name, value in _adapter(out, which).items():
            assert torch.equal(_adapter(resumed, which)[name], value), (which, name)  # bit for bit


def test_only_a_fedsa_run_exports_a_client_model(naive_run, tmp_path, capsys):
    from openfedllm.cli import main

    assert main(["export", str(naive_run), "--client", "0", "--output-dir", str(tmp_path / "c0")]) == 2
    assert "only fedsa keeps a model per client" in capsys.readouterr().err
    assert not (tmp_path / "c0").exists()


def test_ffa_sends_b_alone_and_its_a_stays_the_seeded_initialisation(naive_run, tiny_model_dir, tmp_path):
    from openfedllm.cli import main
    from openfedllm.rundir import FEDERATED_END, load_checkpoint

    out = tmp_path / "ffa"
    assert main(tiny_run_args(tiny_model_dir, out, "--fed.lora_aggregation", "ffa", *LOCAL_ONLY)) == 0
    shared = load_checkpoint(out, FEDERATED_END).state
    assert shared and all(".lora_B." in k for k in shared)  # what crosses the wire and is checkpointed
    trained = _adapter(out)
    a_keys = [k for k in trained if ".lora_A." in k]
    assert len(a_keys) == len(shared)
    naive_start = load_checkpoint(naive_run, FEDERATED_END)  # its A trained away from the same start
    assert any(not torch.equal(naive_start.state[k], trained[k]) for k in a_keys)
    from openfedllm import models
    from openfedllm.config import build as build_config
    from openfedllm.rundir import read_config
    from openfedllm.setup import load_model

    cfg = build_config(read_config(out))
    start = models.adapter_state(load_model(cfg, models.resolve_model(cfg.model.name), torch.device("cpu")))
    for k in a_keys:
        assert torch.equal(trained[k], start[k]), k
    assert any(not torch.equal(trained[k], start[k]) for k in shared)  # B did train
    errors = [r["aggregation_error"] for r in _records(out) if r["type"] == "aggregation"]
    assert errors and all(e < 1e-6 for round_errors in errors for e in round_errors.values())


@pytest.mark.parametrize(
    "settings, message",
    [
        (
            ["--fed.lora_aggregation", "svd", "--fed.algorithm", "fedadam"],
            "svd composes with fed.algorithm fedavg or fedprox only",
        ),
        (["--fed.lora_aggregation", "flora", "--fed.algorithm", "scaffold"], "flora composes with fed.algorithm"),
        (["--fed.lora_aggregation", "fedex", "--model.quantization", "4bit"], "fedex adds to the frozen base weights"),
        (["--fed.lora_aggregation", "ffa", "--model.finetune", "full"], "ffa aggregates LoRA adapters"),
        (["--fed.lora_aggregation", "mean"], "unknown value 'mean'"),
    ],
    ids=["svd-fedadam", "flora-scaffold", "fedex-4bit", "ffa-full", "unknown"],
)
def test_an_unsound_combination_is_one_line(settings, message, tiny_model_dir, tmp_path, capsys):
    from openfedllm.cli import main

    out = tmp_path / "never"
    assert main(tiny_run_args(tiny_model_dir, out, *settings)) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_dpo_with_a_merging_method_keeps_the_reference_of_the_original_weights(tiny_model_dir, tmp_path):
    from openfedllm.cli import main

    from .test_dpo_run import dpo_args

    out = tmp_path / "dpo"
    args = dpo_args(tiny_model_dir, out, "--fed.lora_aggregation", "fedex", "--train.lr", "5e-3", *LOCAL_ONLY)
    assert main(args) == 0
    records = _records(out)
    errors = [r["aggregation_error"] for r in records if r["type"] == "aggregation" and r["phase"] == "federated"]
    assert len(errors) == 3 and all(e < 1e-6 for round_errors in errors for e in round_errors.values())
    summary = json.loads((out / "summary.json").read_text())["evaluation"]
    assert summary["federated"]["reward_margin"] != 0.0  # it trained against the reference
    from openfedllm.config import build as build_config
    from openfedllm.rundir import read_config
    from openfedllm.setup import prepare

    # every training pair's reference is computed before round 1 changes W (not on first use)
    reference = prepare(build_config(read_config(out))).objective.reference
    assert reference.done == set(reference.chunk_of.values()) and len(reference.done) > 1


def test_experiment_cells_of_lora_methods_are_the_runs_sft_makes(tiny_model_dir, tmp_path):
    """flora first (it changes W), then ffa (it freezes A), then naive: each cell must find the
    shared model as a fresh run would."""
    import yaml
    from safetensors.torch import load_file

    from openfedllm.cli import main

    tiny = {
        "data": {"train_per_domain": 6, "heldout_per_domain": 2},
        "fed": {"num_clients": 3, "clients_per_round": 2, "rounds": 2, "split": "domain"},
        "train": {"local_steps": 1, "batch_size": 4},
        "eval": {"max_new_tokens": 3, "every": 2},
    }
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"methods": ["flora", "ffa", "naive"], "seeds": [3], "config": tiny}))
    out = tmp_path / "exp"
    assert main(["experiment", str(grid), "--output-dir", str(out), "--model.name", str(tiny_model_dir)]) == 0
    for method in ("ffa", "naive"):
        args = ["sft", "--output-dir", str(tmp_path / method), "--model.name", str(tiny_model_dir)]
        args += ["--train.seed", "3", "--fed.lora_aggregation", method, *NO_BASELINE_ARGS]
        for section, values in tiny.items():
            for key, value in values.items():
                args += [f"--{section}.{key}", str(value)]
        assert main(args) == 0
        sft = load_file(str(tmp_path / method / "adapter" / "adapter_model.safetensors"))
        cell = load_file(str(out / "runs" / f"{method}-seed3" / "adapter" / "adapter_model.safetensors"))
        assert sft.keys() == cell.keys() and all(torch.equal(sft[k], cell[k]) for k in sft), method


NO_BASELINE_ARGS = ["--baselines.local", "false", "--baselines.centralized", "false"]


def test_fedsa_sends_a_alone_and_each_client_keeps_its_own_b():
    fedsa = build("fedsa")
    assert set(fedsa.shared(GLOBAL)) == {A}
    initial = {A: torch.zeros(1, 2), B: torch.full((2, 1), 7.0)}
    first = fedsa.client_start({A: torch.ones(1, 2)}, initial, {})
    assert torch.equal(first[B], initial[B]) and torch.equal(first[A], torch.ones(1, 2))  # round 1: the init's B
    trained = {A: torch.full((1, 2), 2.0), B: torch.full((2, 1), 3.0)}
    sent, kept = fedsa.client_finish(trained, {})
    assert set(sent) == {A} and torch.equal(kept[B], trained[B])  # nothing of B is sent
    again = fedsa.client_start({A: torch.zeros(1, 2)}, initial, kept)
    assert torch.equal(again[B], trained[B])  # the next round goes on from the client's own B
    updates = [
        ClientUpdate(0, {A: torch.tensor([[1.0, 2.0]])}, 1),
        ClientUpdate(1, {A: torch.tensor([[3.0, -1.0]])}, 3),
    ]
    outcome = fedsa.aggregate(FedAvg(), {A: torch.zeros(1, 2)}, updates, S, 0)
    assert set(outcome.state) == {A} and torch.allclose(outcome.state[A], torch.tensor([[2.5, -0.25]]))


def test_a_fedsa_run_keeps_b_on_the_clients_and_scores_each_personalized_model(tiny_model_dir, tmp_path, monkeypatch):
    from openfedllm.cli import main
    from openfedllm.rundir import load_checkpoint

    settings = ["--fed.lora_aggregation", "fedsa", "--fed.split", "domain", *NO_BASELINE_ARGS]
    out = tmp_path / "fedsa"
    assert main(tiny_run_args(tiny_model_dir, out, *settings)) == 0
    end = load_checkpoint(out)
    assert end.state and all(".lora_A." in k for k in end.state)  # the server never holds a B
    from openfedllm.client_state import ClientStore

    store = ClientStore(out / "client-state" / "federated")  # each client's state, on disk
    states = {cid: store.latest(cid) for cid in range(3)}
    kept = {cid: {k for k in s if ".lora_B." in k} for cid, s in states.items() if s}
    assert kept and all(keys for keys in kept.values())  # every sampled client keeps its B
    assert not end.client_states  # the checkpoint holds none: they are read from the store
    records = _records(out)
    assert not [r for r in records if r["type"] == "aggregation"]  # no B_i on the server: no mean product
    personal = [r for r in records if r["type"] == "personal"]
    assert [r["client"] for r in personal] == [0, 1, 2] and all(r["kind"] == "own B" for r in personal)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["lora_aggregation"] == "fedsa"
    assert summary["personalization"]["personal"]["accuracy_own"] == pytest.approx(
        sum(r["accuracy_own"] for r in personal) / 3
    )
    assert "own-domain acc" in (out / "run.log").read_text()
    # the saved global adapter is A with the initial B (peft's 0): the model a new client starts from
    assert all(not v.any() for k, v in _adapter(out).items() if ".lora_B." in k)
    # client 1's own model: the shared A with its B, exported as a plain adapter
    assert main(["export", str(out), "--client", "1", "--output-dir", str(tmp_path / "client1")]) == 0
    own = _adapter(tmp_path, "client1")
    own_b = {k[len("lora_local/") :]: v for k, v in states[1].items() if k.startswith("lora_local/")}
    for k, v in own.items():
        assert torch.equal(v, own_b[k] if ".lora_B." in k else _adapter(out)[k]), k
    assert main(["export", str(out), "--client", "7", "--output-dir", str(tmp_path / "c7")]) == 2
    assert not (tmp_path / "c7").exists() and not list(tmp_path.glob(".c7*"))

    resumed = interrupted_after_round_2_then_resumed(tiny_model_dir, tmp_path, settings, monkeypatch)
    again = [r for r in _records(resumed) if r["type"] == "personal"]
    assert [r["accuracy_own"] for r in again] == [r["accuracy_own"] for r in personal]
    assert [r["loss"] for r in again] == [r["loss"] for r in personal]  # the clients' B came back exactly


def test_fine_tuning_after_the_federation_is_the_personalization_baseline(tiny_model_dir, tmp_path):
    from openfedllm.cli import main

    out = tmp_path / "ft"
    args = tiny_run_args(
        tiny_model_dir, out, "--fed.personalize_steps", "2", "--fed.split", "domain", *NO_BASELINE_ARGS
    )
    assert main(args) == 0
    records = _records(out)
    personal = [r for r in records if r["type"] == "personal"]
    assert [r["client"] for r in personal] == [0, 1, 2] and personal[0]["kind"] == "fine-tuned 2 steps"
    assert all(r["train_loss"] > 0 for r in personal)  # its own local steps trained
    final = [r for r in records if r["type"] == "eval" and r["phase"] == "federated"][-1]
    from openfedllm.config import build as build_config
    from openfedllm.personalize import own_accuracy
    from openfedllm.rundir import read_config
    from openfedllm.setup import prepare

    setup = prepare(build_config(read_config(out)))
    for r, partition in zip(personal, setup.clients):
        domains = [{setup.train_domains[i] for i in partition}]
        assert r["global_accuracy_own"] == own_accuracy(final["accuracy"], domains)
        assert r["accuracy_own"] == own_accuracy(r["accuracy"], domains)


def test_a_client_of_rank_r_trains_the_first_r_components_only():
    from openfedllm.lora_aggregation.factors import truncate_rank

    state = {A: torch.arange(6.0).reshape(3, 2), B: torch.arange(6.0).reshape(2, 3) + 1}
    cut = truncate_rank(state, 1)
    assert torch.equal(cut[A], torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.0, 0.0]]))
    assert torch.equal(cut[B], torch.tensor([[1.0, 0.0, 0.0], [4.0, 0.0, 0.0]]))
    assert torch.equal(state[A], torch.arange(6.0).reshape(3, 2))  # the global state is not touched
    assert truncate_rank(state, 3) == state


@pytest.mark.parametrize(
    "method, algorithm, upload",
    [("svd", "fedavg", "int8"), ("flora", "fedprox", "none"), ("naive", "scaffold", "none")],
)
def test_clients_of_mixed_ranks_train_within_their_rank_in_one_federation(
    method, algorithm, upload, tiny_model_dir, tmp_path, monkeypatch
):
    """Also under FedProx's pull towards x and SCAFFOLD's correction c - c_i, whose components beyond
    a client's rank come from the other clients: the client trains against them within its rank.
    Its bytes follow its rank: it sends (and receives) its first r_i components alone."""
    from openfedllm import rounds
    from openfedllm.cli import main

    seen = []
    real = rounds.LocalClients.train_round

    def recorded(self, algorithm, round_index, sampled, task, merges):
        updates = real(self, algorithm, round_index, sampled, task, merges)
        seen.extend(updates)
        return updates

    monkeypatch.setattr(rounds.LocalClients, "train_round", recorded)
    ranks = [2, 4, 8]
    out = tmp_path / method
    args = tiny_run_args(tiny_model_dir, out, "--fed.lora_aggregation", method, "--fed.client_ranks", "[2, 4, 8]")
    args += ["--fed.algorithm", algorithm, "--fed.fedprox_mu", "0.5", "--comm.upload", upload]
    assert main([*args, *NO_BASELINE_ARGS]) == 0
    federated = seen[:6]  # 3 rounds x 2 sampled clients
    assert {u.client_id for u in federated} == {0, 1, 2}
    for u in federated:
        for module in modules(u.weights):
            product = u.weights[module.b_key].double() @ u.weights[module.a_key].double()
            assert torch.linalg.matrix_rank(product) <= ranks[u.client_id], (method, u.client_id, module.name)
    # per component of rank: d_in + d_out values per module (an 8-byte scale per tensor for int8)
    per_rank = sum(
        t.shape[1] + _adapter(out)[k.replace(".lora_A.", ".lora_B.")].shape[0]
        for k, t in _adapter(out).items()
        if ".lora_A." in k
    )
    tensors = len(_adapter(out))
    clients = [r for r in _records(out) if r["type"] == "client" and r["phase"] == "federated"]
    assert len(clients) == 6
    for r in clients:
        rank = ranks[r["client"]]
        if upload == "int8":  # int8 values, then a float32 scale per tensor
            assert r["bytes_up"] == (128 + rank * per_rank) + (128 + 4 * tensors)
        else:  # float32 values; SCAFFOLD's c_i change beside them
            assert r["bytes_up"] == (128 + 4 * rank * per_rank) * (2 if algorithm == "scaffold" else 1)
        if method == "svd":
            assert r["bytes_down"] == 128 + 4 * rank * per_rank  # x at the client's rank
    errors = [r["aggregation_error"] for r in _records(out) if r["type"] == "aggregation"]
    if method == "flora":  # the stacked factors take any mix of ranks exactly
        assert all(e < 1e-6 for round_errors in errors for e in round_errors.values())
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def test_client_ranks_must_fit_the_federation(tiny_model_dir, tmp_path, capsys):
    from openfedllm.cli import main

    for value, message in [
        ("[2, 4]", "one rank per client (3), got 2"),
        ("[2, 4, 16]", "each rank must be an integer in 1..lora.rank (8)"),
    ]:
        assert main(tiny_run_args(tiny_model_dir, tmp_path / "x", "--fed.client_ranks", value)) == 2
        assert message in capsys.readouterr().err
    args = tiny_run_args(
        tiny_model_dir, tmp_path / "x", "--fed.client_ranks", "[2, 4, 8]", "--fed.lora_aggregation", "ffa"
    )
    assert main(args) == 2
    assert "not with fed.lora_aggregation ffa" in capsys.readouterr().err


def test_methods_are_compared_with_naive_seed_by_seed_with_a_paired_t_test():
    from openfedllm.experiment import versus_lines

    rows = [{"method": "naive", "seed": s, "accuracy_mean": 0.5, "accuracy_own": 0.5, "loss": 1.0} for s in (1, 2, 3)]
    rows += [
        {"method": "svd", "seed": s, "accuracy_mean": 0.5 + d, "accuracy_own": 0.5, "loss": 1.0}
        for s, d in zip((1, 2, 3), (0.1, 0.2, 0.3))
    ]
    text = "\n".join(versus_lines(rows))
    # by hand: differences 0.1, 0.2, 0.3: mean 0.2, sd 0.1, t = 0.2 / (0.1 / sqrt 3) = 3.464, 2 df: p = 0.074
    assert "- svd: all domains +0.200 (p=0.07, not significant); own domain +0.000 (p=1.00, not significant)" in text


def test_a_node_with_its_own_data_file_trains_at_its_own_rank(tmp_path):
    """A data-path node runs a federation of one (flower/node.py): its config keeps its rank alone,
    validates, and the shared client code picks that rank."""
    import yaml

    from openfedllm.config import build, to_dict
    from openfedllm.errors import UserError
    from openfedllm.flower.node import node_run_config
    from openfedllm.rounds import client_rank

    rows = tmp_path / "mine.json"
    rows.write_text(json.dumps([{"instruction": f"Say {i}.", "output": str(i)} for i in range(8)]))
    text = yaml.safe_dump(to_dict(build({"fed": {"num_clients": 3, "client_ranks": [2, 4, 8]}})))
    config = node_run_config(text, {"partition-id": "2", "data-path": str(rows)})
    config.validate()
    assert config.fed.client_ranks == [8] and client_rank(config, 2) == 8
    simulated = build({"fed": {"num_clients": 3, "client_ranks": [2, 4, 8]}})
    assert [client_rank(simulated, c) for c in range(3)] == [2, 4, 8]
    with pytest.raises(UserError, match="partition-id=3, but fed.client_ranks has 3 ranks"):
        node_run_config(text, {"partition-id": "3", "data-path": str(rows)})


def test_ranks_by_data_size(tiny_model_dir, tmp_path):
    from openfedllm.cli import main
    from openfedllm.lora_aggregation import ranks_by_size

    # sizes 10, 3, 7, 3: ascending (ties by id) clients 1, 3, 2, 0; two equal groups
    assert ranks_by_size([2, 4], [10, 3, 7, 3]) == [4, 2, 4, 2]
    # position p of 5 takes tier floor(3p / 5): positions 0-1, 2-3, 4
    assert ranks_by_size([2, 4, 8], [5, 6, 7, 8, 9]) == [2, 2, 4, 4, 8]
    assert ranks_by_size([4], [1, 2]) == [4, 4]
    # a run: the ranks its clients' sizes give are written out (and used) as fed.client_ranks
    out = tmp_path / "run"
    args = tiny_run_args(tiny_model_dir, out, "--fed.rank_by_size", "[2, 8]", "--fed.split", "dirichlet")
    args += ["--fed.clients_per_round", "3", "--fed.rounds", "1"]
    assert main([*args, "--baselines.local", "false", "--baselines.centralized", "false"]) == 0
    written = yaml.safe_load((out / "config.yaml").read_text())["fed"]
    sizes = _sizes(out)
    assert len(set(sizes)) > 1  # the Dirichlet split gave the clients different sizes
    assert written["rank_by_size"] == [2, 8] and written["client_ranks"] == ranks_by_size([2, 8], sizes)


def _sizes(run_dir) -> list[int]:
    """Each client's training rows, from its client records (examples = n_i)."""
    seen: dict[int, int] = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["type"] == "client":
            seen[record["client"]] = record["examples"]
    return [seen[c] for c in sorted(seen)]
