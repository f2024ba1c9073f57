"""PNG plots of a run, drawn from metrics.jsonl alone (so they can be redrawn for any run)."""

from __future__ import annotations

import functools
from collections import defaultdict
from pathlib import Path

PHASE_STYLE = {"federated": "-", "local": "--", "centralized": ":"}


MAX_CLIENT_LINES = 8  # more clients than this: the federation's mean and range, and a few clients drawn
DOMAIN_MARKERS = "osv^D<>pPX*h"  # overlapping accuracy lines stay apart by their markers


@functools.cache
def pyplot():
    """matplotlib's pyplot on the file-only backend (no display on servers), imported on first use:
    the ~0.7 s it costs is paid by a run when it draws, not by every process that imports the rounds
    (a deployed server, each node's worker, a CLI call that stops at a bad input)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_run(records: list[dict], out_dir: Path, title: str = "") -> list[Path]:
    """The run's plots from its records; `title` (the run, algorithm and split) heads each figure."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [
        _train_loss(records, out_dir / "train_loss.png", title),
        _evaluation(records, out_dir / "evaluation.png", title),
    ]
    if any(r.get("type") == "aggregation" and r["phase"] == "federated" for r in records):
        paths.append(_aggregation_error(records, out_dir / "aggregation_error.png", title))
    return paths


def run_title(run_dir: Path, cfg) -> str:
    fed = cfg.fed
    lora = "" if fed.lora_aggregation == "naive" else f" + {fed.lora_aggregation} LoRA aggregation"
    return (
        f"{run_dir.name}: {fed.algorithm}{lora}, {fed.num_clients} clients ({fed.sampled()} per round), "
        f"{fed.split} split"
    )


def _train_loss(records: list[dict], path: Path, title: str = "") -> Path:
    fig, ax = pyplot().subplots(figsize=(7, 4.2))
    clients = defaultdict(list)
    baselines = defaultdict(list)
    for r in records:
        if r.get("type") != "client":
            continue
        if r["phase"] == "federated":
            clients[int(r["client"])].append((r["round"], r["loss"]))
        else:
            baselines[r["phase"]].append((r["round"], r["loss"]))
    shown = sorted(clients)  # numeric order: client 2 before client 10
    if len(clients) > MAX_CLIENT_LINES:
        by_round = defaultdict(list)
        for points in clients.values():
            for rnd, loss in points:
                by_round[rnd].append(loss)
        rounds = sorted(by_round)
        mean = [sum(by_round[k]) / len(by_round[k]) for k in rounds]
        ax.fill_between(
            rounds,
            [min(by_round[k]) for k in rounds],
            [max(by_round[k]) for k in rounds],
            alpha=0.2,
            label=f"range of the {len(clients)} clients' losses",
        )
        ax.plot(rounds, mean, "k-", linewidth=2, marker="o", markersize=3, label="mean over the round's clients")
        shown = shown[:: max(1, len(shown) // 4)][:4]  # a few clients, spread over the ids
    for cid in shown:
        points = sorted(clients[cid])
        ax.plot([p[0] for p in points], [p[1] for p in points], "-", marker="o", markersize=3, label=f"client {cid}")
    for phase, points in sorted(baselines.items()):
        points.sort()
        ax.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            PHASE_STYLE.get(phase, "-"),
            marker="o",
            markersize=3,
            label=f"{phase} baseline",
        )
    _label(ax, "mean training loss of the local steps", "Training loss per client per round")
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def _evaluation(records: list[dict], path: Path, title: str = "") -> Path:
    evals = [r for r in records if r.get("type") == "eval"]
    has_acc = any(r.get("accuracy") for r in evals)
    has_alignment = any(key in r for r in evals for key in ALIGNMENT)
    has_benchmarks = any(r.get("benchmarks") for r in evals)
    panels = 1 + has_acc + has_alignment + has_benchmarks
    fig, axes = pyplot().subplots(1, panels, figsize=(5.5 * panels, 4.2), squeeze=False)
    ax_loss = axes[0][0]
    fed_points = sorted((r["round"], r["loss"]) for r in evals if r["phase"] == "federated" and r["loss"] is not None)
    if fed_points:
        ax_loss.plot(
            [p[0] for p in fed_points], [p[1] for p in fed_points], "-", marker="o", markersize=3, label="federated"
        )
    _baseline_ends(ax_loss, evals, lambda r: r["loss"], "{phase} baseline")
    dpo = any("pref_accuracy" in r for r in evals)
    _label(ax_loss, "held-out DPO loss per pair" if dpo else "held-out loss per response token", "Held-out loss")
    if has_alignment:
        _alignment(axes[0][1 + has_acc], evals)
    if has_benchmarks:
        _benchmarks(axes[0][-1], evals)
    if has_acc:
        ax = axes[0][1]
        fed = sorted((r for r in evals if r["phase"] == "federated" and r.get("accuracy")), key=lambda r: r["round"])
        domains = sorted({d for r in fed for d in r["accuracy"]})
        for k, d in enumerate(domains):
            ax.plot(
                [r["round"] for r in fed],
                [r["accuracy"][d] for r in fed],
                alpha=0.7,
                linewidth=1,
                marker=DOMAIN_MARKERS[k % len(DOMAIN_MARKERS)],
                markersize=7 - 4 * k / max(1, len(domains)),  # shrinking markers: coinciding points stay visible
                fillstyle="none",
                label=d,
            )
        ax.plot(
            [r["round"] for r in fed],
            [r["accuracy_mean"] for r in fed],
            "k-",
            linewidth=2.5,
            marker="o",
            label="federated, mean",
        )
        _baseline_ends(ax, evals, lambda r: r.get("accuracy_mean"), "{phase} baseline, mean")
        ax.set_ylim(-0.03, 1.03)
        _label(ax, "held-out accuracy", "Held-out accuracy of the global model")
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def compare_runs(runs: list[tuple[str, list[dict]]], path: Path) -> Path:
    """Several runs' federated held-out loss and mean accuracy, overlaid (`openfedllm plot A B ...`)."""
    fig, (ax_loss, ax_acc) = pyplot().subplots(1, 2, figsize=(11, 4.2))
    for name, records in runs:
        evals = sorted(
            (r for r in records if r.get("type") == "eval" and r["phase"] == "federated"), key=lambda r: r["round"]
        )
        losses = [(r["round"], r["loss"]) for r in evals if r["loss"] is not None]
        if losses:
            ax_loss.plot([p[0] for p in losses], [p[1] for p in losses], marker="o", markersize=3, label=name)
        accs = [(r["round"], r["accuracy_mean"]) for r in evals if r.get("accuracy_mean") is not None]
        if accs:
            ax_acc.plot([p[0] for p in accs], [p[1] for p in accs], marker="o", markersize=3, label=name)
    _label(ax_loss, "held-out loss", "Held-out loss of the global model")
    ax_acc.set_ylim(-0.03, 1.03)
    _label(ax_acc, "mean held-out accuracy", "Held-out accuracy of the global model")
    return _save(fig, path)


def _baseline_ends(ax, evals: list[dict], value, label: str) -> None:
    """Each baseline's `value` where it was measured, at its end (baselines are evaluated only then):
    one marker per baseline, not a line through rounds it never had."""
    for phase, marker in (("local", "s"), ("centralized", "^")):
        ends = [r for r in evals if r["phase"] == phase and value(r) is not None]
        if ends:
            last = max(ends, key=lambda r: r["round"])
            ax.plot(
                [last["round"]],
                [value(last)],
                marker=marker,
                markersize=10,
                linestyle="none",
                label=label.format(phase=phase),
            )


ALIGNMENT = {
    "pref_accuracy": "preference accuracy",
    "refusal_rate": "refusal rate, harmful prompts",
    "benign_refusal_rate": "refusal rate, benign prompts",
}


def _alignment(ax, evals: list[dict]) -> None:
    """DPO: how often the chosen response is preferred, and how often the model refuses; the
    baselines' final values as markers in the colour of the metric."""
    fed = sorted((r for r in evals if r["phase"] == "federated"), key=lambda r: r["round"])
    colors = {}
    for key, label in ALIGNMENT.items():
        points = [(r["round"], r[key]) for r in fed if key in r]
        if points:
            (line,) = ax.plot(
                [p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=f"{label} (federated)"
            )
            colors[key] = line.get_color()
    for phase, marker in (("local", "s"), ("centralized", "^")):
        ends = [r for r in evals if r["phase"] == phase]
        if not ends:
            continue
        last = max(ends, key=lambda r: r["round"])
        for key, color in colors.items():
            if key in last:
                ax.plot(
                    [last["round"]],
                    [last[key]],
                    marker=marker,
                    markersize=9,
                    linestyle="none",
                    color=color,
                    alpha=0.8,
                    label=f"{phase} baseline" if key == "pref_accuracy" else None,
                )
    ax.set_ylim(-0.03, 1.03)
    _label(ax, "share of held-out pairs / prompts", "Alignment of the global model")


def _benchmarks(ax, evals: list[dict]) -> None:
    """eval.benchmarks: each benchmark's headline metric over the rounds (federated line, baselines'
    final values as markers in its colour)."""
    from .evaluation.metrics import headline

    fed = sorted((r for r in evals if r["phase"] == "federated" and r.get("benchmarks")), key=lambda r: r["round"])
    names = sorted({b for r in evals for b in r.get("benchmarks", {})})
    for name in names:
        key = next((headline(r["benchmarks"][name]) for r in fed if name in r["benchmarks"]), None)
        if key in (None, "perplexity"):
            continue  # perplexity is not on the 0-1 scale of this panel
        points = [(r["round"], r["benchmarks"][name][key]) for r in fed if key in r["benchmarks"].get(name, {})]
        (line,) = ax.plot(
            [p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=f"{name} {key}"
        )
        for phase, marker in (("local", "s"), ("centralized", "^")):
            ends = [r for r in evals if r["phase"] == phase and key in r.get("benchmarks", {}).get(name, {})]
            if ends:
                last = max(ends, key=lambda r: r["round"])
                ax.plot(
                    [last["round"]],
                    [last["benchmarks"][name][key]],
                    marker=marker,
                    markersize=9,
                    linestyle="none",
                    color=line.get_color(),
                    alpha=0.8,
                )
    ax.set_ylim(-0.03, 1.03)
    _label(ax, "score (square: local, triangle: centralized)", "Benchmarks of the global model")


def _aggregation_error(records: list[dict], path: Path, title: str = "") -> Path:
    """Per layer type, how far each round's global adapter is from the mean of the clients' products."""
    fig, ax = pyplot().subplots(figsize=(7, 4.2))
    series = defaultdict(list)
    for r in records:
        if r.get("type") == "aggregation" and r["phase"] == "federated":
            for kind, value in r["aggregation_error"].items():
                series[kind].append((r["round"], value))
    for i, (kind, points) in enumerate(sorted(series.items())):
        points.sort()
        marker = DOMAIN_MARKERS[i % len(DOMAIN_MARKERS)]
        ax.plot([p[0] for p in points], [p[1] for p in points], "-", marker=marker, markersize=4, label=kind)
    _label(
        ax,
        "||mean(B_i A_i) - global||_F / ||mean(B_i A_i)||_F",
        "Aggregation error per layer type (0: the clients' mean update, exactly)",
    )
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def _label(ax, ylabel: str, title: str) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # rounds are whole numbers
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path
