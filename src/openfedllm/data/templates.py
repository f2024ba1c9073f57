"""Prompt templates and tokenization with the loss on response tokens only.

A template turns an example into (prompt, completion) text. The prompt and the completion are
tokenized separately and concatenated, so the boundary between "no loss" and "loss" is exact
rather than recovered by searching for a response marker in the joined token ids (which breaks
when the tokenizer merges across the boundary).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from .example import Example

TEMPLATES = ("alpaca", "vicuna", "chat")

_ALPACA_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
_ALPACA = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
_VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant "
    "gives helpful, detailed, and polite answers to the user's questions."
)


def user_text(example: Example) -> str:
    return f"{example.instruction}\n\n{example.input}" if example.input else example.instruction


Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": ...}


def render(template: str, example: Example, tokenizer) -> tuple[str, str]:
    """(prompt, completion) text; the completion ends with the template's end-of-turn marker."""
    if template == "alpaca":
        fmt = _ALPACA_INPUT if example.input else _ALPACA
        prompt = fmt.format(instruction=example.instruction, input=example.input)
        return prompt, example.output + tokenizer.eos_token
    return render_dialogue(template, [{"role": "user", "content": user_text(example)}], example.output, tokenizer)


def render_dialogue(template: str, messages: list[Message], response: str, tokenizer) -> tuple[str, str]:
    """(prompt, completion) text of a conversation that ends with a user turn, answered by `response`.

    Earlier turns stay in the prompt (multi-turn preference data keeps its context); only the
    final response is the completion.
    """
    if template == "chat":
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(
            messages + [{"role": "assistant", "content": response}], tokenize=False
        )
        if not full.startswith(prompt):
            raise UserError("data.template=chat: this model's chat template does not extend the "
                            "generation prompt with the answer; use alpaca or vicuna")
        return prompt, full[len(prompt):]
    if template == "vicuna":
        system = " ".join(m["content"] for m in messages if m["role"] == "system")
        turns = [m for m in messages if m["role"] != "system"]
        text = (system or _VICUNA_SYSTEM) + " "
        for m in turns:
            if m["role"] == "user":
                text += f"USER: {m['content']} "
            else:
                text += f"ASSISTANT: {m['content']}{tokenizer.eos_token}"
        return text + "ASSISTANT:", " " + response + tokenizer.eos_token
    if template == "alpaca":
        # Alpaca has one instruction: earlier turns become the instruction's context.
        lines = [m["content"] for m in messages if m["role"] == "system"]
        turns = [m for m in messages if m["role"] != "system"]
        if len(turns) == 1:
            lines.append(turns[0]["content"])
        else:
            lines += [f"{'User' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in turns]
        return _ALPACA.format(instruction="\n\n".join(lines)), response + tokenizer.eos_token
    raise UserError(f"data.template: unknown template {template!r}; valid: {', '.join(TEMPLATES)}")


def check_template(template: str, tokenizer) -> None:
    if template not in TEMPLATES:
        raise UserError(f"data.template: unknown template {template!r}; valid: {', '.join(TEMPLATES)}")
    if template == "chat" and not getattr(tokenizer, "chat_template", None):
        raise UserError("data.template=chat: this model has no chat template; use alpaca or vicuna")


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]  # -100 where no loss is taken (the prompt)
    prompt_len: int


IGNORE = -100


def tokenize(example: Example, template: str, tokenizer, max_length: int) -> Tokenized | None:
    """Token ids with the loss on the completion only; None when truncation leaves no loss token."""
    prompt, completion = render(template, example, tokenizer)
    # The chat template writes its own special tokens; the plain templates get the tokenizer's
    # usual prefix (e.g. BOS for Llama tokenizers).
    prompt_ids = tokenizer(prompt, add_special_tokens=template != "chat")["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    input_ids = (prompt_ids + completion_ids)[:max_length]
    labels = ([IGNORE] * len(prompt_ids) + completion_ids)[:max_length]
    if all(t == IGNORE for t in labels):
        return None
    return Tokenized(input_ids, labels, len(prompt_ids))


def prompt_ids(example: Example, template: str, tokenizer, max_length: int) -> list[int]:
    """The prompt alone, for generation; over-long prompts keep their end (where the question is)."""
    prompt, _ = render(template, example, tokenizer)
    ids = tokenizer(prompt, add_special_tokens=template != "chat")["input_ids"]
    return ids[-max_length:]


def dialogue_prompt_ids(messages: list[Message], template: str, tokenizer, max_length: int) -> list[int]:
    """A conversation's generation prompt (it ends with a user turn), keeping its end within max_length."""
    prompt, _ = render_dialogue(template, messages, "", tokenizer)
    return tokenizer(prompt, add_special_tokens=template != "chat")["input_ids"][-max_length:]
