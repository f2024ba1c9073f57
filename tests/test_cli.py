"""The CLI end to end on the tiny model: run directory, resume, export, and every bad input."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from openfedllm import models, rounds
from openfedllm.cli import main

from .conftest import tiny_run_args


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "full"
    assert main(tiny_run_args(tiny_model_dir, out)) == 0
    return out


def test_run_directory_holds_config_metrics_adapter_plots(finished_run):
    out = finished_run
    for name in [
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
        "adapter/adapter_config.json",
        "plots/train_loss.png",
        "plots/evaluation.png",
        "checkpoints/progress.json",
        "baselines/local/adapter/adapter_model.safetensors",
        "baselines/centralized/adapter/adapter_model.safetensors",
    ]:
        assert (out / name).is_file(), name
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    clients = [r for r in records if r["type"] == "client" and r["phase"] == "federated"]
    assert len(clients) == 3 * 2  # rounds x clients per round
    assert {"loss", "examples", "seconds", "round", "client"} <= set(clients[0])
    evals = [r["round"] for r in records if r["type"] == "eval" and r["phase"] == "federated"]
    assert evals == [0, 1, 2, 3]  # before training, then every round
    fed_eval = [r for r in records if r["type"] == "eval"][-1]
    assert set(fed_eval["accuracy"]) == {"code", "finance", "general", "math", "medical"}
    # the local baseline trains client 0 alone; the centralized one all 60 examples pooled
    local = [r for r in records if r["type"] == "client" and r["phase"] == "local"]
    central = [r for r in records if r["type"] == "client" and r["phase"] == "centralized"]
    assert [r["examples"] for r in local] == [20] * 3 and [r["steps"] for r in local] == [2] * 3
    assert [r["examples"] for r in central] == [60] * 3 and [r["steps"] for r in central] == [4] * 3
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["evaluation"]) == {"before", "federated", "local", "centralized"}


def test_learning_rate_follows_a_cosine_across_rounds(finished_run):
    records = [json.loads(line) for line in (finished_run / "metrics.jsonl").read_text().splitlines()]
    lrs = sorted({(r["round"], r["lr"]) for r in records if r["type"] == "client" and r["phase"] == "federated"})
    # lr=1e-3, min_lr=1e-4, 3 rounds: min + (lr - min) * (1 + cos(pi * r / 3)) / 2 for r = 0, 1, 2
    assert [lr for _, lr in lrs] == pytest.approx([1e-3, 1e-4 + 9e-4 * 0.75, 1e-4 + 9e-4 * 0.25])


def test_adapter_loads_with_peft_and_changes_the_model(finished_run, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.tensor([[5, 6, 7, 8]])
    before = base(ids).logits
    model = PeftModel.from_pretrained(base, str(finished_run / "adapter"))
    assert not torch.allclose(model(ids).logits, before)


# Checkpoints are written after every round: 3 federated, then 3 local-only, then 3 centralized.
@pytest.mark.parametrize("die_after", [2, 4, 8], ids=["federated-round-2", "local-round-1", "centralized-round-2"])
def test_resume_after_interruption_gives_the_identical_adapter(
    die_after, tiny_model_dir, finished_run, tmp_path, monkeypatch
):
    out = tmp_path / "interrupted"
    real_save = rounds.save_checkpoint
    calls = []

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        calls.append(1)
        if len(calls) == die_after:
            raise KeyboardInterrupt

    monkeypatch.setattr(rounds, "save_checkpoint", save_then_die)
    assert main(tiny_run_args(tiny_model_dir, out)) == 130
    monkeypatch.setattr(rounds, "save_checkpoint", real_save)
    assert (out / "adapter").exists() == (die_after > 3)
    assert main(["sft", "--resume", str(out)]) == 0

    for adapter_dir in ["adapter", "baselines/local/adapter", "baselines/centralized/adapter"]:
        resumed = load_file(str(out / adapter_dir / "adapter_model.safetensors"))
        straight = load_file(str(finished_run / adapter_dir / "adapter_model.safetensors"))
        assert resumed.keys() == straight.keys()
        for name in straight:
            assert torch.equal(resumed[name], straight[name]), (adapter_dir, name)  # bit for bit
    timing = {"seconds", "elapsed", "time"}  # wall-clock fields differ between any two runs
    strip = lambda rs: [{k: v for k, v in r.items() if k not in timing} for r in rs]  # noqa: E731
    read = lambda d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert strip(read(out)) == strip(read(finished_run))  # no duplicated or missing records


def test_a_damaged_checkpoint_stops_a_resume_before_the_data_and_the_model_load(
    finished_run, tmp_path, capsys, monkeypatch
):
    import openfedllm.setup

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "checkpoints" / "server_state.pt").write_bytes(b"\x00garbage")

    def no_prepare(*args, **kwargs):
        raise AssertionError("the data and the model loaded before the checkpoint was checked")

    monkeypatch.setattr(openfedllm.setup, "prepare", no_prepare)
    assert main(["sft", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert "checkpoints/server_state.pt is damaged" in err and len(err.splitlines()) == 1, err


def test_export_merged_model_matches_base_plus_adapter(finished_run, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "merged"
    assert main(["export", str(finished_run), "--merge", "--output-dir", str(out)]) == 0
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert AutoTokenizer.from_pretrained(out).eos_token == "<|im_end|>"
    reference = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(finished_run / "adapter")
    )
    reference.eval()
    ids = torch.tensor([[3, 9, 27, 81, 5]])
    torch.testing.assert_close(merged(ids).logits, reference(ids).logits, rtol=1e-4, atol=1e-5)


def test_full_parameter_mode_trains_and_saves_a_whole_model(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "full-run"
    args = tiny_run_args(
        tiny_model_dir,
        out,
        "--model.finetune",
        "full",
        "--fed.rounds",
        "1",
        "--baselines.local",
        "false",
        "--baselines.centralized",
        "false",
    )
    assert main(args) == 0
    trained = AutoModelForCausalLM.from_pretrained(out / "model")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    changed = [n for n, p in trained.named_parameters() if not torch.equal(p, dict(base.named_parameters())[n])]
    # every weight matrix trains, not just an adapter
    assert "model.layers.0.mlp.down_proj.weight" in changed and "model.embed_tokens.weight" in changed
    assert not (out / "adapter").exists()


def test_alpaca_file_runs_with_loss_only_evaluation(tiny_model_dir, alpaca_file, tmp_path):
    out = tmp_path / "alpaca-run"
    args = tiny_run_args(
        tiny_model_dir,
        out,
        "--data.path",
        str(alpaca_file),
        "--data.template",
        "alpaca",
        "--fed.rounds",
        "1",
        "--baselines.centralized",
        "false",
        "--baselines.local",
        "false",
    )
    assert main(args) == 0
    evals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert evals[-1]["accuracy"] == {} and evals[-1]["loss"] > 0


def test_print_config_shows_overrides(capsys):
    assert main(["sft", "--print-config", "--fed.rounds", "7", "--lora.target_modules", "q_proj,v_proj"]) == 0
    out = capsys.readouterr().out
    assert "rounds: 7" in out and "- q_proj\n  - v_proj" in out


# ---------------------------------------------------------------- bad input: one line, exit 2
BAD = [
    (["--fed.algoritm", "fedavg"], "unknown config key fed.algoritm"),
    (["--fed.algorithm", "fedavgg"], "fed.algorithm: unknown value 'fedavgg'; valid: fedavg"),
    (["--fed.rounds", "0"], "fed.rounds must be > 0"),
    (["--fed.rounds", "three"], "fed.rounds: expected an integer"),
    (["--lora.rank", "0"], "lora.rank must be > 0"),
    (["--fed.clients_per_round", "9", "--fed.num_clients", "3"], "fed.clients_per_round (9) is more than"),
    (["--data.path", "/no/such/file.json"], "data.path: file not found"),
    (["--modle.name", "x"], "unknown config section"),
    (["--config", "/no/such.yaml"], "--config: file not found"),
    (["--fed.split", "weird"], "fed.split: unknown value 'weird'"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[b[1][:30] for b in BAD])
def test_bad_input_fails_with_one_line(args, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["sft", "--output-dir", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize(
    "content, message",
    [
        ('[{"instruction": "hi"}]', "cannot tell the data format from its columns (instruction)"),
        ('{"instruction": "a", "output": "b"}\nnot json', "line 2 is not valid JSON"),
        ("[]", "no rows"),
        (
            '{"instruction": "a", "output": ""}\n{"instruction": "", "output": "b"}',
            "no usable row (2 rows read, 0 usable; dropped: 1 empty response, 1 empty instruction); first bad row 1 "
            '(empty response): {"instruction": "a", "input": "", "output": ""}',
        ),
    ],
)
def test_malformed_data_file_names_the_row(content, message, tiny_model_dir, tmp_path, capsys, monkeypatch):
    data = tmp_path / "data.jsonl"
    data.write_text(content)
    out = tmp_path / "run"

    def no_tokenizer(path):
        raise AssertionError("the tokenizer loaded before the data was checked")

    monkeypatch.setattr(models, "load_tokenizer", no_tokenizer)  # the file is refused before it loads
    assert main(tiny_run_args(tiny_model_dir, out, "--data.path", str(data))) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and str(data) in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_a_diverging_loss_stops_the_run_naming_round_and_client(tiny_model_dir, tmp_path, capsys):
    # lr 1e30 without clipping: the second AdamW step turns the loss NaN (an all-NaN adapter before)
    out = tmp_path / "run"
    assert (
        main(
            tiny_run_args(
                tiny_model_dir, out, "--train.lr", "1e30", "--train.min_lr", "0", "--train.max_grad_norm", "0"
            )
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "round 1 client" in err and "the training loss is nan" in err, err
    assert not out.exists()  # no round finished: nothing to keep


def test_a_long_row_is_cut_before_it_is_tokenized(tiny_model_dir):
    from transformers import AutoTokenizer

    from openfedllm.data.example import Example
    from openfedllm.data.templates import tokenize

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    seen = []
    original = type(tokenizer).__call__

    def spy(self, text, *args, **kwargs):
        seen.append(len(text))
        return original(self, text, *args, **kwargs)

    long_answer = Example("Add 2 and 3.", "The sum is 5. " * 100_000, "", "math", "none")  # a 1.4 MB response
    long_question = Example("Add the numbers. " * 100_000, "5", "", "math", "none")
    expected = [
        tokenize(e, template, tokenizer, 0) for e in (long_answer, long_question) for template in ("alpaca", "chat")
    ]
    type(tokenizer).__call__ = spy
    try:
        cut = [
            tokenize(e, template, tokenizer, 256)
            for e in (long_answer, long_question)
            for template in ("alpaca", "chat")
        ]
    finally:
        type(tokenizer).__call__ = original
    # the same first 256 tokens as tokenizing everything and cutting, from a few thousand characters
    for row, whole in zip(cut[:2], expected[:2]):
        assert row.input_ids == whole.input_ids[:256] and row.labels == whole.labels[:256]
        assert row.prompt_len == whole.prompt_len
    assert cut[2:] == [None, None]  # the response starts past the cut: nothing to learn, as before
    assert max(seen) < 10_000, seen


def test_empty_client_partition_fails_before_training(tiny_model_dir, alpaca_file, tmp_path, capsys):
    out = tmp_path / "run"
    # two categories, three clients, and a Dirichlet so skewed that each category lands on one client
    args = tiny_run_args(
        tiny_model_dir,
        out,
        "--data.path",
        str(alpaca_file),
        "--fed.split",
        "dirichlet",
        "--fed.dirichlet_alpha",
        "0.001",
        "--fed.num_clients",
        "3",
    )
    assert main(args) == 2
    assert "gets no examples" in capsys.readouterr().err
    assert not out.exists()


def test_existing_output_dir_is_refused(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["sft", "--output-dir", str(tmp_path)]) == 2
    assert "already holds files" in capsys.readouterr().err


def test_a_real_process_prints_no_traceback(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "openfedllm",
            "sft",
            "--output-dir",
            str(tmp_path / "r"),
            "--fed.algorithm",
            "scaffoldd",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "openfedllm sft: error: fed.algorithm: unknown value 'scaffoldd'; "
        "valid: fedavg, fedprox, scaffold, fedavgm, fedadagrad, fedyogi, fedadam"
    ]
    assert not (tmp_path / "r").exists()


def test_recipes_parse_and_the_default_recipe_is_the_default_job():
    from openfedllm.config import RunConfig, build, load_yaml, to_dict

    configs = Path(__file__).resolve().parent.parent / "configs"
    written = load_yaml(str(configs / "sft_default.yaml"))
    assert build(written) == RunConfig()
    # "written out": every key, not only values that happen to equal the defaults
    assert {s: sorted(keys) for s, keys in written.items()} == {
        s: sorted(keys) for s, keys in to_dict(RunConfig()).items()
    }
    quick = build(load_yaml(str(configs / "sft_quick.yaml")))
    quick.validate()
    assert quick.fed.split == "iid"  # so that --data.path alone runs it on a user's file


def test_help_and_a_bad_setting_answer_without_importing_torch():
    """Reading and checking a config needs no torch (names.py): `--help`, a mistyped key and a value
    out of bounds answer in a fraction of a second instead of after torch's ~2.5 s import."""
    code = """import sys
from openfedllm.cli import main
for argv in (["sft", "--help"], ["dpo", "--help"], ["sft", "--fed.roundz", "3"], ["sft", "--train.lr", "inf"]):
    try:
        main(argv)
    except SystemExit:
        pass
print("torch imported:", "torch" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "did you mean fed.rounds?" in done.stderr and "train.lr: must be a finite number" in done.stderr
    assert "usage: openfedllm dpo" in done.stdout
    assert done.stdout.splitlines()[-1] == "torch imported: False"


@pytest.mark.parametrize("objective", ["sft", "dpo"])
def test_help_prints_the_defaults_that_will_run(objective, capsys):
    """Every key's default in `openfedllm OBJECTIVE --help` is the value --print-config resolves."""
    import re

    import yaml

    with pytest.raises(SystemExit):
        main([objective, "--help"])
    shown = dict(re.findall(r"--(\w+\.\w+) \([\w|]+, default (.*)\)\n", capsys.readouterr().out))
    assert main([objective, "--print-config"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    expected = {
        f"{section}.{key}": repr(value) for section, values in resolved.items() for key, value in values.items()
    }
    assert shown == expected
    if objective == "dpo":  # what the issue saw printed wrong
        assert shown["train.objective"] == "'dpo'" and shown["dpo.rpo_alpha"] == "1.0"
