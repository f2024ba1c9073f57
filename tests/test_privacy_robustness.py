"""Differential privacy, robust aggregation and attacks (issue 21): each rule by hand and against
the reference implementation (Flower's aggregate functions, dp-accounting), then runs on the tiny
model through the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from openfedllm import attacks
from openfedllm.algorithms import ClientUpdate
from openfedllm.cli import main
from openfedllm.combine import Combiner, client_side
from openfedllm.config import build
from openfedllm.errors import UserError
from openfedllm.privacy import dp_fedavg
from openfedllm.privacy.accountant import Accountant
from openfedllm.robust import AGGREGATORS, bound, moves_of, norm

from .conftest import interrupted_after_round_2_then_resumed, tiny_run_args

NO_BASELINES = ("--baselines.local", "false", "--baselines.centralized", "false")


def vectors(*rows):
    """Moves of one tensor "w" each, from plain lists."""
    return [{"w": torch.tensor(r, dtype=torch.float64)} for r in rows]


# ---- robust rules, by hand ----


def test_median_by_hand_odd_and_even():
    got, _ = AGGREGATORS["median"](vectors([1.0, -5.0], [2.0, 0.0], [10.0, 1.0]), [1, 1, 1])
    assert got["w"].tolist() == [2.0, 0.0]
    got, _ = AGGREGATORS["median"](vectors([1.0], [2.0], [3.0], [100.0]), [1, 1, 1, 1])
    assert got["w"].tolist() == [2.5]  # the mean of the two middle values


def test_trimmed_mean_by_hand():
    rows = [[float(v)] for v in [0, 1, 2, 3, 4, 5, 6, 7, 8, 1000]]
    got, _ = AGGREGATORS["trimmed_mean"](vectors(*rows), [1] * 10, trim_fraction=0.1)
    assert got["w"].item() == pytest.approx(sum(range(1, 9)) / 8)  # 0 and 1000 dropped
    got, _ = AGGREGATORS["trimmed_mean"](vectors(*rows), [1] * 10, trim_fraction=0.0)
    assert got["w"].item() == pytest.approx((sum(range(9)) + 1000) / 10)  # nothing trimmed: the mean


def test_krum_picks_the_client_closest_to_its_neighbours():
    # three honest clients near (1, 1), one far away: n = 4, f = 1 -> each scores its 1 nearest
    moves = vectors([1.0, 1.0], [1.1, 1.0], [1.0, 1.2], [9.0, -9.0])
    # scores: 0 -> 0.01 (to 1), 1 -> 0.01 (to 0), 2 -> 0.04 (to 0), 3 -> 64 + 100 = 164... (to 0)
    got, used = AGGREGATORS["krum"](moves, [1, 1, 1, 1], krum_byzantine=1)
    assert used == [0] and got["w"].tolist() == [1.0, 1.0]
    got, used = AGGREGATORS["multikrum"](moves, [1, 3, 1, 1], krum_byzantine=1)
    assert used == [0, 1, 2]  # n - f = 3 kept, the outlier out
    assert got["w"].tolist() == pytest.approx([(1.0 + 3 * 1.1 + 1.0) / 5, (1.0 + 3 * 1.0 + 1.2) / 5])


def test_robust_rules_equal_flowers_own_aggregation_functions():
    from flwr.server.strategy.aggregate import aggregate_krum, aggregate_median, aggregate_trimmed_avg

    rng = np.random.default_rng(0)
    clients = [[rng.normal(size=(3, 4)), rng.normal(size=5)] for _ in range(7)]
    sizes = [int(s) for s in rng.integers(1, 20, size=7)]
    moves = [{"a": torch.tensor(a), "b": torch.tensor(b)} for a, b in clients]
    results = list(zip(clients, sizes))
    for ours, theirs in [
        (AGGREGATORS["median"](moves, sizes)[0], aggregate_median(results)),
        (AGGREGATORS["trimmed_mean"](moves, sizes, trim_fraction=0.2)[0], aggregate_trimmed_avg(results, 0.2)),
        (AGGREGATORS["krum"](moves, sizes, krum_byzantine=2)[0], aggregate_krum(results, 2, 0)),
        (AGGREGATORS["multikrum"](moves, sizes, krum_byzantine=2)[0], aggregate_krum(results, 2, 5)),
    ]:
        np.testing.assert_allclose(ours["a"].numpy(), theirs[0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(ours["b"].numpy(), theirs[1], rtol=1e-12, atol=1e-12)


def test_norm_bound_clips_only_what_is_larger():
    moves = vectors([3.0, 4.0], [0.3, 0.4])  # norms 5 and 0.5
    out, cut = bound(moves, 1.0)
    assert cut == [True, False]
    assert out[0]["w"].tolist() == pytest.approx([0.6, 0.8]) and norm(out[0]) == pytest.approx(1.0)
    assert out[1]["w"].tolist() == [0.3, 0.4]


# ---- differential privacy ----


def test_dp_clipping_bounds_every_update_and_the_noise_has_its_scale():
    rng = torch.Generator().manual_seed(1)
    moves = [{"a": torch.randn(50, generator=rng, dtype=torch.float64) * s} for s in (0.01, 1.0, 30.0)]
    clipped, cut = bound(moves, 0.5)
    assert cut == [False, True, True]
    assert all(norm(m) <= 0.5 + 1e-12 for m in clipped)
    # zero moves: what remains is the noise alone, N(0, (z C / m)^2) per coordinate
    zeros = [{"a": torch.zeros(200_000, dtype=torch.float64)} for _ in range(4)]
    delta, _ = dp_fedavg.central(zeros, clip_norm=0.5, noise_std=1.3 * 0.5, per_round=4, seed=7)
    sample = delta["a"]
    expected = 1.3 * 0.5 / 4
    # the sample std of 200k normals is within 1% of the truth with overwhelming probability (SE ~0.16%)
    assert float(sample.std()) == pytest.approx(expected, rel=0.01)
    assert abs(float(sample.mean())) < 5 * expected / math.sqrt(sample.numel())


def test_local_dp_noises_a_clipped_move_on_the_client():
    x = {"w": torch.zeros(100_000)}
    y = {"w": torch.full((100_000,), 0.01)}  # norm 3.16 > C = 1
    cfg = build({"dp": {"clip_norm": 1.0, "noise_multiplier": 0.5, "mode": "local", "noise_seed": 3}})
    sent, state = client_side(cfg, x, y, {}, None, seed=11)
    noise = sent["w"].double() - 1.0 / math.sqrt(100_000) * 1.0  # the clipped move is C / sqrt(d) per coordinate
    assert float(noise.std()) == pytest.approx(0.5, rel=0.02)
    again, _ = client_side(cfg, x, y, state, None, seed=11)
    assert torch.equal(sent["w"], again["w"])  # the client's secret is kept in its state


def test_accountant_matches_dp_accounting_published_values():
    # dp-accounting 0.6, 2 rounds, delta 1e-5, 1 of 10 clients: a Gaussian of multiplier 1.0 sampled
    # without replacement is epsilon 2.77; without amplification 7.08 (../shared/FACTS.md). Under
    # replace-one a client moves the clipped sum by 2C, so our z = 2 is that multiplier 1.0.
    assert Accountant("central", 10, 1, 1e-5).epsilon([2.0, 2.0]) == pytest.approx(2.7656, abs=1e-3)
    assert Accountant("local", 10, 1, 1e-5).epsilon([2.0, 2.0]) == pytest.approx(7.0774, abs=1e-3)
    assert Accountant("central", 10, 1, 1e-5).epsilon([]) == 0.0


def test_accountant_is_at_least_the_exact_gaussian_epsilon():
    # one round, everyone sampled: an exact Gaussian mechanism of multiplier z/2 (Balle & Wang 2018's
    # analytic delta(eps) = Phi(1/(2s) - eps s) - e^eps Phi(-1/(2s) - eps s), s = z/2); RDP's
    # conversion is an upper bound, and not a loose one.
    from scipy.stats import norm as gauss

    z, delta = 3.0, 1e-5
    s = z / 2
    rdp = Accountant("central", 5, 5, delta).epsilon([z])

    def exact_delta(eps):
        return gauss.cdf(1 / (2 * s) - eps * s) - math.exp(eps) * gauss.cdf(-1 / (2 * s) - eps * s)

    low, high = 0.0, 50.0
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if exact_delta(mid) > delta else (low, mid)
    assert high <= rdp <= 1.5 * high


def test_target_epsilon_calibrates_the_noise_and_the_budget_is_checked():
    ledger = Accountant("central", 5, 2, 1e-5)
    z = ledger.calibrate(4.0, 3)
    assert ledger.epsilon([z] * 3) <= 4.0 + 1e-9
    assert ledger.epsilon([z * 0.98] * 3) > 4.0  # the smallest such z, to the tolerance
    assert ledger.rounds_within([], z, 4.0, 10) == 3
    with pytest.raises(UserError, match=r"dp.target_epsilon 1: 3 rounds at dp.noise_multiplier 1 spend epsilon"):
        build(
            {"fed": {"rounds": 3}, "dp": {"clip_norm": 1.0, "noise_multiplier": 1.0, "target_epsilon": 1.0}}
        ).validate()


def test_adaptive_clipping_moves_c_toward_the_quantile():
    # every move clipped: the unclipped share is 0 < gamma, C grows by exp(eta * gamma) (no count noise)
    grown = dp_fedavg.adapt(1.0, [True] * 4, 4, 0.0, quantile=0.5, lr=0.2, seed=0)
    assert grown == pytest.approx(math.exp(0.1))
    shrunk = dp_fedavg.adapt(1.0, [False] * 4, 4, 0.0, quantile=0.5, lr=0.2, seed=0)
    assert shrunk == pytest.approx(math.exp(-0.1))
    # Andrew et al. Theorem 1: the moves' share of z; with sigma_b large it tends to z
    assert dp_fedavg.update_noise_multiplier(1.0, 1e6) == pytest.approx(1.0)
    assert dp_fedavg.update_noise_multiplier(1.0, 1.0) == pytest.approx((1 - 0.25) ** -0.5)


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"fed": {"algorithm": "scaffold"}, "dp": {"clip_norm": 1, "noise_multiplier": 1}}, "scaffold"),
        ({"fed": {"aggregator": "median"}, "dp": {"clip_norm": 1, "noise_multiplier": 1}}, "dp.mode central"),
        ({"fed": {"lora_aggregation": "svd"}, "dp": {"clip_norm": 1, "noise_multiplier": 1}}, "svd"),
        ({"dp": {"clip_norm": 1}}, "clipping without noise"),
        ({"dp": {"noise_multiplier": 1}}, "dp: set dp.clip_norm"),
        ({"dp": {"clip_norm": 1, "target_epsilon": 3, "mode": "local"}}, "dp.mode local"),
        ({"attack": {"fraction": 0.4, "kind": "flip_preferences"}}, "flip_preferences"),
        ({"attack": {"fraction": 0.05}}, "rounds to no malicious client"),
        ({"fed": {"aggregator": "krum", "krum_byzantine": 5}}, "krum_byzantine"),
        ({"secagg": {"enabled": True}, "fed": {"algorithm": "scaffold"}}, "secagg: not with fed.algorithm scaffold"),
        ({"secagg": {"enabled": True}, "fed": {"aggregator": "median"}}, "secagg: not with fed.aggregator median"),
        ({"secagg": {"enabled": True}, "dp": {"clip_norm": 1, "noise_multiplier": 1}}, "secagg: not with dp.mode"),
        ({"secagg": {"enabled": True}, "fed": {"lora_aggregation": "svd"}}, "secagg: not with fed.lora_aggregation"),
        ({"secagg": {"enabled": True}, "fed": {"clients_per_round": 1}}, "secagg: needs at least 2 clients"),
        ({"secagg": {"enabled": True, "num_shares": 3, "reconstruction_threshold": 3}}, "must be less than"),
        ({"secagg": {"enabled": True, "quantization_range": 2**30}}, "overflow the 2.32 mask range"),
    ],
)
def test_unsound_combinations_are_refused_in_one_line(raw, message):
    with pytest.raises(UserError, match=message) as info:
        build(raw).validate()
    assert "\n" not in str(info.value)


# ---- attacks ----


def test_update_attacks_by_hand():
    x, y = {"w": torch.tensor([1.0, 1.0])}, {"w": torch.tensor([2.0, 0.0])}  # move (1, -1)
    assert attacks.attack_update("sign_flip", 3.0, x, y, 0)["w"].tolist() == [-2.0, 4.0]
    assert attacks.attack_update("scale", 3.0, x, y, 0)["w"].tolist() == [4.0, -2.0]
    big = {"w": torch.zeros(100_000)}, {"w": torch.full((100_000,), 0.5)}  # rms of the move 0.5
    noised = attacks.attack_update("noise", 2.0, *big, seed=1)["w"]
    assert float(noised.std()) == pytest.approx(1.0, rel=0.02)


def test_malicious_clients_are_a_seeded_share():
    cfg = build({"fed": {"num_clients": 10}, "attack": {"fraction": 0.3}})
    bad = attacks.malicious_clients(cfg)
    assert len(bad) == 3 and bad == attacks.malicious_clients(cfg)
    assert attacks.kind_of(cfg, bad[0], "federated") == "sign_flip"
    assert attacks.kind_of(cfg, bad[0], "local") is None  # the baselines are honest references


def test_data_poisoning_flips_pairs_and_swaps_in_harmful_rows():
    from openfedllm.data.preference import PairRow
    from openfedllm.data.templates import Tokenized

    def row(tag):
        return Tokenized([tag], [tag], 0)

    cfg = build(
        {
            "fed": {"num_clients": 2},
            "train": {"objective": "dpo"},
            "attack": {"fraction": 0.5, "kind": "flip_preferences"},
        }
    )
    bad = attacks.malicious_clients(cfg)[0]
    pairs = [PairRow(row(1), row(2), 0.1, 0.2) for _ in range(4)]
    clients = [[0, 1], [2, 3]]
    attacks.poison(cfg, {"train_rows": pairs, "train_domains": ["g"] * 4}, clients, [])
    for cid, rows in enumerate(clients):
        flipped = cid == bad
        for i in rows:
            assert (pairs[i].chosen.input_ids, pairs[i].ref_chosen) == (([2], 0.2) if flipped else ([1], 0.1))

    cfg = build(
        {"fed": {"num_clients": 2}, "attack": {"fraction": 0.5, "kind": "harmful_data", "poison_fraction": 0.5}}
    )
    bad = attacks.malicious_clients(cfg)[0]
    data = {"train_rows": [row(i) for i in range(8)], "train_domains": ["g"] * 8}
    out = attacks.poison(cfg, data, [[0, 1, 2, 3], [4, 5, 6, 7]], [row(-1), row(-2)])
    assert sum(data["train_domains"][i] == attacks.HARMFUL for i in out[bad]) == 2
    assert all(data["train_domains"][i] == "g" for i in out[1 - bad])


# ---- runs on the tiny model ----


def final_eval(out):
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["type"] == "eval" and r["phase"] == "federated"]
    return evals[0], evals[-1], records


ATTACK_RUN = (
    *NO_BASELINES,
    "--fed.num_clients",
    "5",
    "--fed.clients_per_round",
    "0",
    "--train.lr",
    "1e-2",
    "--lora.dropout",
    "0",
)


@pytest.mark.slow
def test_a_sign_flipping_client_breaks_fedavg_and_the_median_holds(tiny_model_dir, tmp_path):
    attack = ("--attack.fraction", "0.2", "--attack.kind", "sign_flip", "--attack.scale", "10")
    losses = {}
    for name, extra in [("honest", ()), ("fedavg", attack), ("median", (*attack, "--fed.aggregator", "median"))]:
        out = tmp_path / name
        assert main(tiny_run_args(tiny_model_dir, out, *ATTACK_RUN, *extra)) == 0
        before, after, records = final_eval(out)
        losses[name] = (before["loss"], after["loss"])
    before = losses["honest"][0]
    assert losses["honest"][1] < before - 0.1  # training helps
    assert losses["fedavg"][1] > before  # one attacker in five undoes it and more
    assert abs(losses["median"][1] - losses["honest"][1]) < 0.05  # the median keeps the honest course
    summary = json.loads((tmp_path / "median" / "summary.json").read_text())
    bad = summary["attack"]["malicious_clients"]
    assert len(bad) == 1
    clients = [r for r in records if r["type"] == "client"]
    assert all(r.get("malicious", False) == (r["client"] in bad) for r in clients)


@pytest.mark.slow
def test_dp_run_reports_epsilon_each_round_and_resumes_within_its_budget(monkeypatch, tiny_model_dir, tmp_path):
    ledger = Accountant("central", 4, 2, 1e-5)
    budget = ledger.epsilon([1.5] * 3) * 1.001  # three rounds fit, four do not
    dp = ("--dp.clip_norm", "0.05", "--dp.noise_multiplier", "1.5", "--dp.noise_seed", "5", "--fed.num_clients", "4")
    dp += ("--dp.target_epsilon", str(budget))
    straight = tmp_path / "straight"
    assert main(tiny_run_args(tiny_model_dir, straight, *NO_BASELINES, *dp)) == 0
    _, last, records = final_eval(straight)
    privacy = [r for r in records if r["type"] == "privacy"]
    assert [r["epsilon"] for r in privacy] == pytest.approx([ledger.epsilon([1.5] * k) for k in (1, 2, 3)])
    assert last["epsilon"] == privacy[-1]["epsilon"]
    for r in privacy:  # the share clipped is the share of moves longer than C
        norms = list(r["update_norms"].values())
        assert r["clipped"] == sum(n > 0.05 for n in norms) / len(norms)
    summary = json.loads((straight / "summary.json").read_text())
    assert summary["privacy"]["epsilon"] == pytest.approx(privacy[-1]["epsilon"])
    assert summary["privacy"]["noise_multiplier"] == 1.5
    # interrupted after round 2 and resumed: the same noise and sample (the secret is the checkpoint's)
    resumed = interrupted_after_round_2_then_resumed(tiny_model_dir, tmp_path, [*NO_BASELINES, *dp], monkeypatch)
    from safetensors.torch import load_file

    a = load_file(str(straight / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(resumed / "adapter" / "adapter_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # one more round would pass the budget: extending stops before it, in one line
    assert main(["sft", "--resume", str(resumed), "--fed.rounds", "4"]) == 2


def test_a_calibrated_run_extended_past_its_budget_stops_before_the_first_round_over():
    ledger = Accountant("central", 5, 2, 1e-5)
    budget = ledger.epsilon([1.5] * 3) * 1.001
    cfg = build({"fed": {"rounds": 5, "clients_per_round": 2}, "dp": {"clip_norm": 1.0, "target_epsilon": budget}})
    combiner = Combiner(cfg, rounds=5, secret=1, clip_norm=1.0, noise_multiplier=1.5, spent=[1.5, 1.5])
    with pytest.raises(UserError, match=r"1 more fit, so the run stops before round 4"):
        combiner.check_budget(2)
    Combiner(cfg, rounds=3, secret=1, clip_norm=1.0, noise_multiplier=1.5, spent=[1.5, 1.5]).check_budget(2)


def test_combiner_state_survives_a_checkpoint():
    cfg = build(
        {
            "dp": {"clip_norm": 0.5, "noise_multiplier": 1.0, "adaptive_clipping": True, "clipped_count_stddev": 1.0},
            "fed": {"num_clients": 3},
        }
    )
    cfg.validate()
    first = Combiner.start(cfg)
    x = {"w": torch.zeros(4)}
    updates = [ClientUpdate(i, {"w": torch.full((4,), float(i + 1))}, 10) for i in range(3)]
    first(x, updates)
    second = Combiner.start(cfg)
    second.load_state_dict(first.state_dict())
    assert (second.secret, second.clip_norm, second.spent) == (first.secret, first.clip_norm, first.spent)
    assert second.clip_norm != 0.5  # adapted
    assert moves_of(x, updates)[2]["w"].tolist() == [3.0] * 4


def test_a_server_optimizer_steps_with_the_robust_delta():
    from openfedllm.algorithms import FedAvg, FedAvgM

    cfg = build({"fed": {"aggregator": "median", "num_clients": 3}})
    x = {"w": torch.tensor([1.0, 1.0])}
    ys = [[2.0, 1.0], [3.0, 0.0], [100.0, -50.0]]  # moves (1, 0), (2, -1), (99, -51): median (2, -1)
    updates = [ClientUpdate(i, {"w": torch.tensor(y)}, 10 * (i + 1)) for i, y in enumerate(ys)]
    fedavg = FedAvg()
    fedavg.combine = Combiner.start(cfg)
    assert fedavg.aggregate(x, updates)["w"].tolist() == [3.0, 0.0]
    momentum = FedAvgM(server_lr=0.5, momentum=0.9)
    momentum.combine = Combiner.start(cfg)
    first = momentum.aggregate(x, updates)["w"]  # v = Delta; x + 0.5 v
    assert first.tolist() == [2.0, 0.5]
    second = momentum.aggregate({"w": first}, updates)[
        "w"
    ]  # Delta = median(y_i - first) = (1, -0.5); v = 0.9 v + Delta
    assert second.tolist() == pytest.approx([2.0 + 0.5 * (0.9 * 2 + 1.0), 0.5 + 0.5 * (0.9 * -1 - 0.5)])


def test_a_secagg_reply_may_hold_the_protocol_and_numbers_only():
    """The server's check of each SecAgg+ stage's reply (flower/secagg.check_reply)."""
    from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
    from flwr.common import ndarray_to_bytes

    from openfedllm.flower.secagg import check_reply

    def masked(vector, *, metrics=None, status=None, params=None):
        content = RecordDict(
            {
                "secaggplus_configs": ConfigRecord(
                    {"masked_params": [ndarray_to_bytes(np.array([7])), ndarray_to_bytes(vector)]}
                ),
                "metrics": MetricRecord(metrics or {"loss": 1.5, "steps": 2, "num-examples": 12}),
                "fitres.metrics": ConfigRecord({}),
                "fitres.num_examples": MetricRecord({"num_examples": 12}),
                "fitres.parameters": params or ArrayRecord(),
                "fitres.status": ConfigRecord(status or {"code": 0, "message": ""}),
            }
        )
        return content

    good = np.arange(5, dtype=np.int64)
    check_reply(masked(good), "collect_masked_vectors", 5)
    check_reply(RecordDict({"secaggplus_configs": ConfigRecord({"pk1": b"k", "pk2": b"k"})}), "setup", 5)
    bad = [
        (masked(good.astype(np.float32)), "one integer vector"),  # an unmasked float update
        (masked(np.arange(6)), "one integer vector"),  # not the shared tensors' size
        (masked(good, metrics={"loss": 1.0, "text": 3}), "metric 'text'"),
        (masked(good, status={"code": 0, "message": "my secret row"}), "status"),
        (masked(good, params=ArrayRecord({"0": Array(np.zeros(5, np.float32))})), "unmasked arrays"),
    ]
    for content, message in bad:
        with pytest.raises(ValueError, match=message):
            check_reply(content, "collect_masked_vectors", 5)
    with pytest.raises(ValueError, match="record 'extra'"):
        check_reply(RecordDict({"secaggplus_configs": ConfigRecord({}), "extra": ConfigRecord({})}), "unmask", 5)
    with pytest.raises(ValueError, match="unexpected protocol keys"):
        check_reply(RecordDict({"secaggplus_configs": ConfigRecord({"pk1": b"k", "notes": b"x"})}), "setup", 5)
