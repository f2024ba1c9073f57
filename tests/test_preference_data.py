"""Preference formats converted from fixture files in each format's real layout; bad rows counted."""

import json
from pathlib import Path

import pytest

from openfedllm.data.example import is_correct
from openfedllm.data.preference import Preference, detect_format, load_preferences, tokenize_pair
from openfedllm.data.preference_suite import SAFETY, builtin_preferences
from openfedllm.data.templates import IGNORE, render_dialogue
from openfedllm.errors import UserError
from openfedllm.evaluate import is_refusal

FIXTURES = Path(__file__).parent / "fixtures" / "preferences"


def test_hh_rlhf_dialogues_split_at_the_last_assistant_turn_keeping_earlier_turns():
    prefs, report = load_preferences(str(FIXTURES / "hh_rlhf.jsonl"))
    assert prefs[0] == Preference(
        (("user", "What is a good way to learn to cook?"),),
        "Start with a few simple recipes you like and cook them often.",
        "Just eat out.",
    )
    assert prefs[1].prompt == (
        ("user", "Can you recommend a book about space?"),
        ("assistant", "Sure. Do you prefer fiction or non-fiction?"),
        ("user", "Non-fiction, please."),
    )
    assert (prefs[1].chosen, prefs[1].rejected) == ("Try Cosmos by Carl Sagan.", "I don't know any books.")
    # the third row's two dialogues differ before the last turn: dropped and counted
    assert len(prefs) == 2 and report.rows == 3
    assert report.dropped == {"chosen and rejected do not share a prompt": 1}


def test_ultrafeedback_binarized_message_lists_keep_the_shared_turns_as_prompt():
    prefs, report = load_preferences(str(FIXTURES / "ultrafeedback_binarized.jsonl"))
    assert prefs[0] == Preference((("user", "Name three primary colours."),), "Red, yellow and blue.", "Green.")
    assert prefs[1].prompt == (("user", "What is 2 + 2?"), ("assistant", "4"), ("user", "And times 3?"))
    assert (prefs[1].chosen, prefs[1].rejected) == ("12", "10")
    assert not report.dropped


def test_sharegpt_conversations_with_chosen_and_rejected_turns_and_a_system_prompt():
    prefs, _ = load_preferences(str(FIXTURES / "sharegpt_dpo.json"))
    assert prefs[0] == Preference((("user", "Translate 'cat' to French."),), "chat", "chien")
    assert prefs[1].prompt == (
        ("system", "You are a terse assistant."),
        ("user", "Hi there."),
        ("assistant", "Hi."),
        ("user", "What is the capital of Italy?"),
    )
    assert prefs[1].chosen == "Rome."


def test_plain_prompt_chosen_rejected_as_strings_and_as_trl_conversational_lists():
    prefs, _ = load_preferences(str(FIXTURES / "plain.jsonl"))
    assert prefs[0] == Preference((("user", "Is the sun a star?"),), "Yes, the sun is a star.", "No, it is a planet.")
    assert prefs[1] == Preference(
        (("system", "Answer briefly."), ("user", "Boiling point of water at sea level?")),
        "100 degrees Celsius.",
        "50 degrees Celsius.",
    )


@pytest.mark.parametrize(
    "name, expected",
    [
        ("hh_rlhf.jsonl", "hh"),
        ("ultrafeedback_binarized.jsonl", "ultrafeedback"),
        ("sharegpt_dpo.json", "sharegpt"),
        ("plain.jsonl", "plain"),
    ],
)
def test_format_is_detected_from_the_first_row(name, expected):
    text = (FIXTURES / name).read_text()
    first = json.loads(text)[0] if name.endswith(".json") else json.loads(text.splitlines()[0])
    assert detect_format(first) == expected


def test_declared_format_that_does_not_fit_the_file_is_an_error_naming_the_first_bad_row():
    with pytest.raises(UserError, match=r"no usable preference pair as hh .*first bad row 1 \(missing chosen"):
        load_preferences(str(FIXTURES / "ultrafeedback_binarized.jsonl"), "hh")


def test_malformed_rows_are_counted_by_reason():
    prefs, report = load_preferences(str(FIXTURES / "malformed.jsonl"))
    assert [p.chosen for p in prefs] == ["yes"] + ["right"] * 5
    assert report.dropped == {"missing chosen or rejected": 1, "chosen equals rejected": 1, "empty prompt": 2}
    assert report.summary(len(prefs)) == (
        "10 rows read, 6 usable; dropped: 2 empty prompt, 1 missing chosen or rejected, 1 chosen equals rejected"
    )
    assert report.first_bad[:2] == (2, "missing chosen or rejected")


def test_a_file_with_no_usable_pair_is_one_clear_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "chosen": "x", "rejected": "x"}\n{"prompt": "b", "chosen": "y"}\n')
    with pytest.raises(UserError) as info:
        load_preferences(str(path))
    message = str(info.value)
    assert str(path) in message and "2 rows read, 0 usable" in message
    assert 'first bad row 1 (chosen equals rejected): {"prompt": "a"' in message


def test_pair_tokenization_keeps_the_prompt_end_and_drops_pairs_without_room(tiny_model_dir):
    from openfedllm.models import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    pref = Preference((("user", "What is two plus two? " * 6),), "four", "five, or maybe six or seven")
    row = tokenize_pair(pref, "chat", tokenizer, max_length=200, max_prompt_length=10)
    prompt, completion = render_dialogue("chat", pref.messages(), "four", tokenizer)
    full_prompt = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert row.chosen.input_ids[:10] == full_prompt[-10:]  # the end of the prompt, where the question is
    assert row.chosen.labels[:10] == [IGNORE] * 10
    assert row.chosen.input_ids[10:] == tokenizer(completion, add_special_tokens=False)["input_ids"]
    assert row.chosen.prompt_len == row.rejected.prompt_len == 10
    cut = tokenize_pair(pref, "chat", tokenizer, max_length=14, max_prompt_length=10)
    assert len(cut.rejected.input_ids) == 14  # the long response cut at the end
    assert tokenize_pair(pref, "chat", tokenizer, max_length=10, max_prompt_length=10) is None


@pytest.mark.parametrize("template", ["chat", "vicuna", "alpaca"])
def test_multi_turn_prompts_keep_every_turn_in_each_template(tiny_model_dir, template):
    from openfedllm.models import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    messages = [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "second question"},
    ]
    prompt, completion = render_dialogue(template, messages, "second answer", tokenizer)
    assert prompt.index("first question") < prompt.index("first answer") < prompt.index("second question")
    assert "second answer" in completion and "second answer" not in prompt


def test_builtin_set_refusals_are_chosen_for_harmful_prompts_and_correct_answers_for_tasks():
    train, held, tasks = builtin_preferences(30, 6, seed=7)
    domains = {p.domain for p in train}
    assert domains == {SAFETY, "general", "finance", "medical", "code", "math"}
    assert len(train) == 6 * 30 and len(held) == 6 * 6 and len(tasks) == 5 * 6
    assert not {p.prompt for p in train} & {p.prompt for p in held}  # held-out prompts are new
    for p in train + held:
        if p.domain == SAFETY:
            assert is_refusal(p.chosen) and not is_refusal(p.rejected), p
    benign = [p for p in train if p.domain != SAFETY]
    refused = [p for p in benign if is_refusal(p.rejected)]
    assert 0.15 < len(refused) / len(benign) < 0.35  # one in four teaches: answer benign requests
    by_prompt = {t.instruction if not t.input else f"{t.instruction}\n\n{t.input}": t for t in tasks}
    for p in held:
        if p.domain != SAFETY:
            task = by_prompt[p.prompt[0][1]]
            assert is_correct(task, p.chosen) and not is_correct(task, p.rejected)
    assert builtin_preferences(30, 6, seed=7) == (train, held, tasks)  # seeded


@pytest.mark.parametrize(
    "text, refused",
    [
        ("I'm sorry, but I can't help with that.", True),
        ("I cannot assist with this request.", True),
        ("I won’t do that.", True),
        ("As an AI, I must decline.", True),
        ("Sure! Here is how to do it: first ...", False),
        ("mammal", False),
        ("x * 2", False),
        ("42", False),
    ],
)
def test_refusal_detection(text, refused):
    assert is_refusal(text) == refused
