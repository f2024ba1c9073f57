"""DPO: the losses by hand, the reference log-probs, the hooks of FL algorithms in a DPO step."""

import math

import pytest
import torch

from openfedllm import models
from openfedllm.algorithms import ClientTask
from openfedllm.algorithms.fedprox import FedProx
from openfedllm.algorithms.scaffold import Scaffold
from openfedllm.batching import collate, row_logprobs
from openfedllm.client import Batching, LocalSteps, train_local
from openfedllm.data.preference import tokenize_pair
from openfedllm.data.preference_suite import builtin_preferences
from openfedllm.dpo import DPOLoss, compute_reference, pair_groups, preference_loss, ranked_right


def _t(*values):
    return torch.tensor(values, dtype=torch.float64)


def test_losses_by_hand_on_tiny_log_probs():
    # pair 1: h = (-1 - -2) - (-3 - -2.5) = 1.5;  pair 2: h = (-4 - -2) - (-1 - -2) = -3
    pc, pr, rc, rr = _t(-1.0, -4.0), _t(-3.0, -1.0), _t(-2.0, -2.0), _t(-2.5, -2.0)
    beta = 0.5
    losses, chosen_r, rejected_r = preference_loss(pc, pr, rc, rr, beta, "sigmoid")
    assert losses.tolist() == pytest.approx([math.log1p(math.exp(-0.75)), math.log1p(math.exp(1.5))])
    assert chosen_r.tolist() == pytest.approx([0.5, -1.0]) and rejected_r.tolist() == pytest.approx([-0.25, 0.5])
    assert preference_loss(pc, pr, rc, rr, beta, "ipo")[0].tolist() == pytest.approx([(1.5 - 1) ** 2, (-3 - 1) ** 2])
    assert preference_loss(pc, pr, rc, rr, beta, "hinge")[0].tolist() == pytest.approx([0.25, 2.5])
    assert ranked_right(chosen_r, rejected_r).tolist() == [1.0, 0.0]


def test_policy_equal_to_reference_gives_the_degenerate_values():
    same = _t(-2.0, -7.0)
    for loss_type, expected in [("sigmoid", math.log(2)), ("hinge", 1.0), ("ipo", 1 / (4 * 0.1**2))]:
        losses, chosen_r, rejected_r = preference_loss(same, same + 1, same, same + 1, 0.1, loss_type)
        assert losses.tolist() == pytest.approx([expected] * 2)
        assert ranked_right(chosen_r, rejected_r).tolist() == [0.5, 0.5]  # ties count one half


def test_sigmoid_gradient_is_minus_beta_sigma_of_minus_beta_h():
    pc = _t(-1.0).requires_grad_(True)
    losses, _, _ = preference_loss(pc, _t(-3.0), _t(-2.0), _t(-2.5), 0.5, "sigmoid")
    losses.sum().backward()
    h = 1.5
    assert pc.grad.item() == pytest.approx(-0.5 / (1 + math.exp(0.5 * h)))  # -beta * sigmoid(-beta h)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    tokenizer = models.load_tokenizer(str(tiny_model_dir))
    train, _, _ = builtin_preferences(2, 1, seed=0)
    pairs = [tokenize_pair(p, "chat", tokenizer, 160, 96) for p in train[:6]]
    return tiny_model_dir, tokenizer, pairs


def _lora(model_dir, scale_b=0.0):
    torch.manual_seed(0)
    model = models.add_lora(models.load_base_model(str(model_dir)), 4, 8, 0.0, ["q_proj", "v_proj"])
    if scale_b:  # a trained-looking adapter: B != 0, so the adapter changes the model's outputs
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, scale_b)
    return model


def _one_by_one(model, pairs):
    """Each response's log-prob from its own unpadded forward pass: the numbers to compare against."""
    out = []
    with torch.no_grad():
        for p in pairs:
            for row in (p.chosen, p.rejected):
                logps, _ = row_logprobs(model, collate([row], 0), 1)
                out.append(float(logps[0]))
    return torch.tensor(out[0::2]), torch.tensor(out[1::2])


def test_reference_log_probs_are_the_base_models_with_the_adapter_disabled(tiny):
    model_dir, tokenizer, pairs = tiny
    base = models.load_base_model(str(model_dir)).eval()
    want_c, want_r = _one_by_one(base, pairs)
    model = _lora(model_dir, scale_b=0.5)
    compute_reference(model, pairs, tokenizer.pad_token_id, 4, packing=True, adapter_disabled=True)
    torch.testing.assert_close(torch.tensor([p.ref_chosen for p in pairs]), want_c, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.tensor([p.ref_rejected for p in pairs]), want_r, rtol=1e-4, atol=1e-4)
    compute_reference(model, pairs, tokenizer.pad_token_id, 4, packing=True, adapter_disabled=False)
    assert not torch.allclose(torch.tensor([p.ref_chosen for p in pairs]), want_c, atol=1e-3)  # the adapter counts


def test_dpo_step_loss_equals_the_loss_of_per_row_log_probs_and_passes_give_the_same_gradient(tiny):
    model_dir, tokenizer, pairs = tiny
    model = _lora(model_dir, scale_b=0.2)
    for p, (c, r) in zip(pairs, [(-30.0, -35.0), (-12.0, -9.0)] * 3):
        p.ref_chosen, p.ref_rejected = c, r
    pc, pr = _one_by_one(model, pairs)
    expected = preference_loss(
        pc,
        pr,
        torch.tensor([p.ref_chosen for p in pairs]),
        torch.tensor([p.ref_rejected for p in pairs]),
        0.1,
        "sigmoid",
    )[0].mean()
    params = [p for p in model.parameters() if p.requires_grad]
    grads = []
    for max_tokens in (0, 1):  # all pairs in one pass; one pair per pass
        assert len(pair_groups(pairs, max_tokens)) == (1 if max_tokens == 0 else len(pairs))
        model.zero_grad()
        batching = Batching(tokenizer.pad_token_id, True, max_tokens)
        stats = DPOLoss(0.1, "sigmoid")(model, [pairs[:4], pairs[4:]], batching)
        assert stats.loss == pytest.approx(float(expected), rel=1e-4)
        grads.append([p.grad.clone() for p in params])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def _sgd_step(model, pairs, tokenizer, hooks=None):
    train_local(
        model,
        pairs,
        LocalSteps(steps=1, batch_size=len(pairs), lr=0.5, seed=0, pad_id=tokenizer.pad_token_id, optimizer="sgd"),
        hooks=hooks,
        objective=DPOLoss(0.1, "sigmoid"),
    )
    return models.trainable_state(model)


def test_fedprox_term_and_scaffold_correction_act_in_the_dpo_step(tiny):
    """One SGD step on the DPO loss: FedProx adds lr * mu * (w - x), SCAFFOLD lr * (c - c_i)."""
    model_dir, tokenizer, pairs = tiny
    model = _lora(model_dir, scale_b=0.2)
    start = models.trainable_state(model)
    plain = _sgd_step(model, pairs, tokenizer)
    params = models.trainable_parameters(model)

    anchor = {k: v + 0.01 for k, v in start.items()}  # x: where the server's model is
    models.load_trainable_state(model, start)
    task = ClientTask(global_state=anchor, message={}, lr=0.5, steps=1)
    prox = _sgd_step(model, pairs, tokenizer, FedProx(mu=2.0).client_hooks(params, task, {}))
    for k in start:
        torch.testing.assert_close(prox[k], plain[k] - 0.5 * 2.0 * (start[k] - anchor[k]), rtol=1e-4, atol=1e-6)

    c = {k: torch.full_like(v, 0.03) for k, v in start.items()}
    c_i = {k: torch.full_like(v, -0.01) for k, v in start.items()}
    models.load_trainable_state(model, start)
    task = ClientTask(global_state=start, message=c, lr=0.5, steps=1)
    corrected = _sgd_step(model, pairs, tokenizer, Scaffold().client_hooks(params, task, c_i))
    for k in start:
        torch.testing.assert_close(corrected[k], plain[k] - 0.5 * (0.03 - -0.01), rtol=1e-4, atol=1e-6)


def test_rpo_adds_alpha_times_the_chosen_responses_mean_token_nll(tiny):
    model_dir, tokenizer, pairs = tiny
    model = _lora(model_dir, scale_b=0.2)
    for p in pairs:
        p.ref_chosen, p.ref_rejected = -20.0, -20.0
    pc, pr = _one_by_one(model, pairs)
    counts = torch.tensor([sum(t != -100 for t in p.chosen.labels[1:]) for p in pairs], dtype=torch.float32)
    dpo = preference_loss(pc, pr, torch.full_like(pc, -20.0), torch.full_like(pr, -20.0), 0.1, "sigmoid")[0]
    batching = Batching(tokenizer.pad_token_id, True, 0)
    plain = DPOLoss(0.1, "sigmoid")(model, [pairs], batching).loss
    with_nll = DPOLoss(0.1, "sigmoid", rpo_alpha=0.5)(model, [pairs], batching).loss
    assert plain == pytest.approx(float(dpo.mean()), rel=1e-4)
    assert with_nll == pytest.approx(float((dpo + 0.5 * -pc / counts).mean()), rel=1e-4)
