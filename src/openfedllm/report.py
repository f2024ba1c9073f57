"""What a run prints and writes about itself: the one-line round and evaluation texts, and the
before/after summary (summary.json and the table printed at the end)."""

from __future__ import annotations

import json
from pathlib import Path

from .config import RunConfig, phases_of
from .evaluation.metrics import headline
from .rundir import final_dir
from .textfmt import text_table

# DPO's evaluation metrics beside loss and accuracy, with their labels in the summary table.
ALIGNMENT_METRICS = {
    "pref_accuracy": "preference accuracy",
    "reward_margin": "reward margin",
    "refusal_rate": "refusal rate, harmful",
    "benign_refusal_rate": "refusal rate, benign",
}


def eval_text(result: dict, per_domain: bool = True) -> str:
    parts = [f"held-out loss {result['loss']:.3f}"] if result["loss"] is not None else []
    parts += [f"{key} {result[key]:.2f}" for key in ALIGNMENT_METRICS if key in result]
    if result["accuracy_mean"] is not None:
        parts.append(f"accuracy {result['accuracy_mean']:.2f}")
        if per_domain:
            parts += [f"{d} {a:.2f}" for d, a in result["accuracy"].items()]
    for name, metrics in result.get("benchmarks", {}).items():
        key = headline(metrics)
        if key:
            parts.append(f"{name} {key} {metrics[key]:.2f}")
    return "  ".join(parts)


def summarize(records: list[dict], run_dir: Path, cfg: RunConfig) -> dict:
    """The before/after table, written to summary.json and printed as one screen."""
    evals = [r for r in records if r["type"] == "eval"]
    before = next(r for r in evals if r["phase"] == "federated" and r["round"] == 0)
    columns = {"before": before}
    for phase in phases_of(cfg):
        finals = [r for r in evals if r["phase"] == phase and r["round"] == cfg.fed.rounds]
        if finals:
            columns[phase] = finals[-1]
    summary = {
        "run_dir": str(run_dir),
        "algorithm": cfg.fed.algorithm,
        "objective": cfg.train.objective,
        "evaluation": {
            name: {k: r[k] for k in ("loss", *ALIGNMENT_METRICS, "accuracy", "accuracy_mean", "benchmarks") if k in r}
            for name, r in columns.items()
        },
        "adapter": str(final_dir(run_dir, "federated", cfg.model.finetune == "full")),
        "plots": str(run_dir / "plots"),
        "metrics": str(run_dir / "metrics.jsonl"),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    print(format_summary(summary, cfg))
    return summary


def format_summary(summary: dict, cfg: RunConfig) -> str:
    evaluation = summary["evaluation"]
    names = list(evaluation)
    titles = {
        "before": "before",
        "federated": f"federated ({cfg.fed.algorithm})",
        "local": f"local-only (client {cfg.baselines.local_client})",
        "centralized": "centralized",
    }
    domains = sorted({d for r in evaluation.values() for d in r["accuracy"]})
    header = ["held-out"] + [titles[n] for n in names]
    loss_name = "DPO loss" if cfg.train.objective == "dpo" else "loss"
    rows = [[loss_name] + [f"{evaluation[n]['loss']:.3f}" if evaluation[n]["loss"] is not None else "-" for n in names]]
    for key, label in ALIGNMENT_METRICS.items():
        if any(key in evaluation[n] for n in names):
            rows.append([label] + [f"{evaluation[n][key]:.2f}" if key in evaluation[n] else "-" for n in names])
    for d in domains:
        rows.append([f"acc {d}"] + [f"{evaluation[n]['accuracy'].get(d, 0):.2f}" for n in names])
    if domains:
        rows.append(["acc mean"] + [f"{evaluation[n]['accuracy_mean']:.2f}" for n in names])
    benchmarks = {b: headline(m) for r in evaluation.values() for b, m in r.get("benchmarks", {}).items()}
    for b, shown in benchmarks.items():
        if shown:
            rows.append(
                [f"{b} {key}"]
                + [
                    f"{evaluation[n]['benchmarks'][b][key]:.2f}"
                    if key in evaluation[n].get("benchmarks", {}).get(b, {})
                    else "-"
                    for n in names
                ]
            )
    what = "value alignment (DPO)" if cfg.train.objective == "dpo" else "instruction tuning"
    lines = ["", "=" * 72, f"Federated {what} finished", "=" * 72]
    lines += text_table(header, rows)
    lines += [
        "",
        f"adapter   {summary['adapter']}",
        f"plots     {summary['plots']}",
        f"metrics   {summary['metrics']}",
        f"resume    openfedllm {cfg.train.objective} --resume {summary['run_dir']}",
        "=" * 72,
    ]
    return "\n".join(lines)
