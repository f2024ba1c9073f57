"""The model as the benchmarks see it: chat answers, raw text continuations, and log-likelihoods.

One object serves `openfedllm eval`, `openfedllm serve` and evaluation during training, so the
three measure the same thing. Log-likelihoods follow lm-evaluation-harness: the context and the
continuation are encoded together and the continuation's tokens are what the whole encoding has
beyond the context's, so a word is scored as the tokenizer would really split it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..batching import _split_head, make_batch, packing_works, row_logprobs
from ..data.templates import IGNORE, Tokenized, dialogue_prompt_ids
from ..evaluate import generate, progress_bar
from ..models import model_device

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from ..models import Model


@dataclass
class LM:
    model: Model
    tokenizer: PreTrainedTokenizerBase
    template: str = "chat"  # how chat prompts are written: the model's chat template, or vicuna / alpaca
    batch_size: int = 8
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    max_length: int = 2048  # prompt tokens kept (the end of a longer prompt)
    label: str = ""  # what the progress bars name (the benchmark being run)

    def chat(
        self, conversations: list[str | list[dict]], max_new_tokens: int | None = None, stop: tuple[str, ...] = ()
    ) -> list[str]:
        """The assistant's next turn for each conversation (a user message, or a message list)."""
        return self._generate([self.prompt_ids(c) for c in conversations], max_new_tokens, stop)

    def prompt_ids(self, conversation: str | list[dict]) -> list[int]:
        messages = [{"role": "user", "content": conversation}] if isinstance(conversation, str) else conversation
        return dialogue_prompt_ids(messages, self.template, self.tokenizer, self.max_length)

    def complete(self, prompts: list[str], max_new_tokens: int | None = None, stop: tuple[str, ...] = ()) -> list[str]:
        """Raw continuations of text prompts (few-shot prompts, code prompts), no chat template."""
        ids = [self.tokenizer(p)["input_ids"][-self.max_length :] for p in prompts]
        return self._generate(ids, max_new_tokens, stop)

    def _generate(self, ids, max_new_tokens, stop):
        return generate(
            self.model,
            ids,
            self.tokenizer,
            max_new_tokens or self.max_new_tokens,
            self.batch_size,
            temperature=self.temperature,
            stop=stop,
            desc=self.label,
        )

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        # a space that ends the context belongs to the continuation (" B", not "" after "Answer: ")
        spaces = len(context) - len(context.rstrip(" "))
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.tokenizer(context + continuation)["input_ids"]
        start = len(self.tokenizer(context)["input_ids"])
        return whole[:start], whole[start:]

    @torch.no_grad()
    def loglik(self, pairs: list[tuple[str, str]]) -> list[float]:
        """log p(continuation | context), summed over the continuation's tokens, per pair."""
        encoded = [self.encode_pair(c, x) for c, x in pairs]
        results = [0.0] * len(pairs)
        single = [i for i, (_, x) in enumerate(encoded) if len(x) == 1]
        # options of one token each ("A".."D", "yes"/"no") need one forward of the context, not one per option
        by_context: dict[tuple[int, ...], list[int]] = {}
        for i in single:
            by_context.setdefault(tuple(encoded[i][0][-self.max_length :]), []).append(i)
        contexts = list(by_context)
        bar = progress_bar(len(pairs), f"{self.label} log-likelihoods".strip(), "option")
        for start in range(0, len(contexts), self.batch_size):
            chunk = contexts[start : start + self.batch_size]
            for context, logprobs in zip(chunk, self._next_token_logprobs([list(c) for c in chunk])):
                for i in by_context[context]:
                    results[i] = float(logprobs[encoded[i][1][0]])
                bar.update(len(by_context[context]))
        rest = sorted((i for i, (_, x) in enumerate(encoded) if len(x) != 1), key=lambda i: sum(map(len, encoded[i])))
        packed = packing_works(self.model)
        for first in range(0, len(rest), self.batch_size):
            batch = rest[first : first + self.batch_size]
            rows = []
            for i in batch:
                head, tail = encoded[i]
                ids = (head + tail)[-self.max_length :]
                labels = ([IGNORE] * len(head) + tail)[-self.max_length :]
                rows.append(Tokenized(ids, labels, len(ids) - len(tail)))
            logps, _ = row_logprobs(self.model, make_batch(rows, self.tokenizer.pad_token_id, packed), len(rows))
            for i, value in zip(batch, logps.tolist()):
                results[i] = value
            bar.update(len(batch))
        bar.close()
        return results

    def _next_token_logprobs(self, contexts: list[list[int]]) -> torch.Tensor:
        """(contexts, vocab) log-probabilities of the token after each context (left-padded batch)."""
        width = max(map(len, contexts))
        ids = torch.full((len(contexts), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, c in enumerate(contexts):
            ids[row, width - len(c) :] = torch.tensor(c)
            mask[row, width - len(c) :] = 1
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        device = model_device(self.model)
        ids, mask, position_ids = ids.to(device), mask.to(device), position_ids.to(device)
        self.model.eval()
        split = _split_head(self.model)
        if split is None:
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids).logits[:, -1]
        else:  # the output layer at the last position only, not at every position
            decoder, head = split
            hidden = decoder(input_ids=ids, attention_mask=mask, position_ids=position_ids).last_hidden_state
            logits = head(hidden[:, -1])
        return torch.log_softmax(logits.float(), dim=-1).cpu()


def default_template(tokenizer) -> str:
    return "chat" if getattr(tokenizer, "chat_template", None) else "alpaca"
