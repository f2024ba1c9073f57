"""Known datasets on fixtures in their real column layouts, every local file type and format,
hygiene counts, partitioner statistics, and bad files."""

import json
from collections import Counter

import pytest

from openfedllm.cli import main
from openfedllm.config import DataConfig
from openfedllm.data import load_instruction_data
from openfedllm.data.preference import load_preference_data
from openfedllm.data.registry import DATASETS
from openfedllm.data.templates import IGNORE, tokenize
from openfedllm.errors import UserError
from openfedllm.partition import partition

from .conftest import tiny_run_args

# Two rows of each known dataset, with the columns (and extra columns) its hub copy has.
LAYOUTS = {
    "alpaca": [
        {
            "instruction": "Give a synonym of fast.",
            "input": "",
            "output": "Quick.",
            "text": "Below is an instruction ...",
        },
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5", "text": "..."},
    ],
    "alpaca-cleaned": [
        {"output": "Quick.", "input": "", "instruction": "Give a synonym of fast."},
        {"output": "5", "input": "2 and 3", "instruction": "Add the numbers."},
    ],
    "alpaca-gpt4": [
        {"instruction": "Give a synonym of fast.", "input": "", "output": "Quick.", "text": "..."},
        {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5", "text": "..."},
    ],
    "fingpt-sentiment": [
        {
            "input": "Shares of Apex jump 10%.",
            "output": "positive",
            "instruction": "What is the sentiment of this news? Please choose an answer from "
            "{negative/neutral/positive}.",
        },
        {"input": "Apex misses estimates.", "output": "negative", "instruction": "What is the sentiment of this news?"},
    ],
    "medalpaca-flashcards": [
        {"input": "What does the heart pump?", "output": "Blood.", "instruction": "Answer this question truthfully"},
        {
            "input": "Where is insulin made?",
            "output": "In the pancreas.",
            "instruction": "Answer this question truthfully",
        },
    ],
    "code-alpaca": [
        {"instruction": "Write a function that doubles x.", "input": "", "output": "def f(x):\n    return 2 * x"},
        {"instruction": "Reverse a list.", "input": "[1, 2]", "output": "[2, 1]"},
    ],
    "mathinstruct": [
        {"source": "data/CoT/gsm_rft.json", "output": "2 + 2 = 4. The answer is 4.", "instruction": "What is 2 + 2?"},
        {"source": "data/PoT/mathqa.json", "output": "print(3 * 3)", "instruction": "3 times 3?"},
    ],
    "dolly": [
        {"instruction": "Who wrote Hamlet?", "context": "", "response": "Shakespeare.", "category": "open_qa"},
        {"instruction": "Summarise.", "context": "A long text.", "response": "Short.", "category": "summarization"},
    ],
    "wizardlm": [
        {"instruction": "Explain gravity simply.", "output": "Masses attract."},
        {"instruction": "Name a prime.", "output": "7"},
    ],
    "gsm8k": [
        {"question": "Tom has 2 apples and buys 3. How many?", "answer": "2 + 3 = 5\n#### 5"},
        {"question": "What is 4 times 5?", "answer": "4 * 5 = 20\n#### 20"},
    ],
    "ultrafeedback": [
        {
            "prompt": "Say hi.",
            "prompt_id": "x1",
            "chosen": [{"content": "Say hi.", "role": "user"}, {"content": "Hi!", "role": "assistant"}],
            "rejected": [{"content": "Say hi.", "role": "user"}, {"content": "No.", "role": "assistant"}],
            "messages": [{"content": "Say hi.", "role": "user"}, {"content": "Hi!", "role": "assistant"}],
            "score_chosen": 9.0,
            "score_rejected": 2.0,
        }
    ],
    "hh-rlhf": [{"chosen": "\n\nHuman: Say hi.\n\nAssistant: Hi!", "rejected": "\n\nHuman: Say hi.\n\nAssistant: No."}],
}
EXPECTED = {  # (instruction, input, output, label) of the first row
    "alpaca": ("Give a synonym of fast.", "", "Quick.", "default"),
    "alpaca-cleaned": ("Give a synonym of fast.", "", "Quick.", "default"),
    "alpaca-gpt4": ("Give a synonym of fast.", "", "Quick.", "default"),
    "fingpt-sentiment": (
        LAYOUTS["fingpt-sentiment"][0]["instruction"],
        "Shares of Apex jump 10%.",
        "positive",
        "default",
    ),
    "medalpaca-flashcards": ("Answer this question truthfully", "What does the heart pump?", "Blood.", "default"),
    "code-alpaca": ("Write a function that doubles x.", "", "def f(x):\n    return 2 * x", "default"),
    "mathinstruct": ("What is 2 + 2?", "", "2 + 2 = 4. The answer is 4.", "data/CoT/gsm_rft.json"),
    "dolly": ("Who wrote Hamlet?", "", "Shakespeare.", "open_qa"),
    "wizardlm": ("Explain gravity simply.", "", "Masses attract.", "default"),
    "gsm8k": ("Tom has 2 apples and buys 3. How many?", "", "2 + 3 = 5\n#### 5", "default"),
}


def _write(rows, path):
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.suffix == ".csv":
        import csv

        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_every_known_dataset_has_a_fixture():
    assert set(LAYOUTS) == set(DATASETS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_known_instruction_dataset_maps_its_columns(name, tmp_path):
    path = _write(LAYOUTS[name], tmp_path / f"{name}.parquet")  # hub copies are Parquet
    examples, hygiene, _ = load_instruction_data(DataConfig(name=name, path=str(path)))
    e = examples[0]
    assert (e.instruction, e.input, e.output, e.domain) == EXPECTED[name]
    assert len(examples) == 2 and not hygiene.dropped


@pytest.mark.parametrize("name", ["ultrafeedback", "hh-rlhf"])
def test_known_preference_dataset_converts(name, tmp_path):
    path = _write(LAYOUTS[name], tmp_path / f"{name}.parquet")
    prefs, _, _ = load_preference_data(DataConfig(name=name, path=str(path)))
    assert (prefs[0].prompt, prefs[0].chosen, prefs[0].rejected) == ((("user", "Say hi."),), "Hi!", "No.")


ALPACA_ROWS = [{"instruction": f"Say {i}.", "input": "", "output": str(i), "category": "ab"[i % 2]} for i in range(6)]


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".csv", ".parquet", "save_to_disk", "folder"])
def test_every_local_file_type_gives_the_same_examples(suffix, tmp_path):
    if suffix == "save_to_disk":
        import datasets

        path = tmp_path / "saved"
        datasets.Dataset.from_list(ALPACA_ROWS).save_to_disk(str(path))
    elif suffix == "folder":
        path = tmp_path / "parts"
        path.mkdir()
        _write(ALPACA_ROWS[:3], path / "a.jsonl")
        _write(ALPACA_ROWS[3:], path / "b.jsonl")
    else:
        path = _write(ALPACA_ROWS, tmp_path / f"data{suffix}")
    examples, _, _ = load_instruction_data(DataConfig(path=str(path)))
    assert [(e.instruction, e.output, e.domain) for e in examples] == [
        (r["instruction"], r["output"], r["category"]) for r in ALPACA_ROWS
    ]


def test_conversation_formats_train_on_every_assistant_turn(tiny_model_dir, tmp_path):
    from openfedllm.models import load_tokenizer

    sharegpt = [
        {
            "conversations": [
                {"from": "system", "value": "Be brief."},
                {"from": "human", "value": "Hi"},
                {"from": "gpt", "value": "Hello"},
                {"from": "human", "value": "2+2?"},
                {"from": "gpt", "value": "4"},
            ]
        }
    ]
    messages = [
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"},
            ]
        }
    ]
    a, _, _ = load_instruction_data(DataConfig(path=str(_write(sharegpt, tmp_path / "s.jsonl"))))
    b, _, _ = load_instruction_data(DataConfig(path=str(_write(messages, tmp_path / "m.jsonl"))))
    assert a == b
    e = a[0]
    assert (e.instruction, e.output) == ("2+2?", "4")
    assert e.turns == (
        ("system", "Be brief."),
        ("user", "Hi"),
        ("assistant", "Hello"),
        ("user", "2+2?"),
        ("assistant", "4"),
    )
    tokenizer = load_tokenizer(str(tiny_model_dir))
    for template in ("chat", "vicuna", "alpaca"):
        row = tokenize(e, template, tokenizer, 512)
        learned = tokenizer.decode([t for t in row.labels if t != IGNORE])
        assert "Hello" in learned and "4" in learned and "2+2" not in learned and "Hi" not in learned, template


def test_prompt_response_columns_are_detected(tmp_path):
    rows = [{"question": "What is 1+1?", "answer": "2"}, {"prompt": None, "question": "3+3?", "answer": "6"}]
    examples, _, _ = load_instruction_data(DataConfig(path=str(_write(rows, tmp_path / "qa.jsonl"))))
    assert [(e.instruction, e.output) for e in examples] == [("What is 1+1?", "2"), ("3+3?", "6")]


def test_hygiene_drops_and_counts_each_rule(tmp_path):
    rows = [
        {"instruction": "a", "output": "1"},
        {"instruction": "a", "output": "1"},  # duplicate
        {"instruction": "b", "output": "  "},
        {"instruction": "c", "output": None},  # empty responses
        {"instruction": "", "output": "x"},
        {"instruction": "d", "output": "2"},
    ]
    examples, hygiene, _ = load_instruction_data(DataConfig(path=str(_write(rows, tmp_path / "h.jsonl"))))
    assert [e.instruction for e in examples] == ["a", "d"]
    assert hygiene.dropped == {"exact duplicate": 1, "empty response": 2, "empty instruction": 1}
    assert hygiene.summary(len(examples)) == (
        "6 rows read, 2 usable; dropped: 2 empty response, 1 exact duplicate, 1 empty instruction"
    )


def test_cells_that_are_not_text_are_dropped_and_counted_and_the_rest_read_as_text(tmp_path):
    # one number or list makes `datasets` type the whole column as JSON: every other answer then came
    # back with its quotes ("\"Answer 0\"") and every row counted usable
    rows = [
        {"instruction": "q0", "output": "Answer 0"},
        {"instruction": "q1", "output": 5},
        {"instruction": "q2", "output": ["x", "y"]},
        {"instruction": {"text": "q3"}, "output": "Answer 3"},
        {"instruction": "q4", "output": "Answer 4"},
    ]
    examples, hygiene, _ = load_instruction_data(DataConfig(path=str(_write(rows, tmp_path / "mixed.jsonl"))))
    assert [(e.instruction, e.output) for e in examples] == [("q0", "Answer 0"), ("q4", "Answer 4")]
    assert hygiene.dropped == {"not text": 3}
    messages = [
        {"messages": [{"role": "user", "content": "q0"}, {"role": "assistant", "content": "a0"}]},
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "q1"}]},
                {"role": "assistant", "content": "a1"},
            ]
        },
        {"messages": [{"role": "user", "content": "q2"}, {"role": "assistant", "content": {"a": 1}}]},
    ]
    examples, hygiene, _ = load_instruction_data(DataConfig(path=str(_write(messages, tmp_path / "m.jsonl"))))
    assert [(e.instruction, e.output) for e in examples] == [("q0", "a0")]
    assert hygiene.dropped == {"not text": 2}
    csv = tmp_path / "numbers.csv"  # a column of numbers, typed as numbers by the CSV reader, is text
    csv.write_text("instruction,output\nAdd 2 and 3.,5\nAdd 1 and 1.,2\n")
    examples, _, _ = load_instruction_data(DataConfig(path=str(csv)))
    assert [e.output for e in examples] == ["5", "2"]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("trunc.json", '[{"instruction": "a", "output": "b"}, {"instruction": "c", "out', "not valid JSON at line 1"),
        ("trunc.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "c", "out', "line 2 is not valid JSON"),
        ("nocols.csv", "question,reply\nhi,there\n", "cannot tell the data format from its columns (question, reply)"),
        ("empty.jsonl", "", "empty file"),
    ],
)
def test_bad_files_are_one_clear_line(name, content, message, tiny_model_dir, tmp_path, capsys):
    path = tmp_path / name
    path.write_text(content)
    out = tmp_path / "run"
    assert main(tiny_run_args(tiny_model_dir, out, "--data.path", str(path))) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and str(path) in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_declared_format_without_its_columns_and_unknown_names_fail():
    with pytest.raises(UserError, match="data.name: unknown dataset 'alpacca'; known: alpaca, alpaca-cleaned"):
        load_instruction_data(DataConfig(name="alpacca"))


LABELS = [label for label in "abcdefghij" for _ in range(100)]  # 10 labels x 100 rows


def _concentration(clients):
    """Mean over labels of the share of a label's rows held by the client holding most of them."""
    holder = {i: cid for cid, c in enumerate(clients) for i in c}
    shares = []
    for label in set(LABELS):
        owners = Counter(holder[i] for i, x in enumerate(LABELS) if x == label)
        shares.append(owners.most_common(1)[0][1] / sum(owners.values()))
    return sum(shares) / len(shares)


def test_dirichlet_tiny_alpha_puts_each_label_on_one_client_and_huge_alpha_is_near_iid():
    skewed = partition(LABELS, 5, "dirichlet", seed=0, alpha=0.01)
    even = partition(LABELS, 5, "dirichlet", seed=0, alpha=1e4)
    assert _concentration(skewed) > 0.9
    assert _concentration(even) < 0.25  # iid: 0.2 (+ noise)
    mix = [Counter(LABELS[i] for i in c) for c in even]
    assert all(len(m) == 10 and min(m.values()) >= 10 for m in mix)  # every client sees every label


def test_key_split_one_client_per_key_with_size_controls():
    keys = ["u1"] * 50 + ["u2"] * 30 + ["u3"] * 5 + ["u4"] * 2
    clients = partition(keys, 3, "key", seed=0, key_min_size=3, key_max_size=20)
    assert [{keys[i] for i in c} for c in clients] == [{"u1"}, {"u2"}, {"u3"}]
    assert [len(c) for c in clients] == [20, 20, 5]  # capped at 20; u4 is below the minimum
    with pytest.raises(UserError, match="3 distinct keys have at least fed.key_min_size=3 rows"):
        partition(keys, 4, "key", seed=0, key_min_size=3)


def test_quantity_split_has_power_law_sizes():
    clients = partition(LABELS, 4, "quantity", seed=0, exponent=1.0)
    sizes = sorted((len(c) for c in clients), reverse=True)
    expected = [1000 * (1 / k) / (1 + 1 / 2 + 1 / 3 + 1 / 4) for k in (1, 2, 3, 4)]  # 480, 240, 160, 120
    assert sizes == pytest.approx(expected, abs=1)
    assert sorted(i for c in clients for i in c) == list(range(1000))


def test_shards_split_gives_each_client_few_labels():
    clients = partition(LABELS, 5, "shards", seed=0, shards_per_client=2)
    assert all(len({LABELS[i] for i in c}) <= 2 for c in clients)  # 10 shards of 100 rows = one label each
    assert sorted(i for c in clients for i in c) == list(range(1000))


@pytest.mark.parametrize("split", ["iid", "dirichlet", "key", "quantity", "shards"])
def test_every_split_is_deterministic_under_its_seed(split):
    assert partition(LABELS, 5, split, seed=3) == partition(LABELS, 5, split, seed=3)
    if split != "key":  # the key split has no randomness without a size cap
        assert partition(LABELS, 5, split, seed=3) != partition(LABELS, 5, split, seed=4)


def test_data_inspect_prints_the_split_and_draws_it(tiny_model_dir, tmp_path, capsys):
    png = tmp_path / "split.png"
    assert (
        main(
            [
                "data",
                "inspect",
                "--model.name",
                str(tiny_model_dir),
                "--data.train_per_domain",
                "20",
                "--fed.split",
                "dirichlet",
                "--fed.dirichlet_alpha",
                "0.1",
                "--plot",
                str(png),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "dirichlet split of 100 training examples over 5 clients" in out
    assert "label mix (top 3)" in out and png.is_file() and png.stat().st_size > 10_000


@pytest.mark.parametrize("mode", ["truncate", "drop"])
def test_over_length_rows_are_counted_and_cut_or_dropped(mode, tiny_model_dir, tmp_path):
    from openfedllm.config import build
    from openfedllm.data import split_heldout
    from openfedllm.setup import tokenized_data

    rows = [{"instruction": f"short {i}", "output": "a"} for i in range(6)]
    rows += [{"instruction": "long " * 80 + str(i), "output": "c"} for i in range(2)]  # the answer falls past 40
    rows += [{"instruction": f"count {i}", "output": "one two " * 40} for i in range(2)]  # cut, still an answer
    path = _write(rows, tmp_path / "long.jsonl")
    config = build(
        {"model": {"name": str(tiny_model_dir)}, "data": {"path": str(path), "max_length": 40, "over_length": mode}}
    )
    train, _ = split_heldout(rows, config.data, config.train.seed)  # the same seeded held-out choice
    long_prompts = sum(r["output"] == "c" for r in train)
    long_answers = sum(r["instruction"].startswith("count") for r in train)
    _, data = tokenized_data(config, str(tiny_model_dir))
    assert long_prompts and long_answers and data["over_length"] == long_prompts + long_answers
    if mode == "drop":
        assert len(data["train_rows"]) == len(train) - long_prompts - long_answers and data["dropped"] == 0
    else:  # cut at 40 tokens: a long answer keeps its start; after a long prompt nothing is left to learn
        assert data["dropped"] == long_prompts and len(data["train_rows"]) == len(train) - long_prompts
    assert all(len(r.input_ids) <= 40 for r in data["train_rows"])


def test_a_known_dataset_without_the_hub_or_a_local_copy_says_what_to_do(capsys):
    with pytest.raises(UserError, match=r"cannot load tatsu-lab/alpaca from the Hugging Face hub .*--data.path"):
        load_instruction_data(DataConfig(name="alpaca"))  # HF_HUB_OFFLINE=1 in the tests
    assert main(["data", "list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == list(DATASETS)
