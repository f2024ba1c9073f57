"""train.backward_precision (openfedllm/backward_precision.py): the backward pass's products through
frozen weights from bfloat16-rounded inputs; the forward pass and the trainable weights' gradients
stay float32.

What the products must equal depends on the CPU: where it multiplies bfloat16 natively (AMX,
AVX512-BF16), dL/dy and W rounded to bfloat16, then multiplied and summed in float32 (computed by
hand below from the rounded tensors); elsewhere torch keeps float32 and they equal the float32
product. Each test checks the branch of the machine it runs on.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from openfedllm import models
from openfedllm.backward_precision import BF16BackwardLinear, supported, use_bf16_backward
from openfedllm.batching import linear_cross_entropy
from openfedllm.client import LocalSteps, train_local
from openfedllm.data.templates import IGNORE, Tokenized


def _rounded(a: torch.Tensor) -> torch.Tensor:
    return a.to(torch.bfloat16).to(torch.float32)


def _expected_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _rounded(a) @ _rounded(b) if supported() else a @ b


def test_a_frozen_layer_computes_float32_forward_and_its_input_gradient_from_bfloat16_inputs():
    torch.manual_seed(0)
    layer = nn.Linear(64, 96).requires_grad_(False)
    weight, bias = layer.weight.clone(), layer.bias.clone()
    assert use_bf16_backward(nn.Sequential(layer)) == 1 and type(layer) is BF16BackwardLinear
    assert list(layer.state_dict()) == ["weight", "bias"] and torch.equal(layer.weight, weight)
    x = torch.randn(4, 32, 64, requires_grad=True)
    y = layer(x)
    assert torch.equal(y, F.linear(x, weight, bias))  # the forward is float32, bit for bit
    g = torch.randn(4, 32, 96)
    y.backward(g)
    expected = _expected_product(g.reshape(-1, 96), weight).reshape(4, 32, 64)
    torch.testing.assert_close(x.grad, expected, rtol=1e-5, atol=1e-5)
    exact = g @ weight
    if supported():  # the rounding is real: ~2^-9 relative per input
        assert not torch.allclose(x.grad, exact, rtol=1e-5, atol=1e-5)
        assert float((x.grad - exact).norm() / exact.norm()) < 1e-2
    else:
        torch.testing.assert_close(x.grad, exact, rtol=1e-5, atol=1e-5)


def test_a_trainable_layer_and_a_layer_outside_autograd_stay_float32():
    torch.manual_seed(1)
    layer = nn.Linear(64, 96)  # trainable: its own gradient and its input's stay float32
    plain = nn.Linear(64, 96)
    plain.load_state_dict(layer.state_dict())
    use_bf16_backward(nn.Sequential(layer))
    x = torch.randn(128, 64, requires_grad=True)
    x_plain = x.detach().clone().requires_grad_(True)
    g = torch.randn(128, 96)
    layer(x).backward(g)
    plain(x_plain).backward(g)
    assert torch.equal(x.grad, x_plain.grad) and torch.equal(layer.weight.grad, plain.weight.grad)
    layer.requires_grad_(False)
    with torch.no_grad():  # evaluation: nothing to differentiate, plain F.linear
        assert torch.equal(layer(x), plain(x))
    # the precision setting is restored after each backward product
    assert torch.backends.mkldnn.matmul.fp32_precision != "bf16"


def test_the_output_layer_keeps_float32_losses_and_rounds_its_gradient_product():
    torch.manual_seed(2)
    head = nn.Linear(32, 300, bias=False).requires_grad_(False)
    hidden = torch.randn(96, 32, requires_grad=True)  # chunks of 32 rows: large enough for oneDNN
    targets = torch.randint(0, 300, (96,))
    plain_losses = linear_cross_entropy(hidden.detach().requires_grad_(True), head, targets, chunk=32)
    use_bf16_backward(nn.Sequential(head))
    losses = linear_cross_entropy(hidden, head, targets, chunk=32)
    assert torch.equal(losses, plain_losses)
    losses.sum().backward()
    # d CE / d hidden = (softmax - onehot) W, the product taken from the rounded inputs; the softmax
    # as the implementation computes it (chunk by chunk, exp of log_softmax), so that rounding to
    # bfloat16 sees the same float32 inputs
    expected = []
    for start in range(0, 96, 32):
        probs = torch.log_softmax(F.linear(hidden.detach()[start : start + 32], head.weight), dim=-1).exp()
        probs[torch.arange(len(probs)), targets[start : start + 32]] -= 1.0
        expected.append(_expected_product(probs, head.weight))
    torch.testing.assert_close(hidden.grad, torch.cat(expected), rtol=1e-4, atol=1e-6)


def test_on_a_lora_model_only_the_frozen_products_change_and_the_first_loss_is_the_same(tiny_model_dir):
    torch.manual_seed(0)
    plain = models.add_lora(models.load_base_model(str(tiny_model_dir)), 4, 8, 0.1, ["q_proj", "v_proj"])
    torch.manual_seed(0)
    ours = models.add_lora(models.load_base_model(str(tiny_model_dir)), 4, 8, 0.1, ["q_proj", "v_proj"])
    changed = use_bf16_backward(ours)
    linears = [m for m in plain.modules() if type(m) is nn.Linear]
    assert changed == len(linears) > 0  # the frozen base layers, lm_head, and LoRA's A and B
    assert all(type(m.base_layer) is BF16BackwardLinear for m in ours.modules() if hasattr(m, "lora_dropout"))
    before = models.trainable_state(ours)
    assert before.keys() == models.trainable_state(plain).keys()
    assert all(torch.equal(before[k], v) for k, v in models.trainable_state(plain).items())
    ids = torch.tensor([[1, 5, 9, 3, 7, 2]])
    plain.eval(), ours.eval()
    assert torch.equal(plain(input_ids=ids).logits, ours(input_ids=ids).logits)

    rows = [_row(i) for i in range(8)]
    steps = LocalSteps(steps=3, batch_size=4, lr=1e-3, seed=5, pad_id=0, weight_decay=0.0, max_grad_norm=1.0)
    reference = train_local(plain, rows, steps)
    result = train_local(ours, rows, steps)
    # the same masks and the same float32 forward: step 1's loss is the same number
    assert result.losses[0] == reference.losses[0]
    assert result.losses == pytest.approx(reference.losses, abs=1e-3)
    moved = models.trainable_state(ours)
    if supported():
        assert any(not torch.equal(moved[k], v) for k, v in models.trainable_state(plain).items())
    else:
        assert all(torch.equal(moved[k], v) for k, v in models.trainable_state(plain).items())


def _row(i: int) -> Tokenized:
    ids = [1 + (i * 7 + j * 3) % 40 for j in range(12 + i)]
    return Tokenized(input_ids=ids, labels=[IGNORE] * 6 + ids[6:], prompt_len=6)


def test_the_setting_reaches_the_model_a_run_loads(tiny_model_dir):
    from openfedllm.config import build
    from openfedllm.setup import load_model

    config = build({"model": {"name": str(tiny_model_dir)}, "train": {"backward_precision": "bfloat16"}})
    model = load_model(config, str(tiny_model_dir), torch.device("cpu"))
    assert any(type(m) is BF16BackwardLinear for m in model.modules())
    config = build({"model": {"name": str(tiny_model_dir)}})
    assert config.train.backward_precision == "float32"
    model = load_model(config, str(tiny_model_dir), torch.device("cpu"))
    assert not any(type(m) is BF16BackwardLinear for m in model.modules())
