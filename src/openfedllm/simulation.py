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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import faults, models
from .algorithms import ClientTask, ClientUpdate, FedAvg, build_algorithm
from .client import Objective, cosine_lr, next_token_loss, train_local
from .config import RunConfig, to_dict
from .data import Example, load_examples, split_heldout
from .data.preference import load_preference_data, tokenize_pair
from .data.preference_suite import SAFETY, builtin_preferences
from .data.templates import check_template, dialogue_prompt_ids, prompt_ids, tokenize, truncate
from .dpo import DPOLoss, Reference, compute_reference, preference_metrics
from .errors import UserError
from .evaluate import accuracy_by_domain, generate, heldout_loss, is_refusal
from .evaluation import finance
from .evaluation.metrics import headline
from .partition import client_table, partition
from .plots import plot_run
from .rundir import MetricsLog, disk_errors, load_checkpoint, save_checkpoint, save_config
from .textfmt import text_table

PHASES = ("federated", "local", "centralized")  # in run order; a baseline runs if baselines.<name>
# DPO's evaluation metrics beside loss and accuracy, with their labels in the summary table.
ALIGNMENT_METRICS = {"pref_accuracy": "preference accuracy", "reward_margin": "reward margin",
                     "refusal_rate": "refusal rate, harmful", "benign_refusal_rate": "refusal rate, benign"}


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
    train_rows: list  # Tokenized examples (sft) or PairRows with their reference log-probs (dpo)
    train_domains: list[str]
    clients: list[list[int]]  # indices into train_rows, per client
    heldout: list[Example]  # held-out tasks whose generated answers are checked
    heldout_rows: list  # held-out Tokenized examples (loss) or PairRows (preference metrics)
    heldout_prompts: list[list[int]]  # generation prompts of `heldout`
    initial_state: dict[str, torch.Tensor]
    dropped: int  # training rows whose response was cut away entirely by max_length
    over_length: int = 0  # sft: training rows longer than max_length (cut, or dropped by data.over_length)
    objective: Objective = next_token_loss  # what a client's local steps minimise
    harmful_prompts: list[list[int]] = field(default_factory=list)  # dpo, built-in set: refusal rate
    train_texts: set[str] = field(default_factory=set)  # sft with a finance eval.benchmark: rows' texts, normalised


def prepare(config: RunConfig) -> Setup:
    """Read the data, load the model, tokenize once, split over clients. Writes no run files."""
    config.validate()
    faults.interrupt("prepare")
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    model_path = models.resolve_model(config.model.name)
    tokenizer = models.load_tokenizer(model_path)
    check_template(config.data.template, tokenizer)
    dpo = config.train.objective == "dpo"
    data = _preference_data(config, tokenizer) if dpo else _instruction_data(config, tokenizer)
    clients = split_clients(data["train_domains"], config)
    model = _load_model(config, model_path)
    setup = Setup(config, model, tokenizer, clients=clients, initial_state=models.trainable_state(model), **data)
    if dpo:
        if config.dpo.disable_dropout:
            models.disable_dropout(model)
        # The reference is the model as it starts: a fresh adapter is switched off for it; a given SFT
        # adapter, or all weights as they start when every weight trains, are loaded back to compute
        # it (switching "the adapter" off does nothing without one). Held-out pairs get theirs now,
        # in the batches evaluation uses.
        fresh_adapter = models.is_peft(model) and not config.model.adapter
        start = None if fresh_adapter else setup.initial_state
        compute_reference(model, setup.heldout_rows, tokenizer.pad_token_id, config.eval.batch_size,
                          config.train.packing, adapter_disabled=fresh_adapter,
                          desc="reference log-probs (held-out pairs)")
        reference = Reference(model, setup.train_rows, tokenizer.pad_token_id, config.eval.batch_size,
                              config.train.packing, start)
        setup.objective = DPOLoss(config.dpo.beta, config.dpo.loss, config.dpo.rpo_alpha, reference)
    return setup


def split_clients(labels: list[str], config: RunConfig) -> list[list[int]]:
    fed = config.fed
    return partition(labels, fed.num_clients, fed.split, config.train.seed, fed.dirichlet_alpha,
                     key_min_size=fed.key_min_size, key_max_size=fed.key_max_size,
                     exponent=fed.quantity_exponent, shards_per_client=fed.shards_per_client)


def _load_model(config: RunConfig, model_path: str):
    model = models.load_base_model(model_path, config.model.dtype)
    if config.model.adapter:
        found = models.adapter_config(config.model.adapter)
        # The adapter's own shape wins; the saved config.yaml then says what was trained.
        config.lora.rank, config.lora.alpha = found["rank"], found["alpha"]
        config.lora.target_modules = found["target_modules"]
        print(f"Starting from the adapter in {found['path']} (rank {found['rank']}, "
              f"modules {', '.join(found['target_modules'])})")
        return models.load_adapter(model, found["path"])
    if config.model.finetune == "lora":
        torch.manual_seed(config.train.seed)  # the initial adapter is part of the run's identity
        model = models.add_lora(model, config.lora.rank, config.lora.alpha, config.lora.dropout,
                                config.lora.target_modules)
    return model


def _instruction_data(config: RunConfig, tokenizer) -> dict:
    """SFT rows: each example tokenized once for the whole run, not per round."""
    train, heldout = load_examples(config.data, config.train.seed)
    limit = config.data.max_length
    rows, domains, dropped, over = [], [], 0, 0
    for example in train:
        row = tokenize(example, config.data.template, tokenizer, 0)
        if row is not None and len(row.input_ids) > limit:
            over += 1
            if config.data.over_length == "drop":
                continue
            row = truncate(row, limit)
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
    # Kept only when a finance benchmark will be checked against them (benchmark_overlap): a large
    # file's texts are not held for nothing.
    checked = any(b.partition("=")[0] in finance.SOURCES for b in config.eval.benchmarks)
    texts = {finance.normal_text(t) for e in train for t in (e.input, e.instruction) if t} if checked else set()
    return {"train_rows": rows, "train_domains": domains, "heldout": heldout, "train_texts": texts,
            "heldout_rows": [row for _, row in tokenized if row is not None],
            "heldout_prompts": [prompt_ids(e, config.data.template, tokenizer, config.data.max_length)
                                for e in heldout],
            "dropped": dropped, "over_length": over}


def _preference_data(config: RunConfig, tokenizer) -> dict:
    """DPO pairs of the built-in preference set or a user's file, tokenized once."""
    data = config.data
    tasks: list[Example] = []
    if data.path or data.name:
        prefs, report, where = load_preference_data(data)
        print(f"Preference data {where}: {report.summary(len(prefs))}")
        train, held = split_heldout(prefs, data, config.train.seed)
    else:
        train, held, tasks = builtin_preferences(data.train_per_domain, data.heldout_per_domain, config.train.seed)

    def pairs(prefs):
        tokenized = [(p, tokenize_pair(p, data.template, tokenizer, data.max_length, config.dpo.max_prompt_length))
                     for p in prefs]
        return [p for p, row in tokenized if row is not None], [row for _, row in tokenized if row is not None]

    train_kept, train_rows = pairs(train)
    if not train_rows:
        raise UserError(f"data: no preference pair keeps both responses within data.max_length={data.max_length} "
                        f"tokens (prompts cut to dpo.max_prompt_length={config.dpo.max_prompt_length})")
    held_kept, held_rows = pairs(held)
    harmful = [dialogue_prompt_ids(p.messages(), data.template, tokenizer, data.max_length)
               for p in held_kept if p.domain == SAFETY]
    return {"train_rows": train_rows, "train_domains": [p.domain for p in train_kept], "heldout": tasks,
            "heldout_rows": held_rows,
            "heldout_prompts": [prompt_ids(e, data.template, tokenizer, data.max_length) for e in tasks],
            "harmful_prompts": harmful, "dropped": len(train) - len(train_rows)}


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
            result.update(preference_metrics(setup.model, setup.heldout_rows, pad_id, batch_size, packing,
                                             cfg.dpo.beta, cfg.dpo.loss))
        if setup.harmful_prompts:
            said = generate(setup.model, setup.harmful_prompts, setup.tokenizer, cfg.eval.max_new_tokens, batch_size)
            result["refusal_rate"] = sum(map(is_refusal, said)) / len(said)
    elif setup.heldout_rows:
        result["loss"] = heldout_loss(setup.model, setup.heldout_rows, pad_id, batch_size, packing)
    checkable = [i for i, e in enumerate(setup.heldout) if e.check != "none"]
    if checkable:
        responses = generate(setup.model, [setup.heldout_prompts[i] for i in checkable],
                             setup.tokenizer, cfg.eval.max_new_tokens, batch_size)
        result["accuracy"] = accuracy_by_domain([setup.heldout[i] for i in checkable], responses)
        result["accuracy_mean"] = sum(result["accuracy"].values()) / len(result["accuracy"])
        if cfg.train.objective == "dpo":  # a model that refuses everything is broken, not aligned
            result["benign_refusal_rate"] = sum(map(is_refusal, responses)) / len(responses)
    if benchmark_dir is not None and cfg.eval.benchmarks:
        result["benchmarks"] = run_training_benchmarks(setup, benchmark_dir)
    result["seconds"] = time.perf_counter() - start
    return result


def benchmark_dir(run_dir: Path, phase: str, round_index: int) -> Path:
    return run_dir / "benchmarks" / f"{phase}-round{round_index}"


def run_training_benchmarks(setup: Setup, out_dir: Path) -> dict[str, dict[str, float]]:
    """eval.benchmarks on the model being trained, through the same code as `openfedllm eval`."""
    from .evaluation import choice
    from .evaluation.lm import LM
    from .evaluation.runner import Settings, run_benchmarks

    cfg = setup.config.eval
    data = dict(entry.partition("=")[::2] for entry in cfg.benchmarks)
    lm = LM(setup.model, setup.tokenizer, setup.config.data.template, batch_size=8)
    settings = Settings(data={k: v for k, v in data.items() if v}, limit=cfg.benchmark_limit,
                        modes=choice.modes(cfg.benchmark_mode),
                        out_prefix=out_dir / "eval", model_id="global", get_lm=lambda: lm)
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


def train_client(setup: Setup, algorithm, phase: str, round_index: int, client_id: int, rows: list,
                 task: ClientTask, own_state: dict) -> tuple[ClientUpdate, dict]:
    """One client's round, the same in the simulation and on a Flower node: start from the global
    tensors, take the local steps with the algorithm's hooks, and return the client's update (its
    metrics included) and its new client state (SCAFFOLD's c_i)."""
    cfg = setup.config
    models.load_trainable_state(setup.model, task.global_state)
    params = models.trainable_parameters(setup.model)
    client_name = client_id if phase == "federated" else phase
    result = train_local(
        setup.model, rows, steps=task.steps, batch_size=cfg.train.batch_size,
        grad_accum=cfg.train.grad_accum, lr=task.lr, weight_decay=cfg.train.weight_decay,
        max_grad_norm=cfg.train.max_grad_norm, seed=derive_seed(cfg.train.seed, phase, round_index, client_id),
        pad_id=setup.tokenizer.pad_token_id, hooks=algorithm.client_hooks(params, task, own_state),
        optimizer=cfg.train.optimizer, packing=cfg.train.packing,
        max_tokens_per_pass=cfg.train.max_tokens_per_pass, objective=setup.objective,
        desc=f"round {round_index + 1} client {client_name}",
    )
    weights = models.trainable_state(setup.model)
    extras, own_state = algorithm.client_finish(task, weights, own_state)
    metrics = {"loss": result.loss, "steps": result.steps, "tokens": result.tokens,
               "seconds": round(result.seconds, 3), **result.metrics}
    return ClientUpdate(client_id, weights, len(rows), metrics=metrics, extras=extras), own_state


class LocalClients:
    """The simulation's clients: each sampled client trains in turn on the one model in memory, and
    what lives with a client between rounds (SCAFFOLD's c_i) is kept here, keyed by client id."""

    def __init__(self, setup: Setup, phase: str, partitions: list[list[int]], client_states=None):
        self.setup, self.phase, self.partitions = setup, phase, partitions
        self.client_states: dict[int, dict] = dict(client_states or {})

    def sizes(self) -> list[int]:
        return [len(p) for p in self.partitions]

    def train_round(self, algorithm, round_index: int, sampled: list[int], task: ClientTask) -> list[ClientUpdate]:
        updates = []
        for cid in sampled:
            rows = [self.setup.train_rows[i] for i in self.partitions[cid]]
            update, own_state = train_client(self.setup, algorithm, self.phase, round_index, cid, rows, task,
                                             self.client_states.get(cid, {}))
            if own_state:
                self.client_states[cid] = own_state
            updates.append(update)
        return updates

    def checkpoint_state(self) -> dict:
        return self.client_states


def client_record(phase: str, round_index: int, update: ClientUpdate, lr: float) -> dict:
    """The metrics.jsonl line of one client's round."""
    m = dict(update.metrics)
    return {"type": "client", "phase": phase, "round": round_index + 1, "client": update.client_id,
            "loss": m.pop("loss"), "examples": update.num_examples, "steps": m.pop("steps"),
            "tokens": m.pop("tokens"), "seconds": m.pop("seconds"), "lr": lr, **m}


def run_phase(setup: Setup, phase: str, run_dir: Path, log: MetricsLog, done: list[str],
              start_round: int = 0, state=None, server_state=None, client_states=None, clients=None) -> dict:
    """The rounds of one phase. `clients` trains the sampled clients of a round: the simulation's
    LocalClients by default, or a deployment's nodes (flower.server.NodeClients)."""
    cfg = setup.config
    partitions, per_round, steps = phase_clients(setup, phase)
    clients = clients or LocalClients(setup, phase, partitions, client_states)
    if phase == "federated":
        algorithm = build_algorithm(cfg.fed, total_examples=sum(clients.sizes()))
    else:
        algorithm = FedAvg()  # a federation of one: the client's model is the result
    if server_state:
        algorithm.load_state_dict(server_state)
    state = dict(setup.initial_state) if state is None else state
    last_eval = None
    rounds = cfg.fed.rounds
    bar = tqdm(range(start_round, rounds), desc=f"{phase} rounds", initial=start_round, total=rounds,
               dynamic_ncols=True, disable=None)
    for r in bar:
        round_start = time.perf_counter()
        task = ClientTask(global_state=state, message=algorithm.server_message(),
                          lr=cosine_lr(r, rounds, cfg.train.lr, cfg.train.min_lr), steps=steps)
        sampled = sample_clients(cfg.train.seed, phase, r, len(clients.sizes()), per_round)
        updates = clients.train_round(algorithm, r, sampled, task)
        faults.point("replies", r + 1)
        for update in updates:
            log.write(client_record(phase, r, update, task.lr))
        losses = [u.metrics["loss"] for u in updates]
        state = algorithm.aggregate(state, updates)
        models.load_trainable_state(setup.model, state)
        replied = [u.client_id for u in updates]
        message = f"[{phase}] round {r + 1}/{rounds}  clients {replied}  train loss {np.mean(losses):.3f}"
        # Baselines are evaluated once, at their end; the federation every eval.every rounds.
        due = r + 1 == rounds or (phase == "federated" and (r + 1) % cfg.eval.every == 0)
        if due:
            bench_due = r + 1 == rounds or (r + 1) % (cfg.eval.every * cfg.eval.benchmark_every) == 0
            last_eval = evaluate(setup, benchmark_dir(run_dir, phase, r + 1) if bench_due else None)
            log.write({"type": "eval", "phase": phase, "round": r + 1, **last_eval})
            message += "  " + _eval_text(last_eval, per_domain=False)
        tqdm.write(message + f"  ({time.perf_counter() - round_start:.1f} s)")
        if r + 1 == rounds:
            with disk_errors(run_dir, f"the trained {phase} model"):
                save_trained(setup, state, final_dir(run_dir, phase, cfg.model.finetune == "full"))
            done = done + [phase]
        save_checkpoint(run_dir, state, algorithm.state_dict(), {
            "phase": phase, "round": r + 1, "done": done, "metrics_lines": log.lines()}, clients.checkpoint_state())
        faults.point("checkpoint", r + 1)
    bar.close()
    return last_eval or {}


def resume_phase(setup: Setup, phase: str, run_dir: Path, log: MetricsLog, done: list[str], checkpoint,
                 clients=None) -> dict:
    """Continue a phase from its checkpoint: global state, server state and every client's state."""
    return run_phase(setup, phase, run_dir, log, done, checkpoint.progress["round"], checkpoint.state,
                     checkpoint.server_state, checkpoint.client_states, clients)


def check_progress(progress: dict, phases: list[str], rounds: int, log: MetricsLog, run_dir: Path) -> None:
    """A checkpoint's progress must fit the run's config and its metrics log, or resuming would
    repeat records or name an adapter that does not exist."""
    where = f"--resume {run_dir}: checkpoints/progress.json"
    phase, done, at, lines = progress["phase"], progress["done"], progress["round"], progress["metrics_lines"]
    if phase not in phases:
        raise UserError(f"{where} names phase {phase!r}; this run's phases are {', '.join(phases)}")
    if not isinstance(done, list) or any(p not in phases for p in done):
        raise UserError(f"{where}: finished phases {done!r} are not among {', '.join(phases)}")
    if not isinstance(at, int) or isinstance(at, bool) or not 0 <= at <= rounds:
        raise UserError(f"{where}: round {at!r} is outside the run's 0..{rounds}")
    written = log.valid_lines()
    if not isinstance(lines, int) or isinstance(lines, bool) or not 0 <= lines <= written:
        raise UserError(f"{where}: {lines!r} metrics lines, but metrics.jsonl has {written} readable ones")


def phases_of(config: RunConfig) -> list[str]:
    return [p for p in PHASES if p == "federated" or getattr(config.baselines, p)]


def run(setup: Setup, run_dir: Path, resume: bool = False, clients=None) -> dict:
    """Run (or continue) every phase; returns the summary written to summary.json. `clients` trains
    the federated phase's rounds (a deployment's nodes); by default the simulation's LocalClients."""
    cfg = setup.config
    log = MetricsLog(run_dir / "metrics.jsonl")
    checkpoint = load_checkpoint(run_dir) if resume else None
    done: list[str] = []
    if checkpoint is None:
        if resume:
            log.truncate(0)  # interrupted before the first checkpoint: start over
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(run_dir, to_dict(cfg))
        what = "preference pairs" if cfg.train.objective == "dpo" else "training examples"
        if clients is None:  # a deployment's clients hold their own data; the nodes report their sizes
            print(f"Clients ({cfg.fed.split} split of {len(setup.train_rows)} {what}):")
            print(client_table(setup.train_domains, setup.clients))
        if setup.over_length:
            what = "dropped" if cfg.data.over_length == "drop" else "cut at the end"
            print(f"({setup.over_length} training rows longer than data.max_length={cfg.data.max_length} "
                  f"tokens: {what})")
        if setup.dropped:
            print(f"({setup.dropped} training rows dropped: no response token left within "
                  f"data.max_length={cfg.data.max_length})")
        for name, counts in benchmark_overlap(setup).items():
            log.write({"type": "overlap", "benchmark": name, **counts})
            if counts["overlap"]:
                print(f"warning: eval.benchmarks {name}: {counts['overlap']} of its {counts['rows']} scored rows "
                      f"are training rows of this run; its score is not a held-out score")
        before = evaluate(setup, benchmark_dir(run_dir, "federated", 0))
        log.write({"type": "eval", "phase": "federated", "round": 0, **before})
        tqdm.write("[before training]  " + _eval_text(before))
    else:
        progress = checkpoint.progress
        check_progress(progress, phases_of(cfg), cfg.fed.rounds, log, run_dir)
        log.truncate(progress["metrics_lines"])
        done = list(progress["done"])
        print(f"Resuming {run_dir}: {progress['phase']} phase after round {progress['round']}; "
              f"finished phases: {', '.join(done) or 'none'}")
    for phase in phases_of(cfg):
        if phase in done:
            continue
        if checkpoint is not None and checkpoint.progress["phase"] == phase:
            resume_phase(setup, phase, run_dir, log, done, checkpoint, clients if phase == "federated" else None)
        else:
            run_phase(setup, phase, run_dir, log, done, clients=clients if phase == "federated" else None)
        done = done + [phase]
    plot_run(log.records(), run_dir / "plots")
    summary = summarize(log.records(), run_dir, cfg)
    return summary


def _eval_text(result: dict, per_domain: bool = True) -> str:
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
        "evaluation": {name: {k: r[k] for k in ("loss", *ALIGNMENT_METRICS, "accuracy", "accuracy_mean",
                                                 "benchmarks") if k in r}
                       for name, r in columns.items()},
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
    loss_name = "DPO loss" if cfg.train.objective == "dpo" else "loss"
    rows = [[loss_name] + [f"{evaluation[n]['loss']:.3f}" if evaluation[n]["loss"] is not None else "-"
                           for n in names]]
    for key, label in ALIGNMENT_METRICS.items():
        if any(key in evaluation[n] for n in names):
            rows.append([label] + [f"{evaluation[n][key]:.2f}" if key in evaluation[n] else "-" for n in names])
    for d in domains:
        rows.append([f"acc {d}"] + [f"{evaluation[n]['accuracy'].get(d, 0):.2f}" for n in names])
    if domains:
        rows.append(["acc mean"] + [f"{evaluation[n]['accuracy_mean']:.2f}" for n in names])
    benchmarks = {b: headline(m) for r in evaluation.values() for b, m in r.get("benchmarks", {}).items()}
    for b, key in benchmarks.items():
        if key:
            rows.append([f"{b} {key}"] + [f"{evaluation[n]['benchmarks'][b][key]:.2f}"
                                          if key in evaluation[n].get("benchmarks", {}).get(b, {}) else "-"
                                          for n in names])
    what = "value alignment (DPO)" if cfg.train.objective == "dpo" else "instruction tuning"
    lines = ["", "=" * 72, f"Federated {what} finished", "=" * 72]
    lines += text_table(header, rows)
    lines += ["", f"adapter   {summary['adapter']}", f"plots     {summary['plots']}",
              f"metrics   {summary['metrics']}",
              f"resume    openfedllm {cfg.train.objective} --resume {summary['run_dir']}", "=" * 72]
    return "\n".join(lines)
