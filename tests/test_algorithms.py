"""Each algorithm's rule on tensors small enough to compute the expected numbers by hand."""

import io
import math

import pytest
import torch

from openfedllm.algorithms import ALGORITHMS, ClientTask, ClientUpdate, build_algorithm, describe, weighted_mean
from openfedllm.algorithms.fedavg import FedAvg
from openfedllm.algorithms.fedavgm import FedAvgM
from openfedllm.algorithms.fedopt import FedAdagrad, FedAdam, FedYogi
from openfedllm.algorithms.fedprox import FedProx
from openfedllm.algorithms.scaffold import Scaffold
from openfedllm.config import FedConfig
from openfedllm.errors import UserError


def _update(cid, value, n):
    return ClientUpdate(cid, {"w": torch.tensor(value, dtype=torch.float32)}, n)


def test_fedavg_weights_by_example_count():
    w0, w1 = [1.0, 4.0], [4.0, -2.0]
    new = FedAvg().aggregate({"w": torch.zeros(2)}, [_update(0, w0, 1), _update(1, w1, 2)])
    expected = [(w0[k] * 1 + w1[k] * 2) / 3 for k in range(2)]  # [3.0, 0.0]
    assert new["w"].tolist() == pytest.approx(expected)


def test_fedavg_of_one_client_is_that_client():
    new = FedAvg().aggregate({"w": torch.zeros(2)}, [_update(7, [0.5, -1.5], 13)])
    assert new["w"].tolist() == [0.5, -1.5]


def test_fedavg_ignores_the_old_global_model():
    updates = [_update(0, [2.0], 5), _update(1, [2.0], 5)]
    assert FedAvg().aggregate({"w": torch.tensor([100.0])}, updates)["w"].tolist() == [2.0]


def test_weighted_mean_keeps_dtype_and_shape():
    a = {"x": torch.ones(2, 3, dtype=torch.bfloat16)}
    b = {"x": torch.full((2, 3), 3.0, dtype=torch.bfloat16)}
    out = weighted_mean([a, b], [1, 1])
    assert out["x"].dtype == torch.bfloat16 and out["x"].shape == (2, 3)
    assert torch.all(out["x"] == 2.0)


def test_weighted_mean_rejects_empty_and_zero_weights():
    with pytest.raises(ValueError):
        weighted_mean([], [])
    with pytest.raises(ValueError):
        weighted_mean([{"x": torch.ones(1)}], [0])


def test_registry_rejects_unknown_names_listing_valid_ones():
    assert "fedavg" in ALGORITHMS
    with pytest.raises(UserError, match="unknown algorithm 'fedavgg'; valid: fedavg, fedprox, scaffold"):
        build_algorithm(FedConfig(algorithm="fedavgg"))


def test_fedavg_has_no_server_state_and_plain_client_steps():
    algo = FedAvg()
    assert algo.state_dict() == {}
    hooks = algo.client_hooks({}, ClientTask({}, {}, 0.1, 1), {})
    assert hooks.extra_loss is None and hooks.after_backward is None and hooks.after_step is None


# --- helpers for the rules below: one scalar tensor "w" per state, so every number is checkable by hand


def _x(value):
    return {"w": torch.tensor([value], dtype=torch.float32)}


def _y(cid, value, n, extras=None):
    return ClientUpdate(cid, _x(value), n, extras={"w": torch.tensor([extras])} if extras is not None else {})


def _value(state):
    return state["w"].item()


def test_every_algorithm_is_registered_with_its_paper():
    assert list(ALGORITHMS) == ["fedavg", "fedprox", "scaffold", "fedavgm", "fedadagrad", "fedyogi", "fedadam"]
    for name in ALGORITHMS:
        algo = build_algorithm(FedConfig(algorithm=name))
        assert isinstance(algo, ALGORITHMS[name])
        assert "et al." in describe(name)


def test_the_config_choice_is_the_registry():
    from typing import get_args

    from openfedllm.names import AlgorithmName

    assert get_args(AlgorithmName) == tuple(ALGORITHMS)


def test_the_config_defaults_are_each_algorithms_own():
    """config.py writes the algorithms' defaults out (so that it reads without torch): each must be
    the default of the class it configures."""
    for name, cls in ALGORITHMS.items():
        assert vars(cls.from_config(FedConfig())) == vars(cls()), name


def test_config_values_reach_the_algorithms():
    fed = FedConfig(
        fedprox_mu=0.5,
        scaffold_server_lr=0.3,
        scaffold_correction="gradient",
        fedavgm_server_lr=0.7,
        fedavgm_momentum=0.2,
        fedopt_server_lr=0.05,
        fedopt_beta1=0.8,
        fedopt_beta2=0.9,
        fedopt_tau=0.1,
        fedopt_second_moment="momentum",
        fedavgm_damped=True,
        fedopt_first_moment="delta",
    )
    assert FedProx.from_config(fed).mu == 0.5
    s = Scaffold.from_config(fed)
    s.start([4, 5])
    assert (s.server_lr, s.correction, s.total_examples) == (0.3, "gradient", 9)
    m = FedAvgM.from_config(fed)
    assert (m.server_lr, m.momentum, m.damped) == (0.7, 0.2, True)
    a = FedAdam.from_config(fed)
    assert (a.server_lr, a.beta1, a.beta2, a.tau, a.second_moment, a.first_moment) == (
        0.05,
        0.8,
        0.9,
        0.1,
        "momentum",
        "delta",
    )


# --- FedProx (Li et al. 2020)


def test_fedprox_term_and_its_gradient():
    w = torch.nn.Parameter(torch.tensor([1.0, 3.0]))
    task = ClientTask(global_state={"w": torch.tensor([0.0, 1.0])}, message={}, lr=0.1, steps=1)
    hooks = FedProx(mu=0.2).client_hooks({"w": w}, task, {})
    term = hooks.extra_loss()
    # (mu / 2) * ||w - x||^2 = 0.1 * (1^2 + 2^2)
    assert term.item() == pytest.approx(0.5)
    term.backward()
    assert w.grad.tolist() == pytest.approx([0.2 * 1.0, 0.2 * 2.0])  # mu * (w - x)


def test_fedprox_with_mu_zero_is_fedavg():
    hooks = FedProx(mu=0.0).client_hooks({"w": torch.nn.Parameter(torch.ones(1))}, ClientTask(_x(0.0), {}, 0.1, 1), {})
    assert hooks.extra_loss is None and hooks.after_backward is None and hooks.after_step is None
    updates = [_y(0, 1.0, 1), _y(1, 4.0, 2)]
    assert FedProx(mu=0.0).aggregate(_x(9.0), updates) == FedAvg().aggregate(_x(9.0), updates)


# --- FedAvgM (Hsu et al. 2019)


def test_fedavgm_two_rounds_by_hand():
    algo = FedAvgM(server_lr=2.0, momentum=0.5)
    # Delta = ((2 - 1) * 1 + (4 - 1) * 2) / 3 = 7/3;  v = 7/3;  x = 1 + 2 * 7/3 = 17/3
    x1 = algo.aggregate(_x(1.0), [_y(0, 2.0, 1), _y(1, 4.0, 2)])
    assert _value(x1) == pytest.approx(17 / 3)
    # Both clients move by +1: Delta = 1;  v = 0.5 * 7/3 + 1 = 13/6;  x = 17/3 + 2 * 13/6 = 10
    x2 = algo.aggregate(x1, [_y(0, 17 / 3 + 1, 1), _y(1, 17 / 3 + 1, 2)])
    assert _value(x2) == pytest.approx(10.0)


def test_fedavgm_damped_is_the_references_convention_by_hand():
    assert not FedAvgM().damped and not FedConfig().fedavgm_damped  # Hsu et al. by default
    algo = FedAvgM(server_lr=1.0, momentum=0.5, damped=True)
    # round 1: v = Delta = 7/3 (no damping yet);  x = 1 + 7/3 = 10/3
    x1 = algo.aggregate(_x(1.0), [_y(0, 2.0, 1), _y(1, 4.0, 2)])
    assert _value(x1) == pytest.approx(10 / 3)
    # round 2: Delta = 1;  v = 0.5 * 7/3 + 0.5 * 1 = 5/3;  x = 10/3 + 5/3 = 5
    x2 = algo.aggregate(x1, [_y(0, 10 / 3 + 1, 1), _y(1, 10 / 3 + 1, 2)])
    assert _value(x2) == pytest.approx(5.0)


def test_fedopt_first_moment_delta_is_the_references_first_round():
    assert FedAdam().first_moment == "zero" and FedConfig().fedopt_first_moment == "zero"
    algo = FedAdam(server_lr=0.1, beta1=0.9, beta2=0.99, tau=0.01, first_moment="delta")
    x1 = algo.aggregate(_x(0.5), ROUND_1)  # m = Delta = -0.025, not (1 - beta1) * Delta
    v1 = V_ROUND_1[FedAdam]
    assert _value(x1) == pytest.approx(0.5 + 0.1 * -0.025 / (math.sqrt(v1) + 0.01), rel=1e-6)
    # round 2 (Delta = 0): m = 0.9 * -0.025 as usual
    x2 = algo.aggregate(x1, [_y(0, _value(x1), 1), _y(1, _value(x1), 3)])
    assert _value(x2) == pytest.approx(_value(x1) + 0.1 * (0.9 * -0.025) / (math.sqrt(0.99 * v1) + 0.01), rel=1e-6)


def test_fedavgm_without_momentum_and_unit_rate_is_fedavg():
    updates = [
        ClientUpdate(0, {"w": torch.tensor([0.3, -1.7])}, 3),
        ClientUpdate(1, {"w": torch.tensor([2.1, 0.4])}, 5),
    ]
    x = {"w": torch.tensor([0.5, 0.25])}
    torch.testing.assert_close(
        FedAvgM(server_lr=1.0, momentum=0.0).aggregate(x, updates)["w"],
        FedAvg().aggregate(x, updates)["w"],
        rtol=0,
        atol=1e-7,
    )


# --- FedAdagrad, FedYogi, FedAdam (Reddi et al. 2021, Algorithm 2)
# x = 0.5; y_0 = 0.7 (1 example), y_1 = 0.4 (3 examples): Delta = (0.2 * 1 - 0.1 * 3) / 4 = -0.025.
# eta = 0.1, beta1 = 0.9, beta2 = 0.99, tau = 0.01: m = 0.1 * -0.025 = -0.0025, v starts at tau^2 = 1e-4.
ROUND_1 = [_y(0, 0.7, 1), _y(1, 0.4, 3)]
V_ROUND_1 = {
    FedAdagrad: 1e-4 + 0.025**2,
    FedYogi: 1e-4 - 0.01 * 0.025**2 * -1,  # sign(v - Delta^2) = sign(1e-4 - 6.25e-4) = -1
    FedAdam: 0.99 * 1e-4 + 0.01 * 0.025**2,
}


@pytest.mark.parametrize("cls", [FedAdagrad, FedYogi, FedAdam])
def test_fedopt_two_rounds_by_hand(cls):
    algo = cls(server_lr=0.1, beta1=0.9, beta2=0.99, tau=0.01)
    x1 = algo.aggregate(_x(0.5), ROUND_1)
    v1 = V_ROUND_1[cls]
    expected_x1 = 0.5 + 0.1 * -0.0025 / (math.sqrt(v1) + 0.01)
    assert _value(x1) == pytest.approx(expected_x1, rel=1e-6)
    # Round 2: the clients return x unchanged, Delta = 0: m decays, v keeps (Adagrad, Yogi) or decays (Adam).
    x2 = algo.aggregate(x1, [_y(0, _value(x1), 1), _y(1, _value(x1), 3)])
    v2 = 0.99 * v1 if cls is FedAdam else v1
    assert _value(x2) == pytest.approx(_value(x1) + 0.1 * (0.9 * -0.0025) / (math.sqrt(v2) + 0.01), rel=1e-6)


def test_yogi_second_moment_shrinks_when_above_delta_squared():
    algo = FedYogi(server_lr=0.1, beta1=0.0, beta2=0.5, tau=1.0)  # v starts at tau^2 = 1 > Delta^2
    algo.aggregate(_x(0.0), [_y(0, 0.5, 1)])  # Delta = 0.5: v = 1 - 0.5 * 0.25 * sign(1 - 0.25) = 0.875
    assert algo.v["w"].item() == pytest.approx(0.875)


def test_fedadam_momentum_squared_is_a_named_option_not_the_default():
    assert FedAdam().second_moment == "delta" and FedConfig().fedopt_second_moment == "delta"
    algo = FedAdam(server_lr=0.1, beta1=0.9, beta2=0.99, tau=0.01, second_moment="momentum")
    x1 = algo.aggregate(_x(0.5), ROUND_1)
    v1 = 0.99 * 1e-4 + 0.01 * 0.0025**2  # m^2 instead of Delta^2
    assert _value(x1) == pytest.approx(0.5 + 0.1 * -0.0025 / (math.sqrt(v1) + 0.01), rel=1e-6)


@pytest.mark.parametrize("cls", [FedAdagrad, FedYogi, FedAdam, FedAvgM])
def test_server_state_saved_and_restored_mid_run_gives_the_same_result(cls):
    rounds = [[_y(0, 0.7 + 0.1 * r, 1), _y(1, 0.4 - 0.05 * r, 3)] for r in range(4)]

    straight, x = cls(), _x(0.5)
    for updates in rounds:
        x = straight.aggregate(x, updates)

    first, y = cls(), _x(0.5)
    for updates in rounds[:2]:
        y = first.aggregate(y, updates)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)  # as a checkpoint stores it
    buffer.seek(0)
    second = cls()
    second.load_state_dict(torch.load(buffer, weights_only=True))
    for updates in rounds[2:]:
        y = second.aggregate(y, updates)
    assert torch.equal(x["w"], y["w"])
    assert not torch.equal(x["w"], cls().aggregate(_x(0.5), rounds[3])["w"])  # the state mattered


# --- SCAFFOLD (Karimireddy et al. 2020, option II)


def test_scaffold_client_control_variate_option_two():
    # x = 1, y_i = 0.4, c = 0.1, c_i = 0.3, K = 2, lr = 0.5: c_i+ = 0.3 - 0.1 + (1 - 0.4) / (2 * 0.5) = 0.8
    task = ClientTask(global_state=_x(1.0), message={"w": torch.tensor([0.1])}, lr=0.5, steps=2)
    change, state = Scaffold().client_finish(task, _x(0.4), {"w": torch.tensor([0.3])})
    assert state["w"].item() == pytest.approx(0.8)
    assert change["w"].item() == pytest.approx(0.5)  # c_i+ - c_i: what the client sends


def test_scaffold_server_rule_by_hand():
    # 8 examples over all clients; sampled: client 0 with 1 example, client 1 with 3.
    algo = Scaffold(server_lr=0.5, total_examples=8)
    x = algo.aggregate(_x(1.0), [_y(0, 0.0, 1, extras=2.0), _y(1, 3.0, 3, extras=-1.0)])
    # Delta = (-1 * 1 + 2 * 3) / 4 = 1.25;  x = 1 + 0.5 * 1.25
    assert _value(x) == pytest.approx(1.625)
    # c = 0 + (1/8) * 2 + (3/8) * (-1)
    assert algo.control["w"].item() == pytest.approx(-0.125)
    assert algo.server_message()["w"].item() == pytest.approx(-0.125)


def test_scaffold_with_equal_client_sizes_uses_the_papers_one_over_n():
    algo = Scaffold(server_lr=1.0, total_examples=4 * 2)  # N = 4 clients of 2 examples
    algo.aggregate(_x(0.0), [_y(0, 0.0, 2, extras=0.6), _y(1, 0.0, 2, extras=0.2)])
    assert algo.control["w"].item() == pytest.approx((0.6 + 0.2) / 4)


@pytest.mark.parametrize("correction", ["update", "gradient"])
def test_scaffold_corrected_sgd_step_is_g_minus_ci_plus_c(correction):
    w0, g, c, c_i, lr = 1.0, 0.3, 0.5, 0.2, 0.1
    w = torch.nn.Parameter(torch.tensor([w0]))
    task = ClientTask(global_state=_x(w0), message={"w": torch.tensor([c])}, lr=lr, steps=1)
    hooks = Scaffold(correction=correction).client_hooks({"w": w}, task, {"w": torch.tensor([c_i])})
    optimizer = torch.optim.SGD([w], lr=lr)
    w.grad = torch.tensor([g])
    if hooks.after_backward:
        hooks.after_backward()
    optimizer.step()
    if hooks.after_step:
        hooks.after_step()
    assert w.item() == pytest.approx(w0 - lr * (g - c_i + c))  # 1 - 0.1 * 0.6 = 0.94


def test_scaffold_with_zero_control_variates_takes_plain_steps():
    task = ClientTask(global_state=_x(0.0), message={}, lr=0.1, steps=1)
    hooks = Scaffold().client_hooks({"w": torch.nn.Parameter(torch.zeros(1))}, task, {})
    assert hooks.after_backward is None and hooks.after_step is None


def test_scaffold_state_is_saved_and_restored():
    algo = Scaffold(total_examples=4)
    algo.aggregate(_x(0.0), [_y(0, 1.0, 2, extras=0.5)])
    other = Scaffold(total_examples=4)
    other.load_state_dict(algo.state_dict())
    assert torch.equal(other.control["w"], algo.control["w"])
