"""`openfedllm experiment` end to end on the tiny model: the grid, results files, resume, bad grids."""

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from openfedllm import rounds
from openfedllm.cli import main

TINY = {
    "data": {"train_per_domain": 6, "heldout_per_domain": 2},
    "fed": {"num_clients": 5, "clients_per_round": 2, "rounds": 2, "split": "domain"},
    "train": {"local_steps": 1, "batch_size": 4},
    "eval": {"max_new_tokens": 3, "every": 2},
}
GRID = {
    "methods": ["fedavg", "scaffold", "local", "centralized"],
    "seeds": [1, 2],
    "config": TINY,
    "quick": {"seeds": [1], "methods": ["fedavg", "local"]},
}


def _write_grid(tmp_path, grid=GRID):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


def _rows(out):
    with (out / "results.csv").open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def finished(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("exp")
    out = tmp / "out"
    assert (
        main(["experiment", str(_write_grid(tmp)), "--output-dir", str(out), "--model.name", str(tiny_model_dir)]) == 0
    )
    return out


def test_results_have_one_row_per_method_and_seed(finished):
    rows = _rows(finished)
    assert [(r["method"], r["seed"]) for r in rows] == [
        (m, s) for s in ("1", "2") for m in ("base model", "fedavg", "scaffold", "local", "centralized")
    ]
    assert {"accuracy_mean", "accuracy_own", "loss", "acc_code", "acc_math", "seconds", "run_dir"} <= set(rows[0])
    markdown = (finished / "results.md").read_text()
    for method in ("fedavg", "scaffold", "local", "centralized"):
        assert f"| {method} | 2 |" in markdown
    assert "FL algorithms beat local training" in markdown
    assert (finished / "plots" / "methods.png").stat().st_size > 10_000


def test_local_row_is_the_mean_over_every_client_trained_alone(finished):
    local = next(r for r in _rows(finished) if r["method"] == "local" and r["seed"] == "1")
    dirs = local["run_dir"].split(";")
    assert dirs == [f"runs/local-seed1/client{k}" for k in range(5)]
    finals, owns = [], []
    for k, d in enumerate(dirs):
        records = [json.loads(x) for x in (finished / d / "metrics.jsonl").read_text().splitlines()]
        clients = {r["client"] for r in records if r["type"] == "client"}
        assert clients == {0}  # a federation of one: this client alone
        final = [r for r in records if r["type"] == "eval"][-1]
        finals.append(final)
        config = yaml.safe_load((finished / d / "config.yaml").read_text())
        assert config["baselines"]["local_client"] == k
        # domain split: client k holds the k-th domain in sorted order
        owns.append(final["accuracy"][sorted(final["accuracy"])[k]])
    assert float(local["accuracy_mean"]) == pytest.approx(sum(f["accuracy_mean"] for f in finals) / 5)
    assert float(local["loss"]) == pytest.approx(sum(f["loss"] for f in finals) / 5)
    assert float(local["accuracy_own"]) == pytest.approx(sum(owns) / 5)


def test_a_cell_is_the_same_run_as_openfedllm_sft(finished, tiny_model_dir, tmp_path):
    args = [
        "sft",
        "--output-dir",
        str(tmp_path / "sft"),
        "--model.name",
        str(tiny_model_dir),
        "--train.seed",
        "2",
        "--fed.algorithm",
        "scaffold",
        "--baselines.local",
        "false",
        "--baselines.centralized",
        "false",
    ]
    for section, values in TINY.items():
        for key, value in values.items():
            args += [f"--{section}.{key}", str(value)]
    assert main(args) == 0
    sft = load_file(str(tmp_path / "sft" / "adapter" / "adapter_model.safetensors"))
    cell = load_file(str(finished / "runs" / "scaffold-seed2" / "adapter" / "adapter_model.safetensors"))
    assert sft.keys() == cell.keys()
    assert all(torch.equal(sft[k], cell[k]) for k in sft)


def test_interrupted_experiment_resumes_to_the_same_results(finished, tiny_model_dir, tmp_path, monkeypatch):
    real_save = rounds.save_checkpoint
    calls = []

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        calls.append(1)
        if len(calls) == 5:  # seed 1: fedavg 2 rounds, scaffold 2 rounds, then local client 0's first round
            raise KeyboardInterrupt

    monkeypatch.setattr(rounds, "save_checkpoint", save_then_die)
    out = tmp_path / "out"
    grid = _write_grid(tmp_path)
    assert main(["experiment", str(grid), "--output-dir", str(out), "--model.name", str(tiny_model_dir)]) == 130
    monkeypatch.setattr(rounds, "save_checkpoint", real_save)
    assert not (out / "results.csv").exists()
    assert main(["experiment", "--resume", str(out)]) == 0
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert drop(_rows(out)) == drop(_rows(finished))
    assert f"Reproduce: `openfedllm experiment {grid} --output-dir {out}" in (out / "results.md").read_text()


def test_quick_applies_the_quick_section(tiny_model_dir, tmp_path):
    out = tmp_path / "q"
    assert (
        main(
            [
                "experiment",
                str(_write_grid(tmp_path)),
                "--quick",
                "--output-dir",
                str(out),
                "--model.name",
                str(tiny_model_dir),
                "--fed.rounds",
                "1",
            ]
        )
        == 0
    )
    assert [(r["method"], r["seed"]) for r in _rows(out)] == [("base model", "1"), ("fedavg", "1"), ("local", "1")]
    saved = yaml.safe_load((out / "experiment.yaml").read_text())
    assert saved["config"]["fed"]["rounds"] == 1 and saved["seeds"] == [1]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"methods": ["fedavg", "fedavgg"]}, "unknown method 'fedavgg'; valid: fedavg, fedprox"),
        ({"method": ["fedavg"]}, "unknown key 'method'; valid: methods, seeds, config, quick"),
        ({"seeds": [1, 1]}, "seeds must be a list of distinct integers"),
        ({"config": {"fed": {"rounds": 0}}}, "fed.rounds must be > 0"),
        ({"config": {"fed": {"round": 3}}}, "unknown config key fed.round"),
        ({"methods": []}, "methods must be a non-empty list"),
    ],
)
def test_bad_grid_fails_with_one_line_and_writes_nothing(change, message, tmp_path, capsys):
    grid = _write_grid(tmp_path, {**GRID, **change})
    out = tmp_path / "out"
    assert main(["experiment", str(grid), "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_own_accuracy_by_hand():
    from openfedllm.experiment import own_accuracy

    accuracy = {"a": 1.0, "b": 0.5, "c": 0.0}
    # client 0 holds a; client 1 holds b and c: (1.0 + (0.5 + 0.0) / 2) / 2
    assert own_accuracy(accuracy, [{"a"}, {"b", "c"}]) == pytest.approx(0.625)
    assert own_accuracy({}, [{"a"}]) is None


def test_claim_check_by_hand():
    from openfedllm.experiment import claim_lines

    def row(method, seed, acc, loss):
        return {"method": method, "seed": seed, "accuracy_mean": acc, "accuracy_own": acc, "loss": loss}

    rows = [
        row("local", 1, 0.4, 1.0),
        row("local", 2, 0.2, 1.2),
        row("fedavg", 1, 0.5, 0.9),
        row("fedavg", 2, 0.0, 0.8),  # mean 0.25 vs 0.3: worse
        row("fedyogi", 1, 0.6, 1.1),
        row("fedyogi", 2, 0.3, 1.3),
    ]  # mean 0.45 vs 0.3
    lines = claim_lines(rows)
    assert "- fedavg: all domains 0.250 vs 0.300 (-0.050, better on 1 of 2 seeds)" in lines[4]
    assert "- fedyogi: all domains 0.450 vs 0.300 (+0.150, better on 2 of 2 seeds)" in lines[5]
    assert lines[-1] == "1 of 2 FL algorithms beat local training on mean accuracy over all domains."
    # without checkable answers the held-out loss decides, lower winning
    for r in rows:
        r["accuracy_mean"] = r["accuracy_own"] = None
    lines = claim_lines(rows)
    assert "- fedavg: held-out loss 0.850 vs 1.100 (-0.250, better on 2 of 2 seeds)" in lines[4]
    assert lines[-1] == "1 of 2 FL algorithms beat local training on held-out loss."


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parent.parent / "configs" / "experiments").glob("*.yaml")), ids=lambda p: p.stem
)
def test_every_shipped_grid_loads_and_each_cell_validates(path):
    """A grid's bad key would otherwise surface only when someone runs it (load_grid builds and
    validates every cell's config, full and --quick)."""
    from openfedllm.experiment import load_grid

    for quick in (False, True):
        grid = load_grid(str(path), quick=quick)
        assert grid.methods and grid.seeds
