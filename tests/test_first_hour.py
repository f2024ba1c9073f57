"""A new user's first hour, through the real CLI on the tiny model: runs that say what they do and keep
what they printed, adapters that name their base model and carry a card, configs that cite their
run, data choices that explain themselves, recipes by name, and the small things of the CLI."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from openfedllm import card
from openfedllm.cli import main

from .conftest import tiny_run_args

CLI = [sys.executable, "-m", "openfedllm.cli"]


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    """A finished run of 3 clients, all sampled each round (fed.clients_per_round left at its default)."""
    out = tmp_path_factory.mktemp("first-hour") / "run"
    args = tiny_run_args(tiny_model_dir, out, "--baselines.centralized", "false")
    at = args.index("--fed.clients_per_round")
    del args[at : at + 2]
    assert main(args) == 0
    return out


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# --- runs you can follow ---------------------------------------------------------------------------


def test_every_client_trains_each_round_when_only_num_clients_is_given(run):
    clients = [r for r in _records(run) if r["type"] == "client" and r["phase"] == "federated"]
    assert {r["round"]: 0 for r in clients} and all(
        sorted(r["client"] for r in clients if r["round"] == k) == [0, 1, 2] for k in (1, 2, 3)
    )


def test_the_console_is_saved_in_run_log_with_the_banner_and_labelled_round_timings(run):
    log = (run / "run.log").read_text()
    assert f"Run {run}" in log
    for label in ("model ", "computes   on cpu, float32", "trains ", "clients    3, 3 per round", "per round "):
        assert label in log, label
    assert "[federated] round 1/3" in log and "(round " in log and ", eval " in log and "ETA" in log
    assert "Federated instruction tuning finished" in log


def test_the_final_table_says_how_many_answers_each_accuracy_rests_on(run):
    summary = json.loads((run / "summary.json").read_text())["evaluation"]
    counts = summary["before"]["n_by_domain"]
    assert sum(counts.values()) == summary["before"]["n"] and summary["federated"]["n"] == summary["before"]["n"]
    log = (run / "run.log").read_text()
    assert f"acc mean (n={summary['before']['n']})" in log
    for domain, n in counts.items():
        assert f"acc {domain} (n={n})" in log


def test_each_local_step_is_a_record_with_a_global_step_and_a_time(run):
    records = _records(run)
    steps = [r for r in records if r["type"] == "step" and r["phase"] == "federated" and r["client"] == 1]
    assert [r["global_step"] for r in steps] == [1, 2, 3, 4, 5, 6]  # 3 rounds x 2 local steps
    assert [r["step"] for r in steps] == [1, 2] * 3
    assert all(r["elapsed"] >= 0 and r["time"] > 1.7e9 for r in steps)
    client = next(r for r in records if r["type"] == "client" and r["round"] == 1 and r["client"] == 1)
    mine = [r["loss"] for r in steps if r["round"] == 1]
    assert client["loss"] == pytest.approx(sum(mine) / len(mine))  # the round's loss is its steps' mean
    assert all("time" in r for r in records)


def test_without_a_terminal_a_progress_line_replaces_the_bar(tiny_model_dir, tmp_path):
    env = dict(os.environ, OPENFEDLLM_PROGRESS_SECONDS="0")
    out = tmp_path / "run"
    args = tiny_run_args(tiny_model_dir, out, "--fed.rounds", "1", "--baselines.local", "false")
    done = subprocess.run([*CLI, *args, "--baselines.centralized", "false"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "round 1 client" in done.stdout and ": step 2/2, loss " in done.stdout


# --- runs you can move and cite ---------------------------------------------------------------------


def test_the_adapter_names_a_loadable_base_carries_a_card_and_is_readable(run, tiny_model_dir):
    adapter = run / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(Path(tiny_model_dir).resolve())
    readme = (adapter / "README.md").read_text()
    assert "More Information Needed" not in readme  # not peft's empty template
    assert "| algorithm | fedavg |" in readme and "| clients (per round) | 3 (3) |" in readme
    assert "## Held-out results" in readme and "acc mean" in readme
    mask = os.umask(0)
    os.umask(mask)
    for file in adapter.iterdir():
        assert stat.S_IMODE(file.stat().st_mode) == 0o666 & ~mask, file.name


def test_the_default_model_is_named_by_its_hub_id_and_its_origin_is_stated():
    from openfedllm.config import RunConfig

    assert card.base_model_id("smollm2-135m-instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    text = card.model_card(RunConfig())
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in text and "Q4_1 GGUF" in text


def test_config_yaml_cites_the_run_and_still_reads_back(run):
    from openfedllm.config import build
    from openfedllm.rundir import read_config

    saved = yaml.safe_load((run / "config.yaml").read_text())
    provenance = saved["run"]
    assert provenance["openfedllm"] and provenance["command"].startswith("openfedllm sft --output-dir")
    assert len(provenance.get("git_commit", "0" * 40)) == 40
    build(read_config(run))  # the provenance section is not a setting


def test_a_run_from_relative_paths_resumes_from_anywhere(tiny_model_dir, tmp_path, monkeypatch):
    data = tmp_path / "here" / "rows.json"
    data.parent.mkdir()
    data.write_text(json.dumps([{"instruction": f"Say {i}.", "output": str(i)} for i in range(30)]))
    monkeypatch.chdir(data.parent)
    args = ["sft", "--output-dir", "run", "--model.name", str(tiny_model_dir), "--data.path", "rows.json"]
    args += ["--fed.num_clients", "2", "--fed.rounds", "2", "--fed.split", "iid", "--train.local_steps", "1"]
    args += ["--train.batch_size", "2", "--eval.max_new_tokens", "2", "--baselines.local", "false"]
    args += ["--baselines.centralized", "false"]
    assert main(args) == 0
    saved = yaml.safe_load((data.parent / "run" / "config.yaml").read_text())
    assert saved["data"]["path"] == str(data) and saved["run"]["data_sha256"]["path"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    (data.parent / "run" / "summary.json").unlink()
    assert main(["sft", "--resume", str(data.parent / "run")]) == 0  # a finished run: summary again
    assert (data.parent / "run" / "summary.json").is_file()


# --- data that behaves as expected ------------------------------------------------------------------


def _rows(path: Path, labelled: bool) -> Path:
    rows = [{"instruction": f"Add {i} and 1.", "output": str(i + 1)} for i in range(40)]
    if labelled:
        for i, row in enumerate(rows):
            row["category"] = "even" if i % 2 == 0 else "odd"
    path.write_text(json.dumps(rows))
    return path


def test_a_dirichlet_split_without_labels_names_the_columns_it_looked_for(tiny_model_dir, tmp_path, capsys):
    data = _rows(tmp_path / "plain.json", labelled=False)
    out = tmp_path / "run"
    args = tiny_run_args(tiny_model_dir, out, "--data.path", str(data), "--fed.split", "dirichlet")
    assert main(args) != 0
    err = capsys.readouterr().err.strip()
    assert "fed.split dirichlet deals rows out by label" in err and "category, domain, label, source" in err
    assert "\n" not in err and not out.exists()


def test_the_label_column_used_and_the_held_out_rows_are_said(tiny_model_dir, tmp_path, capsys):
    data = _rows(tmp_path / "labelled.json", labelled=True)
    args = tiny_run_args(tiny_model_dir, tmp_path / "run", "--data.path", str(data), "--fed.split", "dirichlet")
    assert main([*args, "--fed.rounds", "1", "--baselines.local", "false", "--baselines.centralized", "false"]) == 0
    said = capsys.readouterr().out
    assert "labels from column 'category'" in said
    assert "Held out 2 of 40 rows for evaluation" in said and "each moves an accuracy by 50 points" in said


def test_any_hub_dataset_id_loads_through_the_hub_loader(tiny_model_dir, tmp_path, monkeypatch):
    import datasets

    from openfedllm.data import sources

    asked = []

    def hub(name, config, split):  # the hub itself is out of reach here: its answer, as datasets gives it
        asked.append(name)
        return datasets.Dataset.from_list([{"prompt": f"Name {i}.", "completion": f"{i}"} for i in range(24)])

    monkeypatch.setattr(sources, "load_hub", hub)
    monkeypatch.setattr("openfedllm.data.load_hub", hub)
    args = tiny_run_args(tiny_model_dir, tmp_path / "run", "--data.name", "someone/their-rows")
    assert main([*args, "--fed.rounds", "1", "--baselines.local", "false", "--baselines.centralized", "false"]) == 0
    assert asked == ["someone/their-rows"]


def test_a_registry_hub_id_means_its_entry_and_an_unknown_name_lists_the_forms():
    from openfedllm.data.registry import known
    from openfedllm.errors import UserError

    assert known("vicgalle/alpaca-gpt4", "sft") is known("alpaca-gpt4", "sft")
    with pytest.raises(UserError, match="or any hub id"):
        known("alpacca", "sft")


# --- recipes by name --------------------------------------------------------------------------------


def test_recipes_are_listed_copied_and_used_by_name_from_any_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["recipes"]) == 0
    listing = capsys.readouterr().out
    assert "sft_quick" in listing and "paper/sft_llama2_7b" in listing and "flowertune/medical" in listing
    assert main(["recipes", "cp", "paper/sft_llama2_7b", "mine.yaml"]) == 0
    assert (tmp_path / "mine.yaml").read_text().startswith("# The paper's federated instruction tuning")
    assert main(["sft", "--config", "quick", "--print-config"]) == 0
    assert "train_per_domain: 40" in capsys.readouterr().out  # sft_quick's own value
    assert main(["dpo", "--config", "quick", "--print-config"]) == 0
    assert "objective: dpo" in capsys.readouterr().out


# --- the small things -------------------------------------------------------------------------------


def test_version_usage_and_help_of_every_command(capsys):
    from openfedllm import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"openfedllm {__version__}"
    assert main(["--help"]) == 0
    usage = capsys.readouterr().out
    assert usage.startswith("usage: openfedllm {") and "federation" in usage.splitlines()[0]
    assert main(["data", "--help"]) == 0 and "inspect" in capsys.readouterr().out
    for argv in (["data", "list", "--help"], ["algorithms", "--help"], ["recipes", "--help"]):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: openfedllm") and "fedavg " not in out and "alpaca-gpt4 " not in out
    for argv in (["eval", "--help"], ["serve", "--help"], ["data", "inspect", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        out = capsys.readouterr().out
        assert "(default: " in out, argv
    with pytest.raises(SystemExit):
        main(["data", "inspect", "--help"])
    assert "--section.key VALUE" in capsys.readouterr().out


def test_a_misspelled_key_or_section_gets_a_suggestion(tmp_path, capsys):
    assert main(["sft", "--fed.num_client", "3", "--print-config"]) != 0
    assert "(did you mean fed.num_clients?)" in capsys.readouterr().err
    assert main(["sft", "--feed.rounds", "3", "--print-config"]) != 0
    assert "(did you mean fed?)" in capsys.readouterr().err


@pytest.mark.parametrize("argv,status", [(["--help"], 141), (["sft", "--help"], 0)])  # argparse drops EPIPE itself
def test_help_into_a_closed_pipe_is_not_a_traceback(argv, status):
    read, write = os.pipe()
    os.close(read)  # the reader is gone, as `| head` is after its lines
    done = subprocess.run([*CLI, *argv], stdout=write, stderr=subprocess.PIPE, text=True)
    os.close(write)
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr
    assert done.returncode == status


def test_export_errors_name_export(tmp_path, capsys):
    (tmp_path / "not-a-run").mkdir()
    assert main(["export", str(tmp_path / "not-a-run"), "--output-dir", str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err
    assert "export " in err and "no config.yaml" in err and "--resume" not in err


def test_eval_takes_home_tool_spellings_and_prints_without_an_output_file(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    fixtures = Path(__file__).parent / "fixtures" / "benchmarks"
    monkeypatch.chdir(tmp_path)
    args = ["eval", "--model", str(tiny_model_dir), "--benchmark", "fiqa_sa", "--limit", "2"]
    assert main([*args, "--data", f"fiqa_sa={fixtures / 'finance' / 'fiqa-2018-test.jsonl'}"]) == 0
    table = capsys.readouterr().out
    assert "| fiqa-sa |" in table  # our name for lm-eval's fiqa_sa
    assert not list(tmp_path.iterdir())  # no --output: nothing written


def test_a_finished_run_extends_to_more_rounds_and_its_baselines_follow(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = tiny_run_args(tiny_model_dir, out, "--fed.rounds", "2", "--baselines.centralized", "false")
    assert main(args) == 0
    capsys.readouterr()
    assert main(["sft", "--resume", str(out), "--fed.rounds", "3"]) == 0
    said = capsys.readouterr().out
    assert "Extending" in said and "follows the cosine over 3 rounds (rounds 1..2 kept theirs)" in said
    records = _records(out)
    federated = [r for r in records if r["type"] == "client" and r["phase"] == "federated"]
    assert sorted({r["round"] for r in federated}) == [1, 2, 3] and len(federated) == 3 * 2  # no duplicates
    lrs = {r["round"]: r["lr"] for r in federated}
    # rounds 1-2 from the 2-round cosine (1e-3, then its middle); round 3 from the 3-round one
    assert lrs[1] == pytest.approx(1e-3) and lrs[2] == pytest.approx(1e-4 + 9e-4 * 0.5)
    assert lrs[3] == pytest.approx(1e-4 + 9e-4 * 0.25)
    local = [r for r in records if r["type"] == "client" and r["phase"] == "local"]
    assert [r["round"] for r in local] == [1, 2, 3]  # the baseline ran again, for the new length
    assert yaml.safe_load((out / "config.yaml").read_text())["fed"]["rounds"] == 3
    summary = json.loads((out / "summary.json").read_text())
    final = [r for r in records if r["type"] == "eval" and r["phase"] == "federated"][-1]
    assert final["round"] == 3 and summary["evaluation"]["federated"]["loss"] == final["loss"]
    assert main(["sft", "--resume", str(out), "--fed.rounds", "2"]) != 0
    assert "has trained 3 federated rounds; give more" in capsys.readouterr().err


def test_plot_redraws_a_run_and_overlays_several(run, tmp_path, capsys, monkeypatch):
    import shutil

    shutil.rmtree(run / "plots")
    assert main(["plot", str(run)]) == 0
    assert (run / "plots" / "train_loss.png").is_file() and (run / "plots" / "evaluation.png").is_file()
    other = tmp_path / "other"
    shutil.copytree(run, other)
    out = tmp_path / "both.png"
    assert main(["plot", str(run), str(other), "--output", str(out)]) == 0
    assert out.stat().st_size > 10_000
    assert main(["plot", str(tmp_path)]) != 0  # not a run directory: one line
    assert "plot " in capsys.readouterr().err


def test_the_training_loss_plot_of_a_hundred_clients_draws_the_mean_a_band_and_a_few(tmp_path, monkeypatch):
    from openfedllm import plots

    drawn = []
    original = plots.pyplot().Axes.plot

    def spy(ax, *args, **kwargs):
        drawn.append(kwargs.get("label"))
        return original(ax, *args, **kwargs)

    monkeypatch.setattr(plots.pyplot().Axes, "plot", spy)
    records = [
        {"type": "client", "phase": "federated", "round": r, "client": c, "loss": 2.0 - 0.1 * r + 0.01 * c}
        for r in (1, 2, 3)
        for c in range(100)
    ]
    plots._train_loss(records, tmp_path / "loss.png", "run: fedavg, 100 clients")
    assert "mean over the round's clients" in drawn
    clients = [label for label in drawn if label and label.startswith("client ")]
    assert 1 <= len(clients) <= 4 and clients == sorted(clients, key=lambda x: int(x.split()[1]))


def test_a_validation_file_is_the_held_out_set_and_otherwise_the_held_out_rows_are_saved(
    tiny_model_dir, tmp_path, capsys
):
    train = _rows(tmp_path / "train.json", labelled=True)
    valid = tmp_path / "valid.json"
    valid.write_text(json.dumps([{"instruction": f"Add {i} and 2.", "output": str(i + 2)} for i in range(5)]))
    short = ["--fed.rounds", "1", "--baselines.local", "false", "--baselines.centralized", "false"]
    out = tmp_path / "with-valid"
    args = tiny_run_args(tiny_model_dir, out, "--data.path", str(train), "--data.eval_path", str(valid), *short)
    assert main(args) == 0
    said = capsys.readouterr().out
    assert f"Validation data {valid}: 5 rows read, 5 usable" in said
    assert not (out / "heldout.jsonl").exists()
    assert "split of 40 training examples" in said  # every row of data.path trains
    out = tmp_path / "without"
    assert main(tiny_run_args(tiny_model_dir, out, "--data.path", str(train), *short)) == 0
    held = [json.loads(x) for x in (out / "heldout.jsonl").read_text().splitlines()]
    assert len(held) == 2 and {"instruction", "output", "category"} <= set(held[0])
    assert main(["sft", "--data.eval_path", str(tmp_path / "missing.json"), "--print-config"]) != 0
    assert "data.eval_path: file not found" in capsys.readouterr().err


def test_eval_writes_the_settings_each_benchmark_used_and_logs_its_samples(tiny_model_dir, tmp_path, capsys):
    fixtures = Path(__file__).parent / "fixtures" / "benchmarks"
    out = tmp_path / "out.json"
    drop_file = fixtures / "drop" / "drop_dataset_dev.json"
    args = ["eval", "--model", str(tiny_model_dir), "--benchmark", "nwgi", "--benchmark", "drop"]
    args += ["--data", f"nwgi={fixtures / 'finance' / 'nwgi-test.jsonl'}", "--data", f"drop={drop_file}"]
    args += ["--limit", "3", "--shots", "1", "--max-new-tokens", "4", "--log-samples"]
    assert main(args) != 0
    assert "--log-samples writes beside OUT.json: add --output OUT.json" in capsys.readouterr().err
    assert main([*args, "--output", str(out)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert [line.split(":")[0] for line in err if "(n=3, " in line] == ["nwgi", "drop"]  # a line as each ends
    report = json.loads(out.read_text())["benchmarks"]
    assert report["nwgi"]["settings"] == {
        "shots": 1,
        "max_new_tokens": 4,
        "limit": 3,
        "data": [str((fixtures / "finance" / "nwgi-test.jsonl").resolve())],
    }
    assert report["drop"]["settings"]["shots"] == 1 and report["drop"]["settings"]["max_new_tokens"] == 4
    samples = [json.loads(line) for line in Path(report["nwgi"]["samples_file"]).read_text().splitlines()]
    assert Path(report["nwgi"]["samples_file"]) == tmp_path / "out.nwgi" / "samples.jsonl"
    assert [s["index"] for s in samples] == [0, 1, 2]
    # the logged verdicts are the metric: their mean is the accuracy of each mode
    for mode in ("loglik", "generate"):
        right = sum(s[mode]["correct"] for s in samples) / 3
        assert report["nwgi"]["metrics"][f"{mode}/accuracy"] == pytest.approx(right)
        assert all(s[mode]["predicted"] in [*s["options"], "(none)"] for s in samples)
    assert all(len(s["loglik"]["logprobs"]) == len(s["options"]) and "answer" in s["generate"] for s in samples)
    drop = [json.loads(line) for line in Path(report["drop"]["samples_file"]).read_text().splitlines()]
    assert len(drop) == 3 and all(s["prompt"].endswith("Answer:") for s in drop)
    assert report["drop"]["metrics"]["f1"] == pytest.approx(sum(s["f1"] for s in drop) / 3)


def test_eval_settings_follow_each_benchmarks_defaults_and_the_scoring_mode(tiny_model_dir, tmp_path):
    from openfedllm.evaluation import choice
    from openfedllm.evaluation.runner import Settings, used_settings

    plain = Settings()
    assert used_settings("mmlu", plain) == used_settings("mmlu", Settings(modes=choice.MODES))
    assert (used_settings("mmlu", plain).shots, used_settings("mmlu", plain).max_new_tokens) == (5, 16)
    loglik_only = Settings(modes=("loglik",), shots=0)
    assert (used_settings("mmlu", loglik_only).shots, used_settings("mmlu", loglik_only).max_new_tokens) == (0, None)
    assert used_settings("mbpp", Settings(shots=0)).shots == 3  # MBPP's prompt examples are part of it
    assert used_settings("humaneval", Settings(samples="s.jsonl")).max_new_tokens is None  # scored as given


def test_eval_draws_a_progress_bar_on_a_terminal(tiny_model_dir, tmp_path):
    import fcntl
    import pty
    import struct
    import termios

    fixtures = Path(__file__).parent / "fixtures" / "benchmarks"
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # tqdm draws no bar at width 0
    args = ["eval", "--model", str(tiny_model_dir), "--benchmark", "nwgi", "--limit", "4", "--max-new-tokens", "2"]
    args += ["--data", str(fixtures / "finance" / "nwgi-test.jsonl"), "--batch-size", "2"]
    child = subprocess.Popen([*CLI, *args], stdout=subprocess.DEVNULL, stderr=follower, cwd=tmp_path)
    os.close(follower)
    drawn = b""
    while True:  # read as it is drawn (a full terminal buffer would block the child)
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: every writer has closed the terminal
            break
        if not chunk:
            break
        drawn += chunk
    os.close(leader)
    assert child.wait(timeout=600) == 0
    text = drawn.decode(errors="replace")
    # the bars name the benchmark and count options (three for each of 4 questions) and answers
    assert re.search(r"nwgi log-likelihoods: +\d+%.*\| \d+/12 ", text)
    assert re.search(r"nwgi answers: +\d+%.*\| \d+/4 ", text)


def test_each_federation_has_its_own_folder_and_a_bare_down_stops_only_this_terminals(tmp_path, monkeypatch, capsys):
    from openfedllm.flower import federation

    monkeypatch.setenv("OPENFEDLLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FLWR_HOME", raising=False)
    # another terminal (its own session) brings a federation up first
    other = subprocess.run(
        [*CLI, "federation", "up", "--nodes", "1", "--threads", "1"],
        capture_output=True,
        text=True,
        start_new_session=True,
        env={**os.environ, "OPENFEDLLM_CACHE": str(tmp_path / "cache")},
    )
    assert other.returncode == 0, other.stderr
    assert "--federation openfedllm-local\n" in other.stdout
    try:
        assert main(["federation", "up", "--nodes", "1", "--threads", "1"]) == 0
        said = capsys.readouterr().out
        assert "--federation openfedllm-local-2\n" in said and "FLWR_HOME" not in said
        assert (
            federation.find_flwr_home("openfedllm-local-2") == tmp_path / "cache" / "federations" / "local-2" / "flwr"
        )
        assert federation.find_flwr_home("openfedllm-local") == tmp_path / "cache" / "federations" / "local" / "flwr"
        assert main(["federation", "down"]) == 0  # this terminal's, not the other's
        assert "local-2" in capsys.readouterr().out
        assert [r["name"] for r in federation.running()] == ["local"]
        assert main(["federation", "down"]) == 2
        assert "none of the federations up was started from this terminal: local (openfedllm-local)" in (
            capsys.readouterr().err
        )
        assert [r["name"] for r in federation.running()] == ["local"]
    finally:
        main(["federation", "down", "--name", "local"])
    assert federation.running() == []
    assert main(["federation", "down"]) == 2
    assert "no federation is up" in capsys.readouterr().err


def test_data_inspect_numbers_clients_in_whole_numbers():
    from collections import Counter

    from openfedllm.data_report import figure

    rows = [{"client": i, "size": 10 + i, "labels": Counter({"a": 5, "b": 5 + i})} for i in range(3)]
    fig = figure(rows)
    fig.canvas.draw()
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks  # 3 clients drew 0, 0.5, 1, ...
