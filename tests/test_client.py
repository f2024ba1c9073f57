import pytest
import torch

from openfedllm import models
from openfedllm.client import LocalSteps, StepHooks, batch_order, cosine_lr, train_local
from openfedllm.data import suite
from openfedllm.data.templates import tokenize


def test_batch_order_visits_every_row_once_per_pass():
    batches = batch_order(num_rows=6, num_batches=6, batch_size=2, seed=0)
    flat = [i for b in batches for i in b]
    assert sorted(flat[:6]) == list(range(6)) and sorted(flat[6:]) == list(range(6))
    assert batches == batch_order(6, 6, 2, seed=0) and batches != batch_order(6, 6, 2, seed=1)


def test_cosine_lr_endpoints():
    assert cosine_lr(0, 10, 1e-3, 1e-5) == pytest.approx(1e-3)
    assert cosine_lr(5, 10, 1e-3, 1e-5) == pytest.approx((1e-3 + 1e-5) / 2)
    assert cosine_lr(0, 1, 1e-3, 1e-5) == 1e-3  # one round: the peak rate


@pytest.fixture(scope="module")
def lora_model(tiny_model_dir):
    tokenizer = models.load_tokenizer(str(tiny_model_dir))
    torch.manual_seed(0)
    model = models.add_lora(models.load_base_model(str(tiny_model_dir)), 4, 8, 0.0, ["q_proj", "v_proj"])
    rows = [tokenize(e, "chat", tokenizer, 128) for e in suite.generate(8, seed=0)]
    return model, tokenizer, rows


def _train(model, tokenizer, rows, initial, **kwargs):
    models.load_trainable_state(model, initial)
    hooks = kwargs.pop("hooks", None)
    settings = dict(
        steps=2,
        batch_size=8,
        grad_accum=1,
        lr=1e-2,
        weight_decay=0.0,
        max_grad_norm=0.0,
        seed=3,
        pad_id=tokenizer.pad_token_id,
    )
    settings.update(kwargs)
    result = train_local(model, rows, LocalSteps(**settings), hooks=hooks)
    return result, models.trainable_state(model)


def test_gradient_accumulation_equals_one_large_batch(lora_model):
    model, tokenizer, rows = lora_model
    initial = models.trainable_state(model)
    big, state_big = _train(model, tokenizer, rows, initial, batch_size=8, grad_accum=1)
    acc, state_acc = _train(model, tokenizer, rows, initial, batch_size=4, grad_accum=2)
    assert acc.loss == pytest.approx(big.loss, rel=1e-5)
    assert acc.tokens == big.tokens
    for name in state_big:
        torch.testing.assert_close(state_acc[name], state_big[name], rtol=1e-4, atol=1e-6)


def test_training_lowers_the_loss_and_hooks_are_called(lora_model):
    model, tokenizer, rows = lora_model
    initial = models.trainable_state(model)
    calls = {"extra": 0, "after": 0}

    def extra():
        calls["extra"] += 1
        return torch.zeros(())

    def after():
        calls["after"] += 1

    first, _ = _train(model, tokenizer, rows, initial, steps=1)
    _, trained = _train(
        model,
        tokenizer,
        rows,
        initial,
        steps=6,
        grad_accum=2,
        batch_size=4,
        hooks=StepHooks(extra_loss=extra, after_backward=after),
    )
    assert calls == {"extra": 6, "after": 6}  # once per optimizer step each
    models.load_trainable_state(model, trained)
    again, _ = _train(model, tokenizer, rows, trained, steps=1, lr=0.0)
    assert again.loss < first.loss


def test_splitting_a_batch_into_passes_keeps_the_gradient(lora_model):
    model, tokenizer, rows = lora_model
    initial = models.trainable_state(model)
    whole, state_whole = _train(model, tokenizer, rows, initial, max_tokens_per_pass=0)
    split, state_split = _train(model, tokenizer, rows, initial, max_tokens_per_pass=1)  # one sequence a pass
    assert split.loss == pytest.approx(whole.loss, rel=1e-5)
    for name in state_whole:
        torch.testing.assert_close(state_split[name], state_whole[name], rtol=1e-4, atol=1e-6)


def test_trainable_parameters_are_the_live_tensors_of_the_state(lora_model):
    model, _, _ = lora_model
    params = models.trainable_parameters(model)
    state = models.trainable_state(model)
    assert params.keys() == state.keys()
    for name, p in params.items():
        assert p.requires_grad and torch.equal(p.detach(), state[name])


def test_sgd_step_is_minus_lr_times_the_gradient(lora_model):
    from openfedllm.batching import make_batch, packing_works, token_losses
    from openfedllm.data.templates import IGNORE

    model, tokenizer, rows = lora_model
    initial = models.trainable_state(model)
    models.load_trainable_state(model, initial)
    # the gradient of the mean token loss of the one batch train_local will draw (seed 3, 8 rows)
    model.train()
    torch.manual_seed(3)
    batch = make_batch(
        [rows[i] for i in batch_order(len(rows), 1, 8, 3)[0]], tokenizer.pad_token_id, packing_works(model)
    )
    loss_sum, count = token_losses(model, batch)
    assert count == int((batch["labels"][:, 1:] != IGNORE).sum())
    (loss_sum / count).backward()
    grads = {n: p.grad.clone() for n, p in models.trainable_parameters(model).items()}
    model.zero_grad(set_to_none=True)

    _, trained = _train(model, tokenizer, rows, initial, steps=1, optimizer="sgd", lr=0.5)
    for name, g in grads.items():
        torch.testing.assert_close(trained[name], initial[name] - 0.5 * g, rtol=1e-4, atol=1e-6)
