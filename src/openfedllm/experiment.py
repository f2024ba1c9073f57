"""A declared grid of methods x seeds, run cell by cell, summarised as the paper compares them.

A grid file names the methods (any FL algorithm of the registry, plus `local` and `centralized`;
or a LoRA aggregation method, `naive`, `ffa`, `flora`, `svd`, `fedex`, or a robust aggregation
rule, `median`, `trimmed_mean`, `krum`, `multikrum`, or an upload codec, `none`, `fp16`, `bf16`,
`int8`, `nf4`, `topk` (comm.upload), each with the grid's fed.algorithm),
the seeds, and one run config (the sections of `openfedllm sft`) shared by every cell; its
`quick` section overrides seeds and config for a run of a few minutes. Each seed prepares the
data, split and initial adapter once; every method of that seed starts from them. Each cell is an
ordinary run directory under DIR/runs/ with its own checkpoints, so an interrupted experiment
continues where it stopped (`--resume`), and any cell can be inspected like an `sft` run.

`local` trains every client alone (the same steps per round as in the federation) and reports
the mean over clients; `centralized` trains on all data pooled with the federation's total steps.
Besides accuracy over all held-out domains, each row has `accuracy_own`: the mean over clients of
the accuracy on the domains that client holds, i.e. how well the model a client ends up with
serves the client's own task (for `local`, each client's own model; for the others, the one
shared model).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import yaml
from tqdm.auto import tqdm

from . import models
from .algorithms import ALGORITHMS
from .compression import CODECS, CodecName
from .config import RunConfig, apply_overrides, build, to_dict
from .errors import UserError
from .evaluation.heldout import evaluate
from .lora_aggregation import LORA_AGGREGATIONS
from .names import AggregatorName, AlgorithmName, LoraAggregationName
from .personalize import own_accuracy
from .robust import AGGREGATORS
from .rounds import resume_phase, run_phase
from .rundir import MetricsLog, load_checkpoint, save_config
from .setup import Setup, prepare
from .textfmt import text_table
from .userfiles import read_yaml

BASELINES = ("local", "centralized")
GRID_KEYS = ("methods", "seeds", "config", "quick")  # methods x seeds, the shared run config, --quick overrides


@dataclass
class Grid:
    methods: list[str]
    seeds: list[int]
    config: dict  # raw run-config sections, before the per-cell method and seed


def _merge(base: dict, extra: dict) -> dict:
    out = {k: dict(v or {}) for k, v in base.items()}
    for section, values in (extra or {}).items():
        if not isinstance(values, dict):
            raise UserError(f"experiment: config.{section}: expected a mapping of keys")
        out.setdefault(section, {}).update(values)
    return out


def load_grid(path: str, quick: bool = False, overrides: Sequence[tuple[str, str]] = ()) -> Grid:
    """The grid of a YAML file; every cell's config is built (and so checked) before anything runs."""
    return grid_from_dict(read_yaml(path, "experiment") or {}, quick, overrides)


def grid_from_dict(raw: dict, quick: bool = False, overrides: Sequence[tuple[str, str]] = ()) -> Grid:
    if not isinstance(raw, dict):
        raise UserError("experiment: expected a mapping with methods, seeds, config")
    for key in raw:
        if key not in GRID_KEYS:
            raise UserError(f"experiment: unknown key {key!r}; valid: {', '.join(GRID_KEYS)}")
    methods, seeds, config = raw.get("methods"), raw.get("seeds", [42]), raw.get("config") or {}
    if quick:
        q = raw.get("quick") or {}
        for key in q:
            if key not in ("seeds", "config", "methods"):
                raise UserError(f"experiment: unknown key quick.{key}; valid: methods, seeds, config")
        methods = q.get("methods", methods)
        seeds = q.get("seeds", seeds)
        config = _merge(config, q.get("config") or {})
    if not isinstance(methods, list) or not methods:
        raise UserError("experiment: methods must be a non-empty list")
    valid = [*ALGORITHMS, *BASELINES, *LORA_AGGREGATIONS, *AGGREGATORS, *CODECS]
    for m in methods:
        if m not in valid:
            raise UserError(f"experiment: unknown method {m!r}; valid: {', '.join(valid)}")
    if len(set(methods)) != len(methods):
        raise UserError("experiment: a method is listed twice")
    if (
        not isinstance(seeds, list)
        or not seeds
        or len(set(seeds)) != len(seeds)
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    ):
        raise UserError(f"experiment: seeds must be a list of distinct integers, got {seeds!r}")
    if not isinstance(config, dict):
        raise UserError("experiment: config must be a mapping of run-config sections")
    config = apply_overrides(config, list(overrides))
    grid = Grid(list(methods), list(seeds), config)
    for method in grid.methods:  # fail on a bad key or value now, not an hour into the grid
        for seed in grid.seeds:
            cell_config(grid, method, seed).validate()
    return grid


def cell_config(grid: Grid, method: str, seed: int, local_client: int = 0) -> RunConfig:
    """The run config of one cell: the shared config with this seed, method and no extra baselines."""
    config = build(grid.config)
    config.train = dataclasses.replace(config.train, seed=seed)
    config.baselines = dataclasses.replace(config.baselines, local=False, centralized=False, local_client=local_client)
    if method in ALGORITHMS:
        config.fed = dataclasses.replace(config.fed, algorithm=cast(AlgorithmName, method))
    if method in LORA_AGGREGATIONS:
        config.fed = dataclasses.replace(config.fed, lora_aggregation=cast(LoraAggregationName, method))
    if method in AGGREGATORS:  # a robust rule, with the grid's fed.algorithm
        config.fed = dataclasses.replace(config.fed, aggregator=cast(AggregatorName, method))
    if method in CODECS:  # how the clients' updates travel, with the grid's fed.algorithm
        config.comm = dataclasses.replace(config.comm, upload=cast(CodecName, method))
    return config


@contextlib.contextmanager
def adapter_for(setup: Setup):
    """The seed's shared setup as the cell's LoRA aggregation needs it: FFA-LoRA trains B alone, so A
    is frozen for the cell and the shared start holds B only; every other cell as it is."""
    if not LORA_AGGREGATIONS[setup.config.fed.lora_aggregation].freezes_a:
        yield setup
        return
    models.load_trainable_state(setup.model, setup.initial_state)  # A as the seed drew it, not as a cell left it
    models.freeze_lora_a(setup.model)
    try:
        shared = models.trainable_parameters(setup.model)
        yield dataclasses.replace(setup, initial_state={k: v for k, v in setup.initial_state.items() if k in shared})
    finally:
        models.freeze_lora_a(setup.model, frozen=False)


def _phase(method: str) -> str:
    return method if method in BASELINES else "federated"


def run_cell(setup: Setup, phase: str, cell_dir: Path) -> dict:
    """Run (or continue, or just read) one cell; returns its final evaluation record."""
    log = MetricsLog(cell_dir / "metrics.jsonl")
    checkpoint = load_checkpoint(cell_dir)
    if checkpoint is None:
        cell_dir.mkdir(parents=True, exist_ok=True)
        log.truncate(0)
        save_config(cell_dir, to_dict(setup.config))
        run_phase(setup, phase, cell_dir, log, [])
    elif phase not in checkpoint.progress["done"]:
        log.truncate(checkpoint.progress["metrics_lines"])
        resume_phase(setup, phase, cell_dir, log, [], checkpoint)
    return final_eval(log.records(), phase, setup.config.fed.rounds)


def final_eval(records: list[dict], phase: str, rounds: int) -> dict:
    finals = [r for r in records if r["type"] == "eval" and r["phase"] == phase and r["round"] == rounds]
    if not finals:
        raise RuntimeError(f"no final evaluation of the {phase} phase in the cell's metrics")
    return finals[-1]


def cell_seconds(cell_dir: Path) -> float:
    """Training and evaluation time of a cell, from its metrics (so it survives a resume)."""
    records = MetricsLog(cell_dir / "metrics.jsonl").records()
    return sum(r.get("seconds") or 0.0 for r in records)


def _base_eval(setup: Setup, cell_dir: Path) -> dict:
    log = MetricsLog(cell_dir / "metrics.jsonl")
    records = [r for r in log.records() if r["type"] == "eval"]
    if records:
        return records[-1]
    cell_dir.mkdir(parents=True, exist_ok=True)
    models.load_trainable_state(setup.model, setup.initial_state)
    record = {"type": "eval", "phase": "base", "round": 0, **evaluate(setup)}
    log.write(record)
    return record


def run_grid(grid: Grid, out_dir: Path) -> list[dict]:
    """Every cell of the grid (continuing finished and interrupted cells); one result row per cell."""
    rows = []
    cells = len(grid.seeds) * (1 + len(grid.methods))
    done = 0
    for seed in grid.seeds:
        base_config = cell_config(grid, "fedavg", seed)
        setup = prepare(base_config)
        client_domains = [{setup.train_domains[i] for i in c} for c in setup.clients]

        start = time.perf_counter()
        base_dir = out_dir / "runs" / f"base-seed{seed}"
        base = _base_eval(setup, base_dir)
        rows.append(
            result_row(
                "base model",
                seed,
                [base],
                base.get("seconds") or 0.0,
                [base_dir],
                out_dir,
                own_accuracy(base["accuracy"], client_domains),
            )
        )
        done += 1
        tqdm.write(_progress(done, cells, "base model", seed, rows[-1], time.perf_counter() - start))
        for method in grid.methods:
            start = time.perf_counter()
            phase = _phase(method)
            clients = range(len(setup.clients)) if method == "local" else [0]
            evals, dirs, owns = [], [], []
            for k in clients:
                name = f"{method}-seed{seed}" + (f"/client{k}" if method == "local" else "")
                cell_dir = out_dir / "runs" / name
                cell_setup = dataclasses.replace(setup, config=cell_config(grid, method, seed, local_client=k))
                with adapter_for(cell_setup) as cell_setup:
                    evaluation = run_cell(cell_setup, phase, cell_dir)
                evals.append(evaluation)
                dirs.append(cell_dir)
                domains = [client_domains[k]] if method == "local" else client_domains
                owns.append(own_accuracy(evaluation["accuracy"], domains))
            own = _mean_or_none(owns)
            rows.append(result_row(method, seed, evals, sum(cell_seconds(d) for d in dirs), dirs, out_dir, own))
            done += 1
            tqdm.write(_progress(done, cells, method, seed, rows[-1], time.perf_counter() - start))
    return rows


def _mean_or_none(values: list) -> float | None:
    return float(np.mean(values)) if values and None not in values else None


def result_row(
    method: str, seed: int, evals: list[dict], seconds: float, run_dirs: list[Path], out_dir: Path, own: float | None
) -> dict:
    """One row of results.csv: a method's final evaluation at one seed (local: mean over its clients)."""
    domains = sorted({d for e in evals for d in e["accuracy"]})
    records = [r for d in run_dirs for r in MetricsLog(d / "metrics.jsonl").records()]
    personal = [r for r in records if r["type"] == "personal"]
    errors = [v for r in records if r["type"] == "aggregation" for v in r["aggregation_error"].values()]
    row = {
        "method": method,
        "seed": seed,
        "accuracy_mean": _mean_or_none([e["accuracy_mean"] for e in evals]),
        "accuracy_own": own,
        "loss": _mean_or_none([e["loss"] for e in evals]),
        **{f"acc_{d}": _mean_or_none([e["accuracy"].get(d) for e in evals]) for d in domains},
        "seconds": round(seconds, 1),
        "run_dir": ";".join(str(d.relative_to(out_dir)) for d in run_dirs),
    }
    if personal:  # each client's personalized model (FedSA-LoRA's own B, or fine-tuned after the federation)
        row["personal_own"] = _mean_or_none([r["accuracy_own"] for r in personal])
        row["personal_all"] = _mean_or_none([r["accuracy_mean"] for r in personal])
    if errors:  # the mean over rounds and layer types (docs/lora_aggregation.md)
        row["aggregation_error"] = float(np.mean(errors))
    if any("refusal_rate" in e for e in evals):  # harmful requests refused (dpo; sft under the safety attack)
        row["refusal_rate"] = _mean_or_none([e.get("refusal_rate") for e in evals])
    sent = [r for r in records if r["type"] == "client" and r.get("phase") == "federated" and "bytes_up" in r]
    if sent:  # the byte ledger per round, all sampled clients together (docs/efficiency.md)
        per_round = len({r["round"] for r in sent})
        row["mb_up_per_round"] = sum(r["bytes_up"] for r in sent) / per_round / 1e6
        row["mb_per_round"] = sum(r["bytes_up"] + r["bytes_down"] for r in sent) / per_round / 1e6
    privacy = [r for r in records if r["type"] == "privacy"]
    if privacy:  # the epsilon the cell spent (docs/privacy_robustness.md)
        row["epsilon"] = privacy[-1]["epsilon"]
    return row


def _progress(done: int, total: int, method: str, seed: int, row: dict, seconds: float) -> str:
    line = f"[experiment {done}/{total}] {method} seed {seed}:"
    if row["loss"] is not None:
        line += f" held-out loss {row['loss']:.3f}"
    if row["accuracy_mean"] is not None:
        line += f"  accuracy {row['accuracy_mean']:.3f}"
    return line + f"  ({seconds:.0f} s)"


# --- results: csv, markdown, plot


def write_results(rows: list[dict], out_dir: Path, grid: Grid, command: str) -> str:
    columns = []
    for r in rows:
        columns += [c for c in r if c not in columns]
    with (out_dir / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for r in rows:
            writer.writerow({c: "" if r.get(c) is None else r[c] for c in columns})
    markdown = results_markdown(rows, grid, command)
    (out_dir / "results.md").write_text(markdown)
    plot_results(rows, out_dir / "plots")
    return markdown


def _stats(values: list[float | None]) -> tuple[float, float] | None:
    """mean and sample standard deviation (0 for one seed) of the values present."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    std = float(np.std(present, ddof=1)) if len(present) > 1 else 0.0
    return float(np.mean(present)), std


def _fmt(stats, digits=3) -> str:
    if stats is None:
        return "-"
    mean, std = stats
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def method_order(rows: list[dict]) -> list[str]:
    seen: list[str] = []
    for r in rows:
        if r["method"] not in seen:
            seen.append(r["method"])
    return seen


def results_markdown(rows: list[dict], grid: Grid, command: str) -> str:
    methods = method_order(rows)
    domains = sorted({c[4:] for r in rows for c in r if c.startswith("acc_")})
    by = {m: [r for r in rows if r["method"] == m] for m in methods}
    header = ["method", "seeds", "accuracy (all domains)", "accuracy (own domain)", "held-out loss"]
    extra = [(k, t) for k, t in EXTRA_COLUMNS if any(r.get(k) is not None for r in rows)]
    header += [t for _, t in extra]
    header += [f"acc {d}" for d in domains] + ["time / seed (s)"]
    lines = [
        f"# Experiment: {len(methods)} methods x {len(grid.seeds)} seeds",
        "",
        f"Reproduce: `{command}`",
        "",
        "Mean ± sample standard deviation over seeds. *accuracy (all domains)*: held-out accuracy "
        "averaged over the domains. *accuracy (own domain)*: mean over clients of the accuracy on "
        "the domains that client holds (for `local`, each client's own model).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for m in methods:
        rs = by[m]
        cells = [
            m,
            str(len(rs)),
            _fmt(_stats([r["accuracy_mean"] for r in rs])),
            _fmt(_stats([r["accuracy_own"] for r in rs])),
            _fmt(_stats([r["loss"] for r in rs])),
        ]
        cells += [_fmt(_stats([r.get(k) for r in rs]), 4 if k == "aggregation_error" else 3) for k, _ in extra]
        cells += [_fmt(_stats([r.get(f"acc_{d}") for r in rs]), 2) for d in domains]
        seconds = _stats([r["seconds"] for r in rs])
        cells.append(f"{seconds[0]:.0f}" if seconds else "-")
        lines.append("| " + " | ".join(cells) + " |")
    if extra:
        lines += [
            "",
            "*personalized*: each client's own model (FedSA-LoRA's own B, or the global model fine-tuned "
            "`fed.personalize_steps` steps on its data), mean over clients. *aggregation error*: "
            "||mean(B_i A_i) - global|| / ||mean(B_i A_i)||, mean over rounds and layer types. "
            "*refusal rate*: share of held-out harmful requests refused. *epsilon*: the cell's client-level "
            "DP budget spent (docs/privacy_robustness.md).",
        ]
    lines += ["", *claim_lines(rows), *versus_lines(rows), *versus_lines(rows, "none", CODECS, "Upload codecs")]
    return "\n".join(lines) + "\n"


EXTRA_COLUMNS = [
    ("personal_own", "personalized (own domain)"),
    ("personal_all", "personalized (all domains)"),
    ("aggregation_error", "aggregation error"),
    ("refusal_rate", "refusal rate (harmful)"),
    ("epsilon", "epsilon"),
    ("mb_up_per_round", "MB up / round"),
    ("mb_per_round", "MB up + down / round"),
]


def versus_lines(
    rows: list[dict], reference: str = "naive", axis=LORA_AGGREGATIONS, title: str = "LoRA aggregation methods"
) -> list[str]:
    """Each method of an axis (LoRA aggregation; upload codecs) against its reference (the naive
    rule; `none`), seed by seed (the same data, split and initial adapter), with a two-sided paired
    t-test: a difference is called significant at p < 0.05."""
    from scipy.stats import ttest_rel

    methods = [m for m in method_order(rows) if m in axis and m != reference]
    base = {r["seed"]: r for r in rows if r["method"] == reference}
    if not base or not methods:
        return []
    out = ["", f"## {title} against {reference}", "", "Paired over seeds; t-test p-values."]
    for m in methods:
        parts = []
        for key, label in [
            ("accuracy_mean", "all domains"),
            ("accuracy_own", "own domain"),
            ("loss", "loss"),
            ("personal_own", "personalized own domain"),
        ]:
            pairs = [
                (r[key], base[r["seed"]][key])
                for r in rows
                if r["method"] == m
                and r["seed"] in base
                and r.get(key) is not None
                and base[r["seed"]].get(key) is not None
            ]
            if len(pairs) < 2:
                continue
            ours, theirs = np.array([a for a, _ in pairs]), np.array([b for _, b in pairs])
            diff = float(np.mean(ours - theirs))
            pvalue = float(ttest_rel(ours, theirs).pvalue) if np.any(ours != theirs) else 1.0
            verdict = "significant" if pvalue < 0.05 else "not significant"
            parts.append(f"{label} {diff:+.3f} (p={pvalue:.2f}, {verdict})")
        if parts:
            out.append(f"- {m}: " + "; ".join(parts))
    return out


def claim_lines(rows: list[dict]) -> list[str]:
    """The paper's claim, checked: does every FL algorithm beat training alone?

    Judged on held-out accuracy where answers are checkable, else on held-out loss (lower wins).
    """
    fl = [m for m in method_order(rows) if m in ALGORITHMS]
    local_rows = {r["seed"]: r for r in rows if r["method"] == "local"}
    if not local_rows or not fl:
        return []
    has_accuracy = any(r["accuracy_mean"] is not None for r in rows)
    metrics = (
        [("accuracy_mean", "all domains", 1), ("accuracy_own", "own domain", 1)]
        if has_accuracy
        else [("loss", "held-out loss", -1)]
    )
    out = [
        "## Federated vs local training (the paper's claim)",
        "",
        "Differences are FL minus local; seeds compare the same data, split and initial adapter.",
        "",
    ]
    wins = 0
    for m in fl:
        parts = []
        for key, label, sign in metrics:
            pairs = [
                (r[key], local_rows[r["seed"]][key])
                for r in rows
                if r["method"] == m
                and r["seed"] in local_rows
                and r[key] is not None
                and local_rows[r["seed"]][key] is not None
            ]
            if not pairs:
                continue
            ours, theirs = float(np.mean([a for a, _ in pairs])), float(np.mean([b for _, b in pairs]))
            better = sum(sign * (a - b) > 0 for a, b in pairs)
            parts.append(
                f"{label} {ours:.3f} vs {theirs:.3f} ({ours - theirs:+.3f}, better on {better} of {len(pairs)} seeds)"
            )
            if key == metrics[0][0]:
                wins += sign * (ours - theirs) > 0
        if parts:
            out.append(f"- {m}: " + "; ".join(parts))
    criterion = "mean accuracy over all domains" if has_accuracy else "held-out loss"
    out += ["", f"{wins} of {len(fl)} FL algorithms beat local training on {criterion}."]
    return out


def plot_results(rows: list[dict], out_dir: Path) -> Path:
    from .plots import pyplot

    plt = pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    methods = method_order(rows)
    metrics = [
        ("accuracy_mean", "held-out accuracy (all domains)"),
        ("accuracy_own", "accuracy on each client's own domain"),
        ("loss", "held-out loss"),
    ]
    metrics = [(k, t) for k, t in metrics if any(r.get(k) is not None for r in rows)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4.4), squeeze=False)
    colors = {
        m: (
            "tab:gray"
            if m == "base model"
            else "tab:red"
            if m == "local"
            else "tab:green"
            if m == "centralized"
            else "tab:blue"
        )
        for m in methods
    }
    for ax, (key, title) in zip(axes[0], metrics):
        for i, m in enumerate(methods):
            values = [r[key] for r in rows if r["method"] == m and r.get(key) is not None]
            stats = _stats(values)
            if stats is None:
                continue
            ax.bar(i, stats[0], yerr=stats[1] if len(values) > 1 else None, color=colors[m], alpha=0.8, capsize=3)
            ax.plot([i] * len(values), values, "k.", markersize=4)  # each seed
        local = _stats([r[key] for r in rows if r["method"] == "local" and r.get(key) is not None])
        if local is not None:  # the line every FL bar is compared against
            ax.axhline(local[0], color="tab:red", linestyle="--", linewidth=1, alpha=0.7)
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods, rotation=40, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        if key != "loss":
            ax.set_ylim(0, 1.02)
    fig.suptitle(
        "Methods compared (bars: mean over seeds, whiskers: std, dots: seeds, dashed: local training)", fontsize=10
    )
    fig.tight_layout()
    path = out_dir / "methods.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_grid(out_dir: Path, grid: Grid, command: str) -> None:
    """The resolved grid (what --resume runs) and the command that started it (what results.md cites)."""
    (out_dir / "experiment.yaml").write_text(yaml.safe_dump(dataclasses.asdict(grid), sort_keys=False))
    (out_dir / "command.txt").write_text(command + "\n")


def read_command(out_dir: Path) -> str:
    path = out_dir / "command.txt"
    return path.read_text().strip() if path.is_file() else f"openfedllm experiment --resume {out_dir}"


def read_grid(out_dir: Path) -> Grid:
    path = out_dir / "experiment.yaml"
    if not path.is_file():
        raise UserError(f"--resume {out_dir}: no experiment.yaml there (not an experiment directory)")
    return grid_from_dict(read_yaml(path, "--resume") or {})


def format_table(rows: list[dict]) -> list[str]:
    """The terminal view: one line per method."""
    methods = method_order(rows)
    body = []
    for m in methods:
        rs = [r for r in rows if r["method"] == m]
        body.append(
            [
                m,
                _fmt(_stats([r["accuracy_mean"] for r in rs])),
                _fmt(_stats([r["accuracy_own"] for r in rs])),
                _fmt(_stats([r["loss"] for r in rs])),
            ]
        )
    return text_table(["method", "accuracy", "own domain", "held-out loss"], body)
