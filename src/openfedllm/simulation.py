"""Federated instruction tuning simulated on one machine, with its local and centralized baselines.

One model lives in memory. Each round, every sampled client loads the global trainable tensors,
trains on its own partition only, and hands back its tensors; the algorithm aggregates them into
the next global state. A baseline is the same loop with a federation of one: the local-only
baseline is one client alone, the centralized baseline is one "client" holding all the data.

All randomness is derived from (seed, phase, round, client), never from a stream that runs
across rounds, so a run resumed from any checkpoint takes exactly the steps an uninterrupted
run takes; the checkpoint stores the round reached and the seed in the saved config.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import models
from .algorithms import ClientTask, ClientUpdate, FedAvg, build_algorithm
from .client import cosine_lr, train_local
from .config import RunConfig, to_dict
from .data import Example, load_examples
from .data.templates import Tokenized, check_template, prompt_ids, tokenize
from .errors import UserError
from .evaluate import accuracy_by_domain, generate, heldout_loss
from .partition import client_table, partition
from .plots import plot_run
from .rundir import MetricsLog, load_checkpoint, save_checkpoint, save_config
from .textfmt import text_table

PHASES = ("federated", "local", "centralized")  # in run order; a baseline runs if baselines.<name>


def derive_seed(*parts) -> int:
    """A 63-bit seed from the run seed and where we are (phase, round, client)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass
class Setup:
    """Everything a run needs, prepared (and validated) before anything is written to disk."""

    config: RunConfig
    model: object
    tokenizer: object
    train_rows: list[Tokenized]
    train_domains: list[str]
    clients: list[list[int]]  # indices into train_rows, per client
    heldout: list[Example]
    heldout_rows: list[Tokenized]
    heldout_prompts: list[list[int]]
    initial_state: dict[str, torch.Tensor]
    dropped: int  # training rows whose response was cut away entirely by max_length


def prepare(config: RunConfig) -> Setup:
    """Read the data, load the model, tokenize once, split over clients. Writes no run files."""
    config.validate()
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    train, heldout = load_examples(config.data, config.train.seed)
    model_path = models.resolve_model(config.model.name)
    tokenizer = models.load_tokenizer(model_path)
    check_template(config.data.template, tokenizer)

    # Tokenize each example once for the whole run, not per round.
    rows, domains, dropped = [], [], 0
    for example in train:
        row = tokenize(example, config.data.template, tokenizer, config.data.max_length)
        if row is None:
            dropped += 1
            continue
        rows.append(row)
        domains.append(example.domain)
    if not rows:
        raise UserError(f"data: no training example keeps a response within data.max_length="
                        f"{config.data.max_length} tokens")
    tokenized = [(e, tokenize(e, config.data.template, tokenizer, config.data.max_length)) for e in heldout]
    heldout = [e for e, row in tokenized if row is not None]
    heldout_rows = [row for _, row in tokenized if row is not None]
    prompts = [prompt_ids(e, config.data.template, tokenizer, config.data.max_length) for e in heldout]
    clients = partition(domains, config.fed.num_clients, config.fed.split, config.train.seed,
                        config.fed.dirichlet_alpha)

    model = models.load_base_model(model_path, config.model.dtype)
    if config.model.finetune == "lora":
        torch.manual_seed(config.train.seed)  # the initial adapter is part of the run's identity
        model = models.add_lora(model, config.lora.rank, config.lora.alpha, config.lora.dropout,
                                config.lora.target_modules)
    initial = models.trainable_state(model)
    return Setup(config, model, tokenizer, rows, domains, clients, heldout, heldout_rows, prompts,
                 initial, dropped)


def evaluate(setup: Setup) -> dict:
    """Held-out loss and, where answers are checkable, per-domain accuracy of greedy answers."""
    start = time.perf_counter()
    cfg = setup.config.eval
    if not setup.heldout_rows:
        return {"loss": None, "accuracy": {}, "accuracy_mean": None, "seconds": 0.0}
    loss = heldout_loss(setup.model, setup.heldout_rows, setup.tokenizer.pad_token_id, cfg.batch_size,
                        setup.config.train.packing)
    checkable = [i for i, e in enumerate(setup.heldout) if e.check != "none"]
    accuracy: dict[str, float] = {}
    if checkable:
        responses = generate(setup.model, [setup.heldout_prompts[i] for i in checkable],
                             setup.tokenizer, cfg.max_new_tokens, cfg.batch_size)
        accuracy = accuracy_by_domain([setup.heldout[i] for i in checkable], responses)
    mean = sum(accuracy.values()) / len(accuracy) if accuracy else None
    return {"loss": loss, "accuracy": accuracy, "accuracy_mean": mean,
            "seconds": time.perf_counter() - start}


def phase_clients(setup: Setup, phase: str) -> tuple[list[list[int]], int, int]:
    """(client partitions, clients per round, local steps) of a phase."""
    fed, train = setup.config.fed, setup.config.train
    if phase == "federated":
        return setup.clients, fed.clients_per_round, train.local_steps
    if phase == "local":
        return [setup.clients[setup.config.baselines.local_client]], 1, train.local_steps
    # Centralized: all data pooled, and as many steps per round as the whole federation takes.
    return [sorted(i for c in setup.clients for i in c)], 1, train.local_steps * fed.clients_per_round


def sample_clients(seed: int, phase: str, round_index: int, num_clients: int, per_round: int) -> list[int]:
    rng = np.random.default_rng(derive_seed(seed, phase, round_index, "sample"))
    return sorted(int(c) for c in rng.choice(num_clients, size=per_round, replace=False))


def save_trained(setup: Setup, state: dict[str, torch.Tensor], path: Path) -> None:
    """The trained tensors in the model's standard format: a peft adapter, or a full model."""
    models.load_trainable_state(setup.model, state)
    shutil.rmtree(path, ignore_errors=True)
    setup.model.save_pretrained(path)
    if not models.is_peft(setup.model):
        setup.tokenizer.save_pretrained(path)


def final_dir(run_dir: Path, phase: str, full: bool) -> Path:
    name = "model" if full else "adapter"
    return run_dir / name if phase == "federated" else run_dir / "baselines" / phase / name


def run_phase(setup: Setup, phase: str, run_dir: Path, log: MetricsLog, done: list[str],
              start_round: int = 0, state=None, server_state=None, client_states=None) -> dict:
    cfg = setup.config
    partitions, per_round, steps = phase_clients(setup, phase)
    if phase == "federated":
        algorithm = build_algorithm(cfg.fed, total_examples=sum(len(p) for p in partitions))
    else:
        algorithm = FedAvg()  # a federation of one: the client's model is the result
    if server_state:
        algorithm.load_state_dict(server_state)
    # What lives with each client between rounds (SCAFFOLD's c_i), keyed by client id.
    client_states: dict[int, dict] = dict(client_states or {})
    state = dict(setup.initial_state) if state is None else state
    params = models.trainable_parameters(setup.model)
    pad_id = setup.tokenizer.pad_token_id
    last_eval = None
    rounds = cfg.fed.rounds
    bar = tqdm(range(start_round, rounds), desc=f"{phase} rounds", initial=start_round, total=rounds,
               dynamic_ncols=True, disable=None)
    for r in bar:
        round_start = time.perf_counter()
        task = ClientTask(global_state=state, message=algorithm.server_message(),
                          lr=cosine_lr(r, rounds, cfg.train.lr, cfg.train.min_lr), steps=steps)
        sampled = sample_clients(cfg.train.seed, phase, r, len(partitions), per_round)
        updates, losses = [], []
        for cid in sampled:
            models.load_trainable_state(setup.model, state)
            own_state = client_states.get(cid, {})
            rows = [setup.train_rows[i] for i in partitions[cid]]
            client_name = cid if phase == "federated" else phase
            result = train_local(
                setup.model, rows, steps=steps, batch_size=cfg.train.batch_size,
                grad_accum=cfg.train.grad_accum, lr=task.lr, weight_decay=cfg.train.weight_decay,
                max_grad_norm=cfg.train.max_grad_norm, seed=derive_seed(cfg.train.seed, phase, r, cid),
                pad_id=pad_id, hooks=algorithm.client_hooks(params, task, own_state),
                optimizer=cfg.train.optimizer, packing=cfg.train.packing,
                max_tokens_per_pass=cfg.train.max_tokens_per_pass, desc=f"round {r + 1} client {client_name}",
            )
            weights = models.trainable_state(setup.model)
            extras, own_state = algorithm.client_finish(task, weights, own_state)
            if own_state:
                client_states[cid] = own_state
            updates.append(ClientUpdate(cid, weights, len(rows), extras=extras))
            losses.append(result.loss)
            log.write({"type": "client", "phase": phase, "round": r + 1, "client": cid,
                       "loss": result.loss, "examples": len(rows), "steps": result.steps,
                       "tokens": result.tokens, "seconds": round(result.seconds, 3), "lr": task.lr})
        state = algorithm.aggregate(state, updates)
        models.load_trainable_state(setup.model, state)
        message = f"[{phase}] round {r + 1}/{rounds}  clients {sampled}  train loss {np.mean(losses):.3f}"
        # Baselines are evaluated once, at their end; the federation every eval.every rounds.
        due = r + 1 == rounds or (phase == "federated" and (r + 1) % cfg.eval.every == 0)
        if due:
            last_eval = evaluate(setup)
            log.write({"type": "eval", "phase": phase, "round": r + 1, **last_eval})
            message += f"  held-out loss {last_eval['loss']:.3f}"
            if last_eval["accuracy_mean"] is not None:
                message += f"  accuracy {last_eval['accuracy_mean']:.2f}"
        tqdm.write(message + f"  ({time.perf_counter() - round_start:.1f} s)")
        if r + 1 == rounds:
            save_trained(setup, state, final_dir(run_dir, phase, cfg.model.finetune == "full"))
            done = done + [phase]
        save_checkpoint(run_dir, state, algorithm.state_dict(), {
            "phase": phase, "round": r + 1, "done": done, "metrics_lines": log.lines()}, client_states)
    bar.close()
    return last_eval or {}


def resume_phase(setup: Setup, phase: str, run_dir: Path, log: MetricsLog, done: list[str], checkpoint) -> dict:
    """Continue a phase from its checkpoint: global state, server state and every client's state."""
    return run_phase(setup, phase, run_dir, log, done, checkpoint.progress["round"], checkpoint.state,
                     checkpoint.server_state, checkpoint.client_states)


def phases_of(config: RunConfig) -> list[str]:
    return [p for p in PHASES if p == "federated" or getattr(config.baselines, p)]


def run(setup: Setup, run_dir: Path, resume: bool = False) -> dict:
    """Run (or continue) every phase; returns the summary written to summary.json."""
    cfg = setup.config
    log = MetricsLog(run_dir / "metrics.jsonl")
    checkpoint = load_checkpoint(run_dir) if resume else None
    done: list[str] = []
    if checkpoint is None:
        if resume:
            log.truncate(0)  # interrupted before the first checkpoint: start over
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(run_dir, to_dict(cfg))
        print(f"Clients ({cfg.fed.split} split of {len(setup.train_rows)} training examples):")
        print(client_table(setup.train_domains, setup.clients))
        if setup.dropped:
            print(f"({setup.dropped} training rows dropped: no response token left within "
                  f"data.max_length={cfg.data.max_length})")
        before = evaluate(setup)
        log.write({"type": "eval", "phase": "federated", "round": 0, **before})
        tqdm.write(_eval_line("before training", before))
    else:
        progress = checkpoint.progress
        log.truncate(progress["metrics_lines"])
        done = list(progress["done"])
        print(f"Resuming {run_dir}: {progress['phase']} phase after round {progress['round']}; "
              f"finished phases: {', '.join(done) or 'none'}")
    for phase in phases_of(cfg):
        if phase in done:
            continue
        if checkpoint is not None and checkpoint.progress["phase"] == phase:
            resume_phase(setup, phase, run_dir, log, done, checkpoint)
        else:
            run_phase(setup, phase, run_dir, log, done)
        done = done + [phase]
    plot_run(log.records(), run_dir / "plots")
    summary = summarize(log.records(), run_dir, cfg)
    return summary


def _eval_line(label: str, result: dict) -> str:
    line = f"[{label}] held-out loss {result['loss']:.3f}" if result["loss"] is not None else f"[{label}]"
    if result["accuracy_mean"] is not None:
        line += f"  accuracy {result['accuracy_mean']:.2f}  " + "  ".join(
            f"{d} {a:.2f}" for d, a in result["accuracy"].items())
    return line


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
        "evaluation": {name: {"loss": r["loss"], "accuracy": r["accuracy"],
                              "accuracy_mean": r["accuracy_mean"]} for name, r in columns.items()},
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
    titles = {"before": "before", "federated": f"federated ({cfg.fed.algorithm})",
              "local": f"local-only (client {cfg.baselines.local_client})", "centralized": "centralized"}
    domains = sorted({d for r in evaluation.values() for d in r["accuracy"]})
    header = ["held-out"] + [titles[n] for n in names]
    rows = [["loss"] + [f"{evaluation[n]['loss']:.3f}" if evaluation[n]["loss"] is not None else "-"
                        for n in names]]
    for d in domains:
        rows.append([f"acc {d}"] + [f"{evaluation[n]['accuracy'].get(d, 0):.2f}" for n in names])
    if domains:
        rows.append(["acc mean"] + [f"{evaluation[n]['accuracy_mean']:.2f}" for n in names])
    lines = ["", "=" * 72, "Federated instruction tuning finished", "=" * 72]
    lines += text_table(header, rows)
    lines += ["", f"adapter   {summary['adapter']}", f"plots     {summary['plots']}",
              f"metrics   {summary['metrics']}", f"resume    openfedllm sft --resume {summary['run_dir']}",
              "=" * 72]
    return "\n".join(lines)
