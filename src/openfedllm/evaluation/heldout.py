"""Held-out evaluation during training: the global model's loss and checkable answers on the
run's held-out rows (for DPO also preference accuracy, reward margin and refusal rates), and
eval.benchmarks through the same code as `openfedllm eval`."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from ..dpo import preference_metrics
from ..evaluate import accuracy_by_domain, generate, heldout_loss, is_refusal
from . import finance

if TYPE_CHECKING:
    from ..setup import Setup


def evaluate(setup: Setup, benchmark_dir: Path | None = None) -> dict:
    """Held-out metrics of the global model: loss, accuracy of checkable answers; for DPO also
    preference accuracy, reward margin, and refusal rates on harmful and benign prompts; with a
    `benchmark_dir`, also eval.benchmarks (their answer files go there)."""
    start = time.perf_counter()
    cfg = setup.config
    pad_id, batch_size, packing = setup.tokenizer.pad_token_id, cfg.eval.batch_size, cfg.train.packing
    result: dict = {"loss": None, "accuracy": {}, "accuracy_mean": None}
    if cfg.train.objective == "dpo":
        if setup.heldout_rows:
            result.update(
                preference_metrics(
                    setup.model, setup.heldout_rows, pad_id, batch_size, packing, cfg.dpo.beta, cfg.dpo.loss
                )
            )
    elif setup.heldout_rows:
        result["loss"] = heldout_loss(setup.model, setup.heldout_rows, pad_id, batch_size, packing)
    if setup.harmful_prompts:  # dpo's safety pairs, or sft under the safety attack
        said = generate(setup.model, setup.harmful_prompts, setup.tokenizer, cfg.eval.max_new_tokens, batch_size)
        result["refusal_rate"] = sum(map(is_refusal, said)) / len(said)
    checkable = [i for i, e in enumerate(setup.heldout) if e.check != "none"]
    if checkable:
        responses = generate(
            setup.model,
            [setup.heldout_prompts[i] for i in checkable],
            setup.tokenizer,
            cfg.eval.max_new_tokens,
            batch_size,
        )
        result["accuracy"] = accuracy_by_domain([setup.heldout[i] for i in checkable], responses)
        result["accuracy_mean"] = sum(result["accuracy"].values()) / len(result["accuracy"])
        result["n"] = len(checkable)  # answers checked: an accuracy moves in steps of 1 / n
        result["n_by_domain"] = dict(sorted(Counter(setup.heldout[i].domain for i in checkable).items()))
        if cfg.train.objective == "dpo":  # a model that refuses everything is broken, not aligned
            result["benign_refusal_rate"] = sum(map(is_refusal, responses)) / len(responses)
    if benchmark_dir is not None and cfg.eval.benchmarks:
        result["benchmarks"] = run_training_benchmarks(setup, benchmark_dir)
    result["seconds"] = time.perf_counter() - start
    return result


def run_training_benchmarks(setup: Setup, out_dir: Path) -> dict[str, dict[str, float]]:
    """eval.benchmarks on the model being trained, through the same code as `openfedllm eval`."""
    from . import choice
    from .lm import LM
    from .runner import Settings, run_benchmarks

    cfg = setup.config.eval
    data = dict(entry.partition("=")[::2] for entry in cfg.benchmarks)
    lm = LM(setup.model, setup.tokenizer, setup.config.data.template, batch_size=8)
    settings = Settings(
        data={k: v for k, v in data.items() if v},
        limit=cfg.benchmark_limit,
        modes=choice.modes(cfg.benchmark_mode),
        out_prefix=out_dir / "eval",
        model_id="global",
        get_lm=lambda: lm,
    )
    return {name: r["metrics"] for name, r in run_benchmarks(list(data), settings).items()}


def benchmark_overlap(setup: Setup) -> dict[str, dict[str, int]]:
    """eval.benchmarks rows that are also training rows of this run: a score on them is not held out.
    Checked for the finance sets, whose sentences fingpt-sentiment-train reuses."""
    found = {}
    for entry in setup.config.eval.benchmarks:
        name, _, path = entry.partition("=")
        if name in finance.SOURCES and setup.train_texts:
            texts = finance.held_out_texts(name, path or None)
            found[name] = {"overlap": sum(t in setup.train_texts for t in texts), "rows": len(texts)}
    return found
