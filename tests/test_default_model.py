"""Integration: the real embedded default model (SmolLM2-135M-Instruct from its PyPI package).

Converts the GGUF once into the cache (about 35 s on a fresh machine), checks the converted
folder loads fast and answers, and trains it for a couple of federated steps through the CLI.
"""

import json
import time

import pytest
import torch

from openfedllm import models
from openfedllm.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_path():
    return models.resolve_model(models.DEFAULT_MODEL)


def test_default_model_converts_once_and_loads_from_the_cache(default_path):
    start = time.perf_counter()
    assert models.resolve_model(models.DEFAULT_MODEL) == default_path  # no second conversion
    tokenizer = models.load_tokenizer(default_path)
    model = models.load_base_model(default_path)
    seconds = time.perf_counter() - start
    assert model.num_parameters() == 134_515_008
    assert tokenizer.eos_token == "<|im_end|>" and len(tokenizer) == 49152
    print(f"default model loaded from the cache in {seconds:.1f} s")
    # It is a real instruct model: greedy answer to a simple question.
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False, use_cache=True)
    assert "Paris" in tokenizer.decode(out[0, ids["input_ids"].shape[1] :])


def test_default_model_trains_a_few_federated_steps(default_path, tmp_path):
    out = tmp_path / "run"
    args = [
        "sft",
        "--output-dir",
        str(out),
        "--data.train_per_domain",
        "8",
        "--data.heldout_per_domain",
        "2",
        "--fed.num_clients",
        "2",
        "--fed.clients_per_round",
        "2",
        "--fed.rounds",
        "1",
        "--fed.split",
        "iid",
        "--train.local_steps",
        "2",
        "--train.batch_size",
        "2",
        "--baselines.local",
        "false",
        "--baselines.centralized",
        "false",
        "--eval.max_new_tokens",
        "4",
    ]
    assert main(args) == 0
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["type"] == "eval"]
    assert [r["round"] for r in evals] == [0, 1]
    assert evals[1]["loss"] < evals[0]["loss"]  # four steps at lr 5e-4 already fit the answer format
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
