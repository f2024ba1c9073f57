"""Prompt templates and tokenization with the loss on response tokens only.

A template turns an example into (prompt, completion) text. The prompt and the completion are
tokenized separately and concatenated, so the boundary between "no loss" and "loss" is exact
rather than recovered by searching for a response marker in the joined token ids (which breaks
when the tokenizer merges across the boundary).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from ..errors import UserError
from .example import Example

Template = Literal["alpaca", "vicuna", "chat"]
TEMPLATES = get_args(Template)
OverLength = Literal["truncate", "drop"]  # what happens to a training row longer than data.max_length

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
        full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}], tokenize=False)
        if not full.startswith(prompt):
            raise UserError(
                "data.template=chat: this model's chat template does not extend the "
                "generation prompt with the answer; use alpaca or vicuna"
            )
        return prompt, full[len(prompt) :]
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
    """Token ids with the loss on the completion only; None when truncation leaves no loss token
    (`max_length` 0: no truncation).

    A conversation (`example.turns`) is tokenized turn by turn, with the loss on every assistant
    turn; `prompt_len` is then the length before the first one.
    """
    segments = (
        conversation_segments(template, list(example.turns), tokenizer)
        if example.turns
        else list(zip(render(template, example, tokenizer), (False, True)))
    )
    input_ids: list[int] = []
    labels: list[int] = []
    prompt_len = None
    for k, (text, loss) in enumerate(segments):
        if max_length and len(input_ids) >= max_length:
            break  # truncation would drop the rest
        # The chat template writes its own special tokens; the plain templates get the tokenizer's
        # usual prefix (e.g. BOS for Llama tokenizers) once, at the start.
        ids = encode_head(
            tokenizer, text, k == 0 and template != "chat", max_length - len(input_ids) if max_length else 0
        )
        if loss and prompt_len is None:
            prompt_len = len(input_ids)
        input_ids += ids
        labels += ids if loss else [IGNORE] * len(ids)
    # no loss segment reached (prompt_len None): every label is IGNORE and truncate drops the row
    return truncate(Tokenized(input_ids, labels, len(input_ids) if prompt_len is None else prompt_len), max_length)


MARGIN = 16  # tokens past a cut that may tokenize differently from the whole text


def encode_head(tokenizer, text: str, special: bool, budget: int) -> list[int]:
    """The token ids of `text`, at least its first `budget` of them exactly (0: all).

    A long text is cut before it is tokenized (a 50 MB row tokenized whole costs ~12 GB of RAM):
    a prefix long enough to give more than budget + MARGIN tokens gives the same first `budget`
    tokens as the whole text, since a cut changes the tokenization only around itself.
    """
    n = 8 * (budget + MARGIN)
    while budget and n < len(text):
        ids = tokenizer(text[:n], add_special_tokens=special)["input_ids"]
        if len(ids) > budget + MARGIN:
            return ids[:budget]
        n *= 4
    return tokenizer(text, add_special_tokens=special)["input_ids"]


def encode_tail(tokenizer, text: str, special: bool, budget: int) -> list[int]:
    """The last `budget` token ids of `text` (0: all), cutting a long text from its start first."""
    n = 8 * (budget + MARGIN)
    while budget and n < len(text):
        ids = tokenizer(text[-n:], add_special_tokens=False)["input_ids"]
        if len(ids) > budget + MARGIN:
            return ids[-budget:]
        n *= 4
    ids = tokenizer(text, add_special_tokens=special)["input_ids"]
    return ids[-budget:] if budget else ids


def truncate(row: Tokenized, max_length: int) -> Tokenized | None:
    """The row cut at the end to `max_length` tokens (0: as it is); None if no loss token is left."""
    if max_length:
        row = Tokenized(row.input_ids[:max_length], row.labels[:max_length], row.prompt_len)
    if all(t == IGNORE for t in row.labels):
        return None
    return row


def conversation_segments(template: str, turns: list[tuple[str, str]], tokenizer) -> list[tuple[str, bool]]:
    """(text, carries loss) pieces of a whole conversation: each assistant turn is a loss piece."""
    messages = [{"role": role, "content": text} for role, text in turns]
    segments: list[tuple[str, bool]] = []
    if template == "chat":
        done = ""
        for k, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            prompt = tokenizer.apply_chat_template(messages[:k], tokenize=False, add_generation_prompt=True)
            full = tokenizer.apply_chat_template(messages[: k + 1], tokenize=False)
            if not prompt.startswith(done) or not full.startswith(prompt):
                raise UserError(
                    "data.template=chat: this model's chat template does not render a conversation "
                    "turn by turn (a later turn rewrites an earlier one); use alpaca or vicuna"
                )
            segments += [(prompt[len(done) :], False), (full[len(prompt) :], True)]
            done = full
        return segments
    system = " ".join(m["content"] for m in messages if m["role"] == "system")
    first_user = True
    for m in messages:
        if m["role"] == "system":
            continue
        if m["role"] == "assistant":
            if template == "vicuna":
                segments += [("ASSISTANT:", False), (f" {m['content']}{tokenizer.eos_token}", True)]
            else:
                segments.append((m["content"] + tokenizer.eos_token, True))
        elif template == "vicuna":
            segments.append(((f"{system or _VICUNA_SYSTEM} " if first_user else "") + f"USER: {m['content']} ", False))
        else:
            instruction = f"{system}\n\n{m['content']}" if system and first_user else m["content"]
            text = (
                _ALPACA.format(instruction=instruction)
                if first_user
                else f"\n\n### Instruction:\n{instruction}\n\n### Response:\n"
            )
            segments.append((text, False))
        if m["role"] == "user":
            first_user = False
    return segments


def prompt_ids(example: Example, template: str, tokenizer, max_length: int) -> list[int]:
    """The prompt alone, for generation; over-long prompts keep their end (where the question is)."""
    if example.turns:  # the conversation up to its last user turn
        history = [{"role": r, "content": t} for r, t in example.turns[:-1]]
        return dialogue_prompt_ids(history, template, tokenizer, max_length)
    prompt, _ = render(template, example, tokenizer)
    return encode_tail(tokenizer, prompt, template != "chat", max_length)


def dialogue_prompt_ids(messages: list[Message], template: str, tokenizer, max_length: int) -> list[int]:
    """A conversation's generation prompt (it ends with a user turn), keeping its end within max_length."""
    prompt, _ = render_dialogue(template, messages, "", tokenizer)
    return encode_tail(tokenizer, prompt, template != "chat", max_length)
