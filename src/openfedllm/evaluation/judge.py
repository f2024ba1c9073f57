"""An LLM judge behind any OpenAI-compatible chat-completions endpoint (MT-Bench's single-answer
grading, Zheng et al. 2023, "Judging LLM-as-a-Judge with MT-Bench and Chatbot Arena").

The judge is named by a base URL and a model (`--judge-url`, `--judge-model`, or the environment
variables OPENFEDLLM_JUDGE_URL and OPENFEDLLM_JUDGE_MODEL); the key, if the endpoint wants one,
comes from OPENFEDLLM_JUDGE_API_KEY or OPENAI_API_KEY and is never written anywhere. The prompts
are FastChat's single-answer grading prompts (judge_prompts.jsonl: single-v1, single-math-v1 and
their multi-turn forms); `--judge-prompts FILE` reads another judge_prompts.jsonl. A rating is
the number in "[[8]]" (or "[8]"); a judgment without one counts as unparsed, never as a score.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass

from ..errors import UserError

_RULES = (
    "Begin your evaluation by providing a short explanation. Be as objective as possible. After providing "
    "your explanation, you must rate the response on a scale of 1 to 10 by strictly following this format: "
    '"[[rating]]", for example: "Rating: [[5]]".'
)
_MATH_RULES = (
    "Your evaluation should consider correctness and helpfulness. You will be given a reference answer "
    "and the assistant's answer. {focus}Begin your evaluation by comparing the assistant's answer with the "
    "reference answer. Identify and correct any mistakes. Be as objective as possible. After providing "
    "your explanation, you must rate the response on a scale of 1 to 10 by strictly following this "
    'format: "[[rating]]", for example: "Rating: [[5]]".'
)
_JUDGE = (
    "Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant "
    "to the user question{shown}. "
)
_GENERAL = (
    "Your evaluation should consider factors such as the helpfulness, relevance, accuracy, depth, creativity, "
    "and level of detail of the response. "
)
# "You evaluation": FastChat's typo, kept so that the judge reads FastChat's prompt byte for byte.
_SECOND = "You evaluation should focus on the assistant's answer to the second user question. "
_CONVERSATION = (
    "<|The Start of Assistant A's Conversation with User|>\n\n### User:\n{question_1}\n\n"
    "### Assistant A:\n{answer_1}\n\n### User:\n{question_2}\n\n### Assistant A:\n{answer_2}\n\n"
    "<|The End of Assistant A's Conversation with User|>"
)

PROMPTS = {
    "single-v1": {
        "system_prompt": "You are a helpful assistant.",
        "prompt_template": "[Instruction]\n"
        + _JUDGE.format(shown=" displayed below")
        + _GENERAL
        + _RULES
        + "\n\n[Question]\n{question}\n\n[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]",
    },
    "single-math-v1": {
        "system_prompt": "You are a helpful assistant.",
        "prompt_template": "[Instruction]\n"
        + _JUDGE.format(shown=" displayed below")
        + _MATH_RULES.format(focus="")
        + "\n\n[Question]\n{question}\n\n[The Start of Reference Answer]\n{ref_answer_1}\n[The End of Reference Answer]"
        "\n\n[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]",
    },
    "single-v1-multi-turn": {
        "system_prompt": _JUDGE.format(shown=" displayed below") + _GENERAL + _SECOND + _RULES + "\n\n",
        "prompt_template": _CONVERSATION,
    },
    "single-math-v1-multi-turn": {
        "system_prompt": _JUDGE.format(shown="") + _MATH_RULES.format(focus=_SECOND.replace(" user", "")) + "\n\n",
        "prompt_template": "<|The Start of Reference Answer|>\n\n### User:\n{question_1}\n\n### Reference answer:\n"
        "{ref_answer_1}\n\n### User:\n{question_2}\n\n### Reference answer:\n{ref_answer_2}\n\n"
        "<|The End of Reference Answer|>\n\n\n" + _CONVERSATION,
    },
}
NEED_REFERENCE = ("math", "reasoning", "coding")  # MT-Bench's categories graded against a reference answer


def rating(judgment: str) -> float | None:
    """The judge's rating: the number in [[x]], else in [x]; None when there is none."""
    for pattern in (r"\[\[(\d+\.?\d*)\]\]", r"\[(\d+\.?\d*)\]"):
        match = re.search(pattern, judgment)
        if match:
            return float(match.group(1))
    return None


def read_prompts(path: str | None) -> dict[str, dict]:
    if not path:
        return PROMPTS
    from .code import read_jsonl

    prompts = {str(row.get("name")): row for row in read_jsonl(path)}
    missing = [n for n in PROMPTS if n not in prompts or "prompt_template" not in prompts[n]]
    if missing:
        raise UserError(f"--judge-prompts {path}: no {', '.join(missing)} (FastChat's judge_prompts.jsonl layout)")
    return prompts


@dataclass
class Judge:
    base_url: str
    model: str
    api_key: str | None = None
    timeout: float = 300.0

    @classmethod
    def from_settings(cls, url: str | None, model: str | None) -> Judge | None:
        url = url or os.environ.get("OPENFEDLLM_JUDGE_URL")
        model = model or os.environ.get("OPENFEDLLM_JUDGE_MODEL")
        if not url and not model:
            return None
        if not url or not model:
            raise UserError(
                "judge: give both a base URL (--judge-url / OPENFEDLLM_JUDGE_URL) and a model "
                "(--judge-model / OPENFEDLLM_JUDGE_MODEL)"
            )
        key = os.environ.get("OPENFEDLLM_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY")
        return cls(url.rstrip("/"), model, key)

    def ask(self, system: str, user: str, max_tokens: int = 2048) -> str:
        body = {
            "model": self.model,
            "temperature": 0,
            "max_tokens": max_tokens,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
        }
        return chat_completion(self.base_url, body, self.api_key, self.timeout)


def chat_completion(base_url: str, body: dict, api_key: str | None = None, timeout: float = 300.0) -> str:
    """POST {base_url}/chat/completions and return the first choice's text."""
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(f"{base_url}/chat/completions", data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.loads(response.read())
        return answer["choices"][0]["message"]["content"]
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:200].replace("\n", " ")
        raise UserError(f"judge: {base_url}/chat/completions answered {exc.code}: {detail}") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise UserError(f"judge: cannot reach {base_url}/chat/completions ({getattr(exc, 'reason', exc)})") from None
    except (KeyError, IndexError, TypeError, json.JSONDecodeError):
        raise UserError(f"judge: {base_url}/chat/completions did not answer in the chat-completions format") from None


def grade(
    judge: Judge, prompts: dict, question: dict, answer_turns: list[str], reference: list[str] | None
) -> list[dict]:
    """One judgment per turn, FastChat's single-answer grading (turn 2 sees the whole conversation)."""
    turns = question["turns"]
    math = reference is not None
    out = []
    for turn in range(1, len(answer_turns) + 1):
        name = ("single-math-v1" if math else "single-v1") + ("-multi-turn" if turn == 2 else "")
        prompt = prompts[name]
        fields = {"question": turns[0], "answer": answer_turns[0], "question_1": turns[0], "answer_1": answer_turns[0]}
        if len(turns) > 1 and len(answer_turns) > 1:
            fields.update(question_2=turns[1], answer_2=answer_turns[1])
        if reference is not None:
            fields.update(ref_answer_1=reference[0], ref_answer_2=reference[1] if len(reference) > 1 else "")
        user = prompt["prompt_template"].format(**fields)
        judgment = judge.ask(prompt["system_prompt"], user)
        score = rating(judgment)
        out.append(
            {
                "question_id": question["question_id"],
                "judge": [judge.model, name],
                "user_prompt": user,
                "judgment": judgment,
                "score": score if score is not None else -1,
                "turn": turn,
            }
        )
    return out
