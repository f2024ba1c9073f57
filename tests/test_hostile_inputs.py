"""Bad input through the real CLI, in a subprocess: exit 2, one stderr line naming the culprit,
no traceback, nothing new or changed on disk.

Each case builds its input in a folder of its own (a copy of a finished tiny run where it needs
one), runs `python -m openfedllm.cli ...` there, and compares the folder before and after.
The cases run two at a time: most never load a model, the others load the tiny one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from openfedllm.cli import main

from .conftest import tiny_run_args

pytestmark = pytest.mark.slow  # ~45 CLI processes

DEEP = "[" * 100_000 + "]" * 100_000  # nesting past every recursive parser's limit


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def _alpaca(tmp: Path) -> Path:
    rows = [{"instruction": f"Say {i}.", "output": f"{i}"} for i in range(12)]
    return _write(tmp / "good.json", json.dumps(rows))


def _progress(run: Path, **changes) -> None:
    path = run / "checkpoints" / "progress.json"
    progress = json.loads(path.read_text())
    path.write_text(json.dumps({**progress, **changes}))


def _sft(ctx, tmp: Path, *extra) -> list[str]:
    return [
        "sft",
        "--output-dir",
        str(tmp / "out"),
        "--model.name",
        str(ctx["model"]),
        "--fed.rounds",
        "1",
        "--data.train_per_domain",
        "4",
        "--data.heldout_per_domain",
        "1",
        "--fed.num_clients",
        "2",
        "--fed.clients_per_round",
        "2",
        "--train.local_steps",
        "1",
        *extra,
    ]


def _data(name: str, content):
    def case(ctx, tmp):
        return _sft(ctx, tmp, "--data.path", str(_write(tmp / name, content)))

    return case


def _config(content):
    def case(ctx, tmp):
        return ["sft", "--config", str(_write(tmp / "c.yaml", content)), "--output-dir", str(tmp / "out")]

    return case


def _resume(corrupt):
    def case(ctx, tmp):
        run = tmp / "run"
        shutil.copytree(ctx["run"], run)
        _progress(run, done=[], round=1)  # an interrupted run, so that resuming has work to do
        corrupt(run)
        return ["sft", "--resume", str(run)]

    return case


def _export(corrupt, target=None):
    def case(ctx, tmp):
        run = tmp / "run"
        shutil.copytree(ctx["run"], run)
        corrupt(run)
        return ["export", str(run), "--output-dir", str(target(tmp) if target else tmp / "exported")]

    return case


def _eval(samples: str | bytes | None, *extra, output=None):
    def case(ctx, tmp):
        args = ["eval", "--benchmark", "humaneval", "--output", str(output(tmp) if output else tmp / "o.json")]
        if samples is not None:
            args += ["--samples", str(_write(tmp / "s.jsonl", samples))]
        return args + list(extra)

    return case


def _truncate(path: str, keep: int = 100):
    def corrupt(run: Path):
        f = run / path
        f.write_bytes(f.read_bytes()[:keep])

    return corrupt


def _garbage(path: str, content: bytes = b"\x00\xffgarbage\x89"):
    return lambda run: (run / path).write_bytes(content)


def _gguf(content_of):
    def case(ctx, tmp):
        return _sft(ctx, tmp, "--model.name", str(_write(tmp / "m.gguf", content_of(ctx))))

    return case


def _dir_with(files: dict):
    def make(tmp: Path) -> Path:
        folder = tmp / "folder"
        for name, content in files.items():
            _write(folder / name, content)
        return folder

    return make


CASES = {
    # the config file and settings
    "yaml not a mapping": (_config("- a\n- b\n"), "c.yaml"),
    "yaml section not a mapping": (_config("train: 5\n"), "train"),
    "yaml not utf-8": (_config(b"train:\n  lr: \xff\xfe\n"), "c.yaml"),
    "yaml syntax": (_config("train: [\n"), "c.yaml"),
    "yaml nested without end": (_config("train: " + DEEP + "\n"), "c.yaml"),
    "config is a folder": (
        lambda ctx, tmp: ["sft", "--config", str(tmp), "--output-dir", str(tmp / "out")],
        "--config",
    ),
    "lr inf": (lambda ctx, tmp: _sft(ctx, tmp, "--train.lr", "inf"), "train.lr"),
    "lr nan": (lambda ctx, tmp: _sft(ctx, tmp, "--train.lr", "nan"), "train.lr"),
    "fedprox_mu inf": (lambda ctx, tmp: _sft(ctx, tmp, "--fed.fedprox_mu", "inf"), "fed.fedprox_mu"),
    "dpo beta nan": (lambda ctx, tmp: ["dpo", "--dpo.beta", "nan", "--output-dir", str(tmp / "out")], "dpo.beta"),
    "rounds absurd": (lambda ctx, tmp: _sft(ctx, tmp, "--fed.rounds", "1000000000"), "fed.rounds"),
    "rank above hidden size": (lambda ctx, tmp: _sft(ctx, tmp, "--lora.rank", "100"), "lora.rank"),
    # data files
    "json null": (_data("d.json", "null\n"), "d.json"),
    "jsonl scalar row": (_data("d.jsonl", '{"instruction": "a", "output": "b"}\n5\n'), "line 2"),
    "json nested without end": (_data("d.json", '{"instruction": ' + DEEP + ', "output": "b"}\n'), "d.json"),
    "jsonl not utf-8": (_data("d.jsonl", b'{"instruction": "\xff\xfe", "output": "b"}\n'), "d.jsonl"),
    "csv ragged": (_data("d.csv", "instruction,output\na,b\nc,d,e\n"), "row 3 has 3 fields"),
    "no text cells": (
        _data("d.jsonl", '{"instruction": "a", "output": 5}\n{"instruction": "b", "output": [1]}\n'),
        "2 not text",
    ),
    "bad dataset_info.json": (
        lambda ctx, tmp: _sft(
            ctx, tmp, "--data.path", str(_dir_with({"dataset_info.json": "{garbage", "state.json": "{}"})(tmp))
        ),
        "folder",
    ),
    # models and adapters
    "gguf garbage": (_gguf(lambda ctx: b"GGUF" + os.urandom(4000)), "m.gguf"),
    "gguf truncated": (_gguf(lambda ctx: ctx["gguf"].open("rb").read(200_000)), "m.gguf"),
    "model config garbage": (
        lambda ctx, tmp: _sft(ctx, tmp, "--model.name", str(_dir_with({"config.json": "{garbage"})(tmp))),
        "model.name",
    ),
    "adapter config garbage": (
        lambda ctx, tmp: _sft(ctx, tmp, "--model.adapter", str(_dir_with({"adapter_config.json": "{garbage"})(tmp))),
        "model.adapter",
    ),
    "adapter without weights": (
        lambda ctx, tmp: _sft(
            ctx,
            tmp,
            "--model.adapter",
            str(_dir_with({"adapter_config.json": (ctx["run"] / "adapter" / "adapter_config.json").read_text()})(tmp)),
        ),
        "model.adapter",
    ),
    # the run directory
    "output-dir is a file": (
        lambda ctx, tmp: _sft(ctx, tmp, "--output-dir", str(_write(tmp / "f", "x"))),
        "--output-dir",
    ),
    "output-dir not writable": (
        lambda ctx, tmp: _sft(ctx, tmp, "--output-dir", "/proc/openfedllm-run"),
        "--output-dir",
    ),
    "resume truncated weights": (_resume(_truncate("checkpoints/trainable.safetensors")), "trainable.safetensors"),
    "resume garbage server state": (_resume(_garbage("checkpoints/server_state.pt")), "server_state.pt"),
    "resume garbage progress": (_resume(_garbage("checkpoints/progress.json")), "progress.json"),
    "resume garbage metrics": (_resume(_garbage("metrics.jsonl")), "metrics.jsonl"),
    "resume garbage config": (_resume(_garbage("config.yaml", b"train: [\n")), "config.yaml"),
    "resume past the last round": (_resume(lambda run: _progress(run, round=99)), "progress.json"),
    "resume unknown phase": (_resume(lambda run: _progress(run, phase="weird")), "progress.json"),
    # export
    "export deleted adapter": (_export(lambda run: shutil.rmtree(run / "adapter")), "adapter"),
    "export truncated adapter": (_export(_truncate("adapter/adapter_model.safetensors")), "adapter_model"),
    "export to a file": (_export(lambda run: None, target=lambda tmp: _write(tmp / "f", "x")), "--output-dir"),
    "export not writable": (_export(lambda run: None, target=lambda tmp: Path("/proc/openfedllm-x")), "--output-dir"),
    # eval
    "samples not objects": (_eval("[1, 2]\n"), "line 1 is not a JSON object"),
    "samples not utf-8": (_eval(b'{"task_id": "HumanEval/0", "completion": "\xff"}\n'), "s.jsonl"),
    "samples nested without end": (_eval(DEEP + "\n"), "s.jsonl"),
    "eval output is a folder": (
        _eval('{"task_id": "HumanEval/0", "completion": "    return 1\\n"}\n', output=lambda tmp: tmp),
        "--output",
    ),
    "eval k 0": (_eval('{"task_id": "HumanEval/0", "completion": "    return 1\\n"}\n', "--k", "0"), "--k"),
}


def _snapshot(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(folder.rglob("*"))
    }


def _run_case(name: str, ctx: dict, root: Path) -> str | None:
    """The case's problem, or None when it holds."""
    make, culprit = CASES[name]
    tmp = root / name.replace(" ", "_")
    tmp.mkdir()
    args = make(ctx, tmp)
    before = _snapshot(tmp)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OPENFEDLLM_CACHE": str(root / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "openfedllm.cli", *args], cwd=tmp, env=env, capture_output=True, text=True, timeout=600
    )
    err = proc.stderr.strip()
    problems = []
    if proc.returncode != 2:
        problems.append(f"exit {proc.returncode}")
    if "Traceback" in err or len(err.splitlines()) != 1:
        problems.append(f"stderr has {len(err.splitlines())} lines")
    if culprit not in err or "error:" not in err:
        problems.append(f"does not name {culprit!r}")
    after = _snapshot(tmp)
    if after != before:
        changed = sorted(set(after.items()) ^ set(before.items()))
        problems.append(f"disk changed: {[k for k, _ in changed][:4]}")
    return f"{name}: {'; '.join(problems)} -- {err[-300:]!r}" if problems else None


@pytest.fixture(scope="module")
def ctx(tiny_model_dir, tmp_path_factory):
    from openfedllm.models import default_gguf_path

    run = tmp_path_factory.mktemp("hostile") / "run"
    assert (
        main(
            tiny_run_args(
                tiny_model_dir,
                run,
                "--fed.rounds",
                "2",
                "--baselines.local",
                "false",
                "--baselines.centralized",
                "false",
            )
        )
        == 0
    )
    return {"model": tiny_model_dir, "run": run, "gguf": default_gguf_path()}


def test_every_bad_input_is_one_line_and_leaves_the_disk_as_it_was(ctx, tmp_path):
    with ThreadPoolExecutor(max_workers=2) as pool:
        problems = [p for p in pool.map(lambda n: _run_case(n, ctx, tmp_path), CASES) if p]
    assert not problems, "\n".join(problems)


def test_ctrl_c_while_starting_is_one_line_and_writes_nothing(ctx, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OPENFEDLLM_INTERRUPT_AT": "prepare"}
    proc = subprocess.run(
        [sys.executable, "-m", "openfedllm.cli", *_sft(ctx, tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        # A suite started in the background (nohup, `cmd &` in a script) inherits SIGINT ignored, and
        # Python then installs no KeyboardInterrupt handler: give the run the terminal's default.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.returncode == 130 and proc.stderr.strip() == "openfedllm sft: interrupted", proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_previous_checkpoint(ctx, tmp_path):
    out = tmp_path / "out"
    args = [
        *_sft(ctx, tmp_path, "--fed.rounds", "3", "--fed.clients_per_round", "1"),
        "--baselines.local",
        "false",
        "--baselines.centralized",
        "false",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OPENFEDLLM_FAIL_WRITE_AT": "checkpoint:2"}
    proc = subprocess.run(
        [sys.executable, "-m", "openfedllm.cli", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and "cannot write the checkpoint of round 2" in err[0], err
    assert "No space left on device" in err[0] and "the previous checkpoint is kept" in err[0]
    assert json.loads((out / "checkpoints" / "progress.json").read_text())["round"] == 1
    assert not (out / ".checkpoints.tmp").exists()
    # and the run continues from round 1 once there is room
    env.pop("OPENFEDLLM_FAIL_WRITE_AT")
    proc = subprocess.run(
        [sys.executable, "-m", "openfedllm.cli", "sft", "--resume", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "after round 1" in proc.stdout
    assert json.loads((out / "checkpoints" / "progress.json").read_text())["round"] == 3
