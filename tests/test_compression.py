"""comm.upload / comm.download: each codec's round trip within its stated bound, top-k's error
feedback, the arrays' layout and bytes, and compressed runs (bytes, checkpoints, exact resume)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from openfedllm.cli import main
from openfedllm.compression import RESIDUAL, Wire, array_bytes, build, reply_layout, segments
from openfedllm.compression.nf4 import levels
from openfedllm.config import build as build_config
from openfedllm.flower.transport import arrays_record, check_outgoing, content_bytes

from .conftest import interrupted_after_round_2_then_resumed, tiny_run_args

NO_BASELINES = ["--baselines.local", "false", "--baselines.centralized", "false"]


def _vector(n=5000, seed=0):
    """Values over six orders of magnitude, both signs, and exact zeros."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * torch.logspace(-4, 2, n)[torch.randperm(n, generator=g)]
    x[::97] = 0.0
    return x


def _roundtrip(name, x, segs, fraction=0.1):
    codec = build(name, fraction)
    arrays = codec.encode(x, segs)
    layout = codec.layout(x.numel(), len(segs))
    assert {k: (str(a.dtype), a.size) for k, a in arrays.items()} == layout  # sizes never depend on the values
    return codec.decode(arrays, x.numel(), segs), arrays


@pytest.mark.parametrize(("name", "bound"), [("fp16", 2.0**-11), ("bf16", 2.0**-8)])
def test_half_precision_round_trips_within_its_relative_error(name, bound):
    x = _vector()
    back, _ = _roundtrip(name, x, [x.numel()])
    normal = x.abs() > 6.2e-5  # fp16's normal range; bf16 has float32's
    assert torch.all((back - x)[normal].abs() <= bound * x[normal].abs())
    assert torch.equal(back[x == 0], x[x == 0])
    # fp16 saturates rather than overflowing
    assert build("fp16").decode(build("fp16").encode(torch.tensor([1e6, -1e6]), [2]), 2, [2]).tolist() == [
        65504.0,
        -65504.0,
    ]


@pytest.mark.parametrize("scales", ["tensor", "row"])
def test_int8_is_within_half_a_step_of_its_segment_and_exact_on_the_grid(scales):
    like = {"a": torch.zeros(4, 300), "b": torch.zeros(600, 2), "c": torch.zeros(5)}
    segs = segments(like, scales)
    assert segs == ([1200, 1200, 5] if scales == "tensor" else [300] * 4 + [2] * 600 + [5])
    x = _vector(sum(segs))
    x[-5:] = 0.0  # an all-zero segment: scale 0, travels as zeros
    back, arrays = _roundtrip("int8", x, segs)
    start = 0
    for seg, scale in zip(segs, arrays["scales"]):
        piece = x[start : start + seg]
        assert scale == pytest.approx(piece.abs().max().item() / 127, rel=1e-6)
        assert torch.all((back[start : start + seg] - piece).abs() <= scale / 2 * (1 + 1e-5))
        start += seg
    assert torch.equal(back[-5:], torch.zeros(5))
    # values on the grid s*q come back exactly: by hand, absmax 127 -> s = 1
    grid = torch.tensor([127.0, -3.0, 0.0, 64.0])
    assert torch.equal(_roundtrip("int8", grid, [4])[0], grid)


def test_nf4_is_bitsandbytes_and_within_half_the_widest_gap_of_each_block():
    import bitsandbytes.functional as bnb

    x = _vector(64 * 40 + 7)  # a partial last block
    back, arrays = _roundtrip("nf4", x, [x.numel()])
    codes, state = bnb.quantize_4bit(x.clone(), blocksize=64, quant_type="nf4")
    assert torch.equal(back, bnb.dequantize_4bit(codes, state).reshape(-1))  # bitsandbytes' own numbers
    gap = torch.diff(levels()).max().item()
    for b, absmax in enumerate(arrays["absmax"]):
        block = slice(64 * b, 64 * (b + 1))
        assert torch.all((back[block] - x[block]).abs() <= absmax * gap / 2 + 1e-6)
    # the levels themselves are exact: -1, 0 and 1 times a block's absmax
    exact = torch.tensor([2.0, -2.0, 0.0] + [0.0] * 61)
    assert torch.equal(_roundtrip("nf4", exact, [64])[0], exact)


def test_topk_keeps_the_k_largest_exactly_and_ties_go_to_the_lower_index():
    x = torch.tensor([0.5, -3.0, 0.0, 3.0, 1.0, -0.5, 2.0, 0.1])
    back, arrays = _roundtrip("topk", x, [8], fraction=0.4)  # k = ceil(3.2) = 4
    assert arrays["indices"].tolist() == [1, 3, 4, 6]
    assert back.tolist() == [0.0, -3.0, 0.0, 3.0, 1.0, 0.0, 2.0, 0.0]
    tie = torch.tensor([1.0, -1.0, 1.0, 1.0])
    assert build("topk", 0.5).encode(tie, [4])["indices"].tolist() == [0, 1]


def test_error_feedback_keeps_exactly_what_topk_dropped_and_nothing_is_lost():
    """e_t = v_t - top_k(v_t) with v_t = Delta_t + e_{t-1}: so sum(sent) + e_T = sum(Delta) (Stich et
    al. 2018); by hand on the first round, then over 6 rounds."""
    like = {"w": torch.zeros(200)}
    wire = Wire.of(build_config({"comm": {"upload": "topk", "topk_fraction": 0.05}}))
    x = {"w": torch.zeros(200)}
    own: dict = {}
    sent_total, moves_total = torch.zeros(200, dtype=torch.float64), torch.zeros(200, dtype=torch.float64)
    for t in range(6):
        move = _vector(200, seed=t)
        v = move + own.get(RESIDUAL + "update", torch.zeros(200))
        arrays, _, own = wire.send_update({"w": move}, x, {}, own)
        got = wire.receive_update(arrays, x, like)["w"]
        kept = torch.zeros(200, dtype=torch.bool)
        kept[torch.from_numpy(arrays["indices"].astype(np.int64))] = True
        assert kept.sum() == 10 and torch.equal(got[kept], v[kept]) and torch.equal(got[~kept], torch.zeros(190))
        assert torch.equal(own[RESIDUAL + "update"], torch.where(kept, 0.0, v))  # exactly what was dropped
        sent_total += got.double()
        moves_total += move.double()
    torch.testing.assert_close(sent_total + own[RESIDUAL + "update"].double(), moves_total, atol=1e-4, rtol=0)


def test_the_server_rebuilds_from_its_own_x_and_the_download_error_stays_out_of_it():
    """A client received x^ = int8(x) and moved to y; the server gets x + (y - x^), not y."""
    wire = Wire.of(build_config({"comm": {"download": "int8"}}))  # upload none: the move, float32
    x = {"w": _vector(300, seed=1).reshape(3, 100)}
    received = wire.receive_state(wire.send_state(x), x)
    assert not torch.equal(received["w"], x["w"]) and (received["w"] - x["w"]).abs().max() > 0
    y = {"w": received["w"] + 0.01}
    up, _, _ = wire.send_update(y, received, {}, {})
    torch.testing.assert_close(wire.receive_update(up, x, x)["w"], x["w"] + 0.01, atol=1e-6, rtol=0)
    # both none: the tensors themselves, bit for bit, as before compression existed
    exact = Wire.of(build_config({}))
    assert exact.exact and torch.equal(exact.receive_update(exact.send_update(y, x, {}, {})[0], x, x)["w"], y["w"])


@pytest.mark.parametrize("name", ["none", "fp16", "bf16", "int8", "nf4", "topk"])
def test_what_a_node_sends_passes_its_check_and_the_bytes_are_flowers(name):
    from flwr.app import RecordDict

    like = {"a": torch.zeros(8, 64), "b": torch.zeros(64, 8)}
    segs = segments(like, "tensor")
    x = _vector(1024)
    arrays = build(name).encode(x, segs)
    record = RecordDict({"arrays": arrays_record(arrays)})
    check_outgoing(record, reply_layout(name, 0.1, 1024, len(segs), exact=name == "none"))
    assert array_bytes(arrays) == content_bytes(record)
    with pytest.raises(ValueError):  # a reply of another size, or another codec's arrays, is refused
        check_outgoing(record, reply_layout(name, 0.1, 1000, len(segs), exact=name == "none"))
    if name != "none":
        with pytest.raises(ValueError):
            check_outgoing(record, 1024)


def test_settings_that_cannot_work_are_one_line(tmp_path, capsys):
    assert main(["sft", "--output-dir", str(tmp_path / "r"), "--comm.download", "topk"]) == 2
    assert "comm.download: topk" in capsys.readouterr().err
    assert main(["sft", "--output-dir", str(tmp_path / "r"), "--comm.upload", "int8", "--secagg.enabled", "true"]) == 2
    assert "not with secagg.enabled" in capsys.readouterr().err
    assert main(["sft", "--output-dir", str(tmp_path / "r"), "--comm.topk_fraction", "0"]) == 2
    assert not (tmp_path / "r").exists()


def _clients(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["type"] == "client"]


def test_int8_uploads_a_quarter_of_the_bytes_and_trains_like_float32(tiny_model_dir, tmp_path):
    plain, int8 = tmp_path / "plain", tmp_path / "int8"
    assert main(tiny_run_args(tiny_model_dir, plain, *NO_BASELINES, "--fed.rounds", "2")) == 0
    assert main(tiny_run_args(tiny_model_dir, int8, *NO_BASELINES, "--fed.rounds", "2", "--comm.upload", "int8")) == 0
    n = sum(t.numel() for t in load_file(str(plain / "adapter" / "adapter_model.safetensors")).values())
    tensors = len(load_file(str(plain / "adapter" / "adapter_model.safetensors")))
    for a, b in zip(_clients(plain), _clients(int8)):
        assert a["bytes_up"] == 128 + 4 * n and a["bytes_down"] == b["bytes_down"] == 128 + 4 * n
        assert b["bytes_up"] == (128 + n) + (128 + 4 * tensors)  # int8 codes, one float32 scale per tensor
        assert a["bytes_up"] / b["bytes_up"] > 3.8
    summary = json.loads((int8 / "summary.json").read_text())
    assert summary["communication"]["bytes_up"] == sum(r["bytes_up"] for r in _clients(int8))
    # the same local steps on a rounded move: the adapters differ, within int8's half step per round
    a = load_file(str(plain / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(int8 / "adapter" / "adapter_model.safetensors"))
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    assert 0 < diff < 1e-2


def test_topk_with_scaffold_keeps_its_residuals_in_the_checkpoint_and_resumes_exactly(
    tiny_model_dir, tmp_path, monkeypatch
):
    settings = [*NO_BASELINES, "--fed.algorithm", "scaffold", "--comm.upload", "topk", "--comm.topk_fraction", "0.2"]
    settings += ["--comm.download", "nf4"]
    full = tmp_path / "full"
    assert main(tiny_run_args(tiny_model_dir, full, *settings, "--fed.rounds", "4")) == 0
    resumed = interrupted_after_round_2_then_resumed(
        tiny_model_dir, tmp_path, [*settings, "--fed.rounds", "4"], monkeypatch
    )
    a = load_file(str(full / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(resumed / "adapter" / "adapter_model.safetensors"))
    assert max((a[k] - b[k]).abs().max().item() for k in a) == 0
    from openfedllm.client_state import ClientStore

    store = ClientStore(full / "client-state" / "federated")  # each sampled client's residuals, on disk
    states = [store.latest(cid) for cid in range(3)]
    assert sum(bool(s) for s in states) >= 2
    assert all(
        {RESIDUAL + "update", RESIDUAL + "extras"} <= set(s) and any(".lora_A." in k for k in s) for s in states if s
    )
    n = sum(t.numel() for t in a.values())
    k = math.ceil(0.2 * n)
    first = _clients(full)[0]  # y_i and SCAFFOLD's c_i change: k indices and k values each
    assert first["bytes_up"] == 2 * (2 * (128 + 4 * k))


def test_an_experiment_takes_codecs_as_methods_with_bytes_per_round(tiny_model_dir, tmp_path):
    import csv

    import yaml

    grid = {
        "methods": ["none", "int8"],
        "seeds": [1, 2],
        "config": {
            "data": {"train_per_domain": 6, "heldout_per_domain": 2},
            "fed": {"num_clients": 5, "clients_per_round": 2, "rounds": 2},
            "train": {"local_steps": 1, "batch_size": 4},
            "eval": {"max_new_tokens": 3, "every": 2},
        },
    }
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(grid))
    out = tmp_path / "out"
    assert (
        main(["experiment", str(tmp_path / "grid.yaml"), "--output-dir", str(out), "--model.name", str(tiny_model_dir)])
        == 0
    )
    with (out / "results.csv").open() as f:
        rows = {(r["method"], r["seed"]): r for r in csv.DictReader(f)}
    for seed in ("1", "2"):
        plain, int8 = rows[("none", seed)], rows[("int8", seed)]
        clients = _clients(out / "runs" / f"int8-seed{seed}")
        assert float(int8["mb_up_per_round"]) == pytest.approx(sum(r["bytes_up"] for r in clients) / 2 / 1e6)
        assert float(plain["mb_up_per_round"]) / float(int8["mb_up_per_round"]) > 3.8
        assert float(plain["mb_per_round"]) == pytest.approx(2 * float(plain["mb_up_per_round"]))
    markdown = (out / "results.md").read_text()
    assert "MB up / round" in markdown and "## Upload codecs against none" in markdown and "- int8:" in markdown
