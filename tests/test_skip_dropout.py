"""SkipDropout (openfedllm/skip_dropout.py): nn.Dropout's distribution, drawn by geometric skips."""

import pytest
import torch

from openfedllm import models
from openfedllm.skip_dropout import SkipDropout, dropped_positions, use_skip_dropout


@pytest.mark.parametrize("p", [0.05, 0.3])
@pytest.mark.parametrize("draws", [None, 3])  # 3: a batch of gaps rarely reaches n, so the draw continues
def test_each_position_is_dropped_independently_with_probability_p(p, draws):
    torch.manual_seed(0)
    n, trials = 40, 5000
    masks = torch.zeros(trials, n)
    for t in range(trials):
        positions = dropped_positions(n, p, draws)
        assert bool(torch.all(positions[1:] > positions[:-1]))  # sorted, no position twice
        assert positions.numel() == 0 or (int(positions[0]) >= 0 and int(positions[-1]) < n)
        masks[t, positions] = 1.0
    # Binomial(trials, p) per position: standard error sqrt(p (1 - p) / trials) <= 0.0065
    rate = masks.mean(0)
    assert float((rate - p).abs().max()) < 0.03, rate  # every position, the first and the last too
    # independence: neighbours dropped together with probability p^2, counts with variance n p (1 - p)
    both = (masks[:, :-1] * masks[:, 1:]).mean()
    assert float(both) == pytest.approx(p * p, rel=0.2)
    counts = masks.sum(1)
    assert float(counts.mean()) == pytest.approx(n * p, rel=0.05)
    assert float(counts.var()) == pytest.approx(n * p * (1 - p), rel=0.1)


def test_survivors_are_scaled_and_the_gradient_passes_through_the_same_positions():
    torch.manual_seed(1)
    x = torch.randn(3, 50, 16, requires_grad=True)
    weight = torch.randn(3, 50, 16)
    y = SkipDropout(0.2)(x)
    kept = y != 0
    assert 0.7 < float(kept.float().mean()) < 0.9
    torch.testing.assert_close(y[kept], x.detach()[kept] / 0.8)
    (y * weight).sum().backward()
    torch.testing.assert_close(x.grad, torch.where(kept, weight / 0.8, torch.zeros(())))


def test_a_transposed_input_keeps_its_shape():
    torch.manual_seed(2)
    x = torch.randn(16, 30).t()
    y = SkipDropout(0.1)(x)
    assert y.shape == (30, 16)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / 0.9)


def test_it_is_plain_dropout_where_it_does_not_pay_and_off_outside_training():
    x = torch.randn(20, 20)
    drop = SkipDropout(0.05)
    drop.eval()
    assert drop(x) is x
    many = SkipDropout(0.7)  # above 1/2: torch's own mask, the same stream as nn.Dropout
    torch.manual_seed(3)
    ours = many(x)
    torch.manual_seed(3)
    torch.testing.assert_close(ours, torch.nn.functional.dropout(x, 0.7, True))
    assert isinstance(drop, torch.nn.Dropout)  # so disable_dropout (p = 0) reaches it


def test_add_lora_puts_it_on_every_lora_layer_and_leaves_the_adapter_state_as_peft_makes_it(tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    ours = models.add_lora(models.load_base_model(str(tiny_model_dir)), 4, 8, 0.1, ["q_proj", "v_proj"])
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["q_proj", "v_proj"], bias="none")
    theirs = get_peft_model(models.load_base_model(str(tiny_model_dir)), config)
    layers = [m for m in ours.modules() if hasattr(m, "lora_dropout")]
    assert layers and all(type(m.lora_dropout["default"]) is SkipDropout for m in layers)
    assert all(m.lora_dropout["default"].p == 0.1 for m in layers)
    mine, peft_own = models.trainable_state(ours), models.trainable_state(theirs)
    assert mine.keys() == peft_own.keys()
    assert all(torch.equal(mine[k], peft_own[k]) for k in mine)
    # in evaluation the two models compute the same thing
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours(input_ids=ids).logits, theirs(input_ids=ids).logits)
    # no dropout (p = 0): peft's nn.Identity stays
    none = models.add_lora(models.load_base_model(str(tiny_model_dir)), 4, 8, 0.0, ["q_proj"])
    assert use_skip_dropout(none) == 0
    models.disable_dropout(ours)
    assert all(m.lora_dropout["default"].p == 0.0 for m in layers)
