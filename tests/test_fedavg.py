import pytest
import torch

from openfedllm.algorithms import ALGORITHMS, ClientUpdate, build_algorithm, weighted_mean
from openfedllm.algorithms.fedavg import FedAvg
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
    with pytest.raises(UserError, match="unknown algorithm 'fedavgg'; valid: fedavg"):
        build_algorithm(FedConfig(algorithm="fedavgg"))


def test_fedavg_has_no_server_state_and_plain_client_steps():
    algo = FedAvg()
    assert algo.state_dict() == {}
    hooks = algo.client_hooks(None, {}, 0)
    assert hooks.extra_loss is None and hooks.after_backward is None
