"""Large populations: training rows tokenized when first used (data.tokenize), the client table of
a population, and a lazy run equal to an eager one."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from openfedllm.cli import main
from openfedllm.data.lazy import ClientRows, LazyRows, client_rows
from openfedllm.errors import UserError
from openfedllm.partition import client_table

from .conftest import tiny_run_args

NO_BASELINES = ["--baselines.local", "false", "--baselines.centralized", "false"]


def test_rows_are_tokenized_once_on_first_use_and_an_unusable_one_stands_in_for_the_next():
    calls = []

    def tokenize(example):
        calls.append(example)
        return (None, example == "long") if example in ("empty", "long") else (f"row:{example}", False)

    rows = LazyRows(["a", "empty", "b", "long", "c"], tokenize)
    assert len(rows) == 5 and calls == []
    view = client_rows(rows, [1, 2, 3])
    assert isinstance(view, ClientRows) and len(view) == 3
    assert view[0] == "row:b"  # "empty" has no response left: the client's next usable row
    assert view[2] == "row:b"  # "long" is dropped (over_length: drop): wraps to the client's first usable
    assert view[1] == "row:b" and calls == ["empty", "b", "long"]  # each tokenized once
    assert (rows.dropped, rows.over_length) == (2, 1)
    rows.append("poisoned")  # rows appended after the split (the data-poisoning attack) are tokenized already
    assert rows[5] == "poisoned" and len(rows) == 6
    with pytest.raises(UserError, match="none of a client's 2 training rows"):
        client_rows(rows, [1, 3])[0]
    assert client_rows(["x", "y", "z"], [2, 0]) == ["z", "x"]  # eager rows: a plain list, as before


def test_a_population_table_shows_its_first_clients_and_the_sizes_of_all():
    clients = [[i] * (1 + i % 3) for i in range(1000)]
    table = client_table(["d"] * 3000, clients)
    lines = table.splitlines()
    assert len(lines) == 1 + 20 + 1  # header, 20 clients, the summary
    assert lines[-1] == "... and 980 more clients; sizes of all 1,000: min 1, median 2, max 3"


def test_a_lazy_run_tokenizes_only_what_its_clients_use_and_equals_the_eager_run(tiny_model_dir, tmp_path):
    from openfedllm import config as cfg_mod
    from openfedllm.algorithms import ClientTask, FedAvg
    from openfedllm.rounds import train_client
    from openfedllm.setup import prepare

    runs = {}
    for mode in ("eager", "lazy"):
        out = tmp_path / mode
        assert main(tiny_run_args(tiny_model_dir, out, *NO_BASELINES, "--data.tokenize", mode)) == 0
        runs[mode] = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert all(torch.equal(runs["eager"][k], runs["lazy"][k]) for k in runs["eager"])

    config = cfg_mod.build({"model": {"name": str(tiny_model_dir)}, "data": {"tokenize": "lazy"}})
    setup = prepare(config, heldout=False)
    assert isinstance(setup.train_rows, LazyRows) and not setup.train_rows.cache
    rows = client_rows(setup.train_rows, setup.clients[0])
    task = ClientTask(global_state=setup.initial_state, message={}, lr=1e-3, steps=2)
    train_client(setup, FedAvg(), "federated", 0, 0, rows, task, {})
    used = len(setup.train_rows.cache)
    assert 0 < used <= 2 * config.train.batch_size < len(setup.clients[0])


def test_the_client_store_reads_as_of_a_round_and_keeps_only_what_a_resume_needs(tmp_path):
    from openfedllm.client_state import ClientStore

    store = ClientStore(tmp_path / "states")
    assert store.get(7, 3) == {} and store.latest(7) == {}  # never sampled
    for r in (0, 2, 5):
        store.put(7, r, {"c": torch.full((2,), float(r))})
        store.safe_round = r + 1  # the checkpoint after round r
    files = sorted(p.name for p in store.client_folder(7).iterdir())
    # round 5's file, and round 2's: the latest before the last checkpoint (round 5 ran after it)
    assert files == ["client-state-round2.safetensors", "client-state-round5.safetensors"]
    store.safe_round = 5  # say the checkpoint after round 5 was never written: a resume reruns round 5
    assert store.get(7, 5)["c"].tolist() == [2.0, 2.0] and store.get(7, 6)["c"].tolist() == [5.0, 5.0]
    assert store.latest(7)["c"].tolist() == [5.0, 5.0]
    # a checkpoint from before the store (client_states.pt): filed as of the round before the resume
    store.adopt({3: {"c": torch.ones(2)}, 7: {"c": torch.zeros(2)}}, 4)
    assert store.get(3, 4)["c"].tolist() == [1.0, 1.0] and store.get(7, 4)["c"].tolist() == [2.0, 2.0]
