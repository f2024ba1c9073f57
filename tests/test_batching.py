import pytest
import torch
import torch.nn.functional as F

from openfedllm import models
from openfedllm.batching import (
    collate,
    linear_cross_entropy,
    pack,
    packing_works,
    row_logprobs,
    split_passes,
    token_losses,
)
from openfedllm.data.templates import IGNORE, Tokenized

IG = IGNORE


def _row(ids, n_prompt):
    return Tokenized(list(ids), [IG] * n_prompt + list(ids[n_prompt:]), n_prompt)


def test_pack_places_whole_rows_first_fit_decreasing():
    a, b, c = _row([1, 2, 3, 4, 5, 6], 2), _row([7, 8, 9], 1), _row([10, 11], 1)
    batch = pack([b, a, c], pad_id=0)
    # capacity 6 (the longest row): [a] and [b, c] plus one padding token
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 5], [0, 1, 2, 0, 1, 0]]
    assert batch["labels"].tolist() == [[IG, IG, 3, 4, 5, 6], [IG, 8, 9, IG, 11, IG]]
    assert "attention_mask" not in batch  # transformers derives a block-diagonal mask from positions


def test_packed_and_padded_batches_give_the_same_loss_and_gradient(tiny_model_dir):
    torch.manual_seed(0)
    model = models.add_lora(models.load_base_model(str(tiny_model_dir)), 4, 8, 0.0, ["q_proj", "v_proj"])
    # make the adapter non-trivial so its gradient path matters
    models.load_trainable_state(model, {k: torch.randn_like(v) * 0.1 for k, v in models.trainable_state(model).items()})
    assert packing_works(model)
    g = torch.Generator().manual_seed(1)
    rows = [_row(torch.randint(3, 500, (n,), generator=g).tolist(), p) for n, p in [(40, 10), (17, 5), (12, 4), (9, 3)]]
    results = []
    for batch in (collate(rows, 0), pack(rows, 0)):
        model.zero_grad()
        loss_sum, count = token_losses(model, batch)
        (loss_sum / count).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        results.append((loss_sum.item(), count, grads))
    (loss_a, count_a, grads_a), (loss_b, count_b, grads_b) = results
    assert count_a == count_b == 30 + 12 + 8 + 6
    assert abs(loss_a - loss_b) < 1e-4 * abs(loss_a)
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-3, atol=1e-6)


def test_linear_cross_entropy_matches_autograd_in_value_and_gradient():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=True).requires_grad_(False)
    targets = torch.randint(0, 50, (37,))
    h1 = torch.randn(37, 16, requires_grad=True)
    h2 = h1.detach().clone().requires_grad_(True)
    fused = linear_cross_entropy(h1, head, targets, chunk=8)  # 5 chunks, the last one partial
    reference = F.cross_entropy(head(h2), targets, reduction="none")
    torch.testing.assert_close(fused, reference)
    # a different weight per token (as DPO's per-row weights are): each token's gradient scaled by its own
    weights = torch.linspace(-1.0, 2.0, 37)
    (fused * weights).sum().backward()
    (reference * weights).sum().backward()
    torch.testing.assert_close(h1.grad, h2.grad)
    with torch.no_grad():  # evaluation path: chunked, no gradient work
        torch.testing.assert_close(linear_cross_entropy(h1, head, targets, chunk=8), reference.detach())


def test_trainable_head_falls_back_to_autograd():
    head = torch.nn.Linear(8, 20)
    h = torch.randn(5, 8, requires_grad=True)
    t = torch.randint(0, 20, (5,))
    linear_cross_entropy(h, head, t).sum().backward()
    assert head.weight.grad is not None and h.grad is not None


def test_split_passes_bounds_tokens_per_pass_and_keeps_every_row():
    batch = {"input_ids": torch.arange(40).reshape(5, 8), "labels": torch.zeros(5, 8)}
    parts = split_passes(batch, max_tokens=16)  # two rows a pass at most: 3 passes, as even as can be
    assert [p["input_ids"].shape[0] for p in parts] == [2, 2, 1]
    assert [p["input_ids"].shape[0] for p in split_passes(batch, max_tokens=32)] == [3, 2]  # not 4 + 1
    assert len(split_passes(batch, max_tokens=40)) == 1
    assert torch.equal(torch.cat([p["input_ids"] for p in parts]), batch["input_ids"])
    assert len(split_passes(batch, max_tokens=0)) == 1
    assert [p["input_ids"].shape[0] for p in split_passes(batch, max_tokens=3)] == [1] * 5


def test_row_logprobs_are_each_rows_response_log_likelihood_padded_or_packed(tiny_model_dir):
    model = models.load_base_model(tiny_model_dir).eval()
    rows = [
        Tokenized([3, 4, 5, 6, 7], [IGNORE, IGNORE, 5, 6, 7], 2),
        Tokenized([8, 9, 10], [IGNORE, 9, 10], 1),
        Tokenized([11, 12, 13, 14], [IGNORE, IGNORE, IGNORE, 14], 3),
    ]
    with torch.no_grad():
        expected = []
        for r in rows:  # by hand: one row alone, log-softmax at each position whose next token is a label
            logp = torch.log_softmax(model(input_ids=torch.tensor([r.input_ids])).logits[0].float(), -1)
            expected.append(
                sum(float(logp[t - 1, r.input_ids[t]]) for t in range(1, len(r.labels)) if r.labels[t] != IGNORE)
            )
        for batch in (collate(rows, 0), pack(rows, 0)):
            logps, counts = row_logprobs(model, batch, len(rows))
            assert counts.tolist() == [3, 2, 1]
            torch.testing.assert_close(logps, torch.tensor(expected), rtol=1e-4, atol=1e-4)


def test_the_packing_check_refuses_a_model_that_attends_across_rows(tiny_model_dir, monkeypatch):
    """With positions that never restart, packed rows see each other: the check must notice, and its
    verdict must not depend on which adapter is loaded (float noise is far below cross-row change)."""
    from openfedllm import batching

    model = models.add_lora(models.load_base_model(str(tiny_model_dir)), 4, 8, 0.0, ["q_proj", "v_proj"])
    models.load_trainable_state(model, {k: torch.randn_like(v) * 0.5 for k, v in models.trainable_state(model).items()})
    assert batching.packing_works(model)
    real_pack = batching.pack

    def leaky_pack(rows, pad_id):
        batch = real_pack(rows, pad_id)
        batch["position_ids"] = torch.arange(batch["input_ids"].shape[1]).expand_as(batch["input_ids"]).clone()
        return batch

    monkeypatch.setattr(batching, "pack", leaky_pack)
    other = models.add_lora(models.load_base_model(str(tiny_model_dir)), 4, 8, 0.0, ["q_proj", "v_proj"])
    with pytest.warns(UserWarning, match="does not keep packed rows apart"):
        assert not batching.packing_works(other)
