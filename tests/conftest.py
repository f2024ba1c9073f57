"""Shared fixtures: a tiny Llama and tokenizer saved as an ordinary model folder.

The folder goes through the same loading path (`model.name: DIR`) a user's model takes, and
trains at tens of steps per second on CPU, so end-to-end runs of the CLI take seconds.
"""

from __future__ import annotations

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one worker per core: two torch thread pools of 2 threads on 2 cores would spin
    # against each other (the tiny model's steps gain nothing from a second thread anyway)
    import torch

    torch.set_num_threads(1)


def pytest_collection_modifyitems(items):
    """The tests marked slow first (each file's order kept): with `make test`'s one-at-a-time
    scheduling (--maxschedchunk 1), the minute-long federations spread over both workers from the
    start and the suite ends on tests of seconds, instead of one worker finishing a batch of
    federations while the other waits."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _corpus():
    from openfedllm.data import suite

    train, held = suite.train_and_heldout(60, 10, seed=1)
    for e in train + held:
        yield f"{e.instruction} {e.input} {e.output}"
    yield "Below is an instruction that describes a task. ### Instruction: ### Input: ### Response:"
    yield "A chat between a curious user and an artificial intelligence assistant. USER: ASSISTANT:"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny-llama")
    specials = ["<unk>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        _corpus(),
        trainers.BpeTrainer(
            vocab_size=600, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        unk_token="<unk>",
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
    )
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(path)

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture
def alpaca_file(tmp_path):
    """A small Alpaca JSON file with a category column (so domain splits have something to use)."""
    rows = []
    for i in range(24):
        rows.append({"instruction": f"Add {i} and {i + 1}.", "input": "", "output": str(2 * i + 1), "category": "math"})
        rows.append(
            {"instruction": "Say the colour of the sky.", "input": f"time {i}", "output": "blue", "category": "general"}
        )
    path = tmp_path / "alpaca.json"
    path.write_text(json.dumps(rows))
    return path


def tiny_run_args(model_dir, output_dir, *extra):
    """CLI arguments for a seconds-long federated run on the tiny model."""
    return [
        "sft",
        "--output-dir",
        str(output_dir),
        "--model.name",
        str(model_dir),
        "--data.train_per_domain",
        "12",
        "--data.heldout_per_domain",
        "3",
        "--fed.num_clients",
        "3",
        "--fed.clients_per_round",
        "2",
        "--fed.rounds",
        "3",
        "--fed.split",
        "iid",
        "--train.local_steps",
        "2",
        "--train.batch_size",
        "4",
        "--train.lr",
        "1e-3",
        "--eval.max_new_tokens",
        "4",
        "--lora.dropout",
        "0.1",
        *extra,
    ]


def interrupted_after_round_2_then_resumed(model_dir, tmp_path, settings, monkeypatch):
    """A run stopped right after round 2's checkpoint (Ctrl-C), then continued with --resume."""
    from openfedllm import rounds
    from openfedllm.cli import main

    real_save, calls = rounds.save_checkpoint, []

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:  # after round 2 of 3: W has taken two merges, the clients kept two Bs
            raise KeyboardInterrupt

    monkeypatch.setattr(rounds, "save_checkpoint", save_then_die)
    resumed = tmp_path / "interrupted"
    assert main(tiny_run_args(model_dir, resumed, *settings)) == 130
    monkeypatch.setattr(rounds, "save_checkpoint", real_save)
    assert main(["sft", "--resume", str(resumed)]) == 0
    return resumed
