import pytest
import torch

from openfedllm.batching import collate, token_losses
from openfedllm.data.example import Example
from openfedllm.data.templates import IGNORE, render, tokenize
from openfedllm.errors import UserError
from openfedllm.models import load_base_model, load_tokenizer

EX = Example("Classify the animal: owl.", "bird", input="Answer with one word.", domain="general")


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return load_tokenizer(str(tiny_model_dir))


def _loss_text(tok, row):
    return tok.decode([t for t in row.labels if t != IGNORE])


def _prompt_text(tok, row):
    return tok.decode([t for t, lab in zip(row.input_ids, row.labels) if lab == IGNORE])


def test_alpaca_loss_covers_exactly_the_response_and_eos(tok):
    prompt, completion = render("alpaca", EX, tok)
    assert prompt.endswith("### Input:\nAnswer with one word.\n\n### Response:\n")
    row = tokenize(EX, "alpaca", tok, max_length=512)
    answer_ids = tok("bird", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert [t for t in row.labels if t != IGNORE] == answer_ids
    # the loss tokens are the last ones, and the prompt carries none
    assert row.labels[-len(answer_ids) :] == answer_ids
    assert all(t == IGNORE for t in row.labels[: len(row.labels) - len(answer_ids)])
    assert row.input_ids[-len(answer_ids) :] == answer_ids
    assert _loss_text(tok, row) == "bird<|im_end|>"


def test_alpaca_without_input_drops_the_input_section(tok):
    prompt, _ = render("alpaca", Example("Say hi.", "hi"), tok)
    assert "### Input" not in prompt and prompt.endswith("### Instruction:\nSay hi.\n\n### Response:\n")


def test_vicuna_loss_is_the_answer_after_assistant(tok):
    row = tokenize(EX, "vicuna", tok, max_length=512)
    assert _prompt_text(tok, row).endswith("USER: Classify the animal: owl.\n\nAnswer with one word. ASSISTANT:")
    assert _loss_text(tok, row) == " bird<|im_end|>"


def test_chat_template_loss_is_the_assistant_turn_only(tok):
    row = tokenize(EX, "chat", tok, max_length=512)
    assert _prompt_text(tok, row) == (
        "<|im_start|>user\nClassify the animal: owl.\n\nAnswer with one word.<|im_end|>\n<|im_start|>assistant\n"
    )
    assert _loss_text(tok, row) == "bird<|im_end|>\n"


def test_truncation_keeps_the_start_and_drops_rows_without_loss(tok):
    full = tokenize(EX, "alpaca", tok, max_length=512)
    cut = tokenize(EX, "alpaca", tok, max_length=full.prompt_len + 1)
    assert cut.input_ids == full.input_ids[: full.prompt_len + 1]
    assert [t for t in cut.labels if t != IGNORE] == [full.labels[full.prompt_len]]
    assert tokenize(EX, "alpaca", tok, max_length=full.prompt_len) is None


def test_unknown_template_is_a_user_error(tok):
    with pytest.raises(UserError, match="valid: alpaca, vicuna, chat"):
        render("llama9", EX, tok)


def test_loss_on_picked_positions_equals_the_full_model_loss(tiny_model_dir, tok):
    """The restricted output layer must give exactly the loss transformers computes."""
    model = load_base_model(str(tiny_model_dir))
    rows = [tokenize(Example(f"Add {i} and 2.", str(i + 2)), "alpaca", tok, 512) for i in range(3)]
    batch = collate(rows, tok.pad_token_id)
    assert batch["attention_mask"].sum(1).tolist() == [len(r.input_ids) for r in rows]
    loss_sum, count = token_losses(model, batch)
    reference = model(**batch).loss  # mean over label tokens, HF's own shift and masking
    assert count == sum(sum(t != IGNORE for t in r.labels) for r in rows)
    torch.testing.assert_close(loss_sum / count, reference, rtol=1e-5, atol=1e-6)
