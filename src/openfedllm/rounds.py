"""The round loop, the same on one machine and in a Flower deployment, with its local and
centralized baselines.

One model lives in memory on the server side. Each round, the sampled clients start from the
global trainable tensors, train on their own partition only, and hand back their tensors; the
algorithm aggregates them into the next global state. Who trains is the `Clients` seam: the
simulation's LocalClients (every client in turn, in this process) or a deployment's NodeClients
(flower/server.py: the Flower nodes). A baseline is the same loop with a federation of one: the
local-only baseline is one client alone, the centralized baseline one "client" holding all data.

All randomness is derived from (seed, phase, round, client), never from a stream that runs
across rounds, so a run resumed from any checkpoint takes exactly the steps an uninterrupted
run takes; the checkpoint stores the round reached and the seed in the saved config.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from . import attacks, card, faults, models, personalize, tracking
from .algorithms import ClientTask, ClientUpdate, FedAvg, build_algorithm
from .client import LocalSteps, cosine_lr, train_local
from .client_state import ClientStore
from .combine import Combiner, client_side, plain
from .compression import RESIDUAL, Wire, array_bytes
from .config import RunConfig, phases_of, to_dict
from .data.lazy import LazyRows, client_rows
from .errors import UserError
from .evaluation.heldout import benchmark_overlap, evaluate
from .ledger import Ledger, mb
from .lora_aggregation import LoraAggregation
from .lora_aggregation import build as build_lora
from .lora_aggregation.base import LOCAL
from .lora_aggregation.factors import truncate_rank
from .lora_aggregation.merges import MergeLog
from .lora_aggregation.server import LoraServer
from .partition import client_table
from .plots import plot_run, run_title
from .report import banner, duration, eval_text, personal_text, summarize
from .rundir import (
    FEDERATED_END,
    Checkpoint,
    MetricsLog,
    benchmark_dir,
    disk_errors,
    final_dir,
    keep_federated_end,
    load_checkpoint,
    save_checkpoint,
    save_config,
    start_console_log,
)
from .setup import Setup


class Clients(Protocol):
    """Who trains a round's sampled clients, and keeps what lives with each client between rounds."""

    def sizes(self) -> list[int]:
        """Each client's number of training rows (examples or pairs), by client id."""

    def train_round(
        self, algorithm, round_index: int, sampled: list[int], task: ClientTask, merges: MergeLog
    ) -> list[ClientUpdate]:
        """The updates of the sampled clients that replied, each trained from `task` on the frozen
        weights with every merge of `merges` (FLoRA, FedEx-LoRA) before round `round_index`."""

    def checkpoint_state(self) -> dict:
        """What the server's checkpoint keeps of the clients (SCAFFOLD's c_i in the simulation)."""

    def aggregation_inputs(self, updates: list[ClientUpdate]) -> list[ClientUpdate]:
        """What the algorithm aggregates: the updates themselves, or (SecAgg+) one update of their sum."""


def lora_method(cfg, phase: str) -> LoraAggregation:
    """The run's LoRA aggregation in its federated phase; a baseline (one client) has nothing to combine."""
    return build_lora(cfg.fed.lora_aggregation if phase == "federated" and cfg.model.finetune == "lora" else "naive")


def derive_seed(*parts) -> int:
    """A 63-bit seed from the run seed and where we are (phase, round, client)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def phase_clients(setup: Setup, phase: str) -> tuple[list[list[int]], int, int]:
    """(client partitions, clients per round, local steps) of a phase."""
    fed, train = setup.config.fed, setup.config.train
    if phase == "federated":
        return setup.clients, fed.sampled(), train.local_steps
    if phase == "local":
        return [setup.clients[setup.config.baselines.local_client]], 1, train.local_steps
    # Centralized: all data pooled, and as many steps per round as the whole federation takes.
    return [sorted(i for c in setup.clients for i in c)], 1, train.local_steps * fed.sampled()


def sample_clients(seed: int, phase: str, round_index: int, num_clients: int, per_round: int) -> list[int]:
    rng = np.random.default_rng(derive_seed(seed, phase, round_index, "sample"))
    return sorted(int(c) for c in rng.choice(num_clients, size=per_round, replace=False))


def save_trained(setup: Setup, state: dict[str, torch.Tensor], path: Path) -> None:
    """The trained tensors in the model's standard format: a peft adapter, or a full model."""
    models.load_trainable_state(setup.model, state)
    shutil.rmtree(path, ignore_errors=True)
    setup.model.save_pretrained(str(path))
    if not models.is_peft(setup.model):
        setup.tokenizer.save_pretrained(path)
    card.finish(path, setup.config)  # the summary adds the results when the run ends


def client_rank(cfg, client_id: int) -> int:
    """A client's LoRA rank under fed.client_ranks. A node with its own data file runs a federation
    of one (flower/node.py), whose config holds that client's rank alone."""
    return cfg.fed.client_ranks[client_id if cfg.fed.num_clients > 1 else 0]


def wire_rank(cfg, phase: str, client_id: int) -> int | None:
    """The rank a client's tensors travel at (compression.Wire): its own under fed.client_ranks, so
    its bytes follow it; None (the whole adapter) otherwise, and under SecAgg+, whose masked sum
    needs every client's vector the same length."""
    if phase != "federated" or not cfg.fed.client_ranks or cfg.secagg.enabled:
        return None
    return client_rank(cfg, client_id)


def train_client(
    setup: Setup, algorithm, phase: str, round_index: int, client_id: int, rows: list, task: ClientTask, own_state: dict
) -> tuple[ClientUpdate, dict]:
    """One client's round, the same in the simulation and on a Flower node: start from the global
    tensors, take the local steps with the algorithm's hooks, and return the client's update (its
    metrics included) and its new client state (SCAFFOLD's c_i)."""
    cfg = setup.config
    # what the LoRA aggregation keeps on the client (FedSA-LoRA's B_i) sits beside the algorithm's state
    lora = lora_method(cfg, phase)
    kept = {k[len(LOCAL) :]: v for k, v in own_state.items() if k.startswith(LOCAL)}
    # top-k's error feedback is the wire's (compression.Wire.send_update), not the algorithm's
    residuals = {k: v for k, v in own_state.items() if k.startswith(RESIDUAL)}
    own_state = {k: v for k, v in own_state.items() if not k.startswith((LOCAL, RESIDUAL))}
    start = lora.client_start(task.global_state, setup.initial_state, kept)
    trained_against = task
    if cfg.fed.client_ranks and phase == "federated":  # heterogeneous ranks: this client's own
        rank = client_rank(cfg, client_id)
        start = truncate_rank(start, rank)
        # what the local steps pull towards (FedProx's x, SCAFFOLD's c - c_i) within the rank too: the
        # other clients' components beyond it would move the zeros and lift the update's rank
        trained_against = replace(
            task, global_state=truncate_rank(task.global_state, rank), message=truncate_rank(task.message, rank)
        )
    models.load_trainable_state(setup.model, start)
    params = models.trainable_parameters(setup.model)
    client_name = client_id if phase == "federated" else phase
    settings = LocalSteps(
        steps=task.steps,
        batch_size=cfg.train.batch_size,
        lr=task.lr,
        seed=derive_seed(cfg.train.seed, phase, round_index, client_id),
        pad_id=setup.tokenizer.pad_token_id,
        grad_accum=cfg.train.grad_accum,
        weight_decay=cfg.train.weight_decay,
        max_grad_norm=cfg.train.max_grad_norm,
        optimizer=cfg.train.optimizer,
        packing=cfg.train.packing,
        max_tokens_per_pass=cfg.train.max_tokens_per_pass,
    )
    result = train_local(
        setup.model,
        rows,
        settings,
        hooks=algorithm.client_hooks(params, trained_against, own_state),
        objective=setup.objective,
        desc=f"round {round_index + 1} client {client_name}",
    )
    weights, kept = lora.client_finish(models.trainable_state(setup.model), kept)
    extras, own_state = algorithm.client_finish(trained_against, weights, own_state)
    # an attacker's reply, then local DP's noise: on the client, before anything leaves it
    attack = attacks.kind_of(cfg, client_id, phase)
    if phase == "federated":
        weights, own_state = client_side(cfg, task.global_state, weights, own_state, attack, settings.seed)
    own_state = {**own_state, **{LOCAL + k: v for k, v in kept.items()}, **residuals}
    metrics = {
        "loss": result.loss,
        "steps": result.steps,
        "tokens": result.tokens,
        "seconds": round(result.seconds, 3),
        "step_losses": [float(x) for x in result.losses],
        "step_seconds": [round(x, 3) for x in result.step_seconds],
        **result.metrics,
    }
    return ClientUpdate(client_id, weights, len(rows), metrics=metrics, extras=extras), own_state


class LocalClients:
    """The simulation's clients: each sampled client trains in turn on the one model in memory, and
    what lives with a client between rounds (SCAFFOLD's c_i, FedSA-LoRA's B_i, top-k's residual) is
    kept on disk by client id (`client_state.ClientStore`), read only when the client is sampled."""

    def __init__(self, setup: Setup, phase: str, partitions: list[list[int]], store: ClientStore):
        self.setup, self.phase, self.partitions, self.store = setup, phase, partitions, store

    def sizes(self) -> list[int]:
        return [len(p) for p in self.partitions]

    def train_round(
        self, algorithm, round_index: int, sampled: list[int], task: ClientTask, merges: MergeLog
    ) -> list[ClientUpdate]:
        # what a deployment would send and receive: the same arrays, encoded and decoded alike
        cfg = self.setup.config
        wire = Wire.of(cfg, self.phase)
        sent: dict = {}  # by the rank the tensors travel at: what every client of that rank receives
        updates = []
        for cid in sampled:
            rank = wire_rank(cfg, self.phase, cid)
            if rank not in sent:
                x, c = wire.send_state(task.global_state, rank), wire.send_state(task.message, rank)
                received = task
                if not wire.exact or rank is not None:
                    received = replace(
                        task,
                        global_state=wire.receive_state(x, task.global_state, rank),
                        message=wire.receive_state(c, task.message, rank),
                    )
                sent[rank] = (array_bytes(x) + array_bytes(c), received)
            down, received = sent[rank]
            rows = client_rows(self.setup.train_rows, self.partitions[cid])
            own_state = self.store.get(cid, round_index)
            update, own_state = train_client(
                self.setup, algorithm, self.phase, round_index, cid, rows, received, own_state
            )
            up, extras, own_state = wire.send_update(
                update.weights, received.global_state, update.extras, own_state, rank
            )
            if own_state:
                self.store.put(cid, round_index, own_state)
            if not wire.exact or rank is not None:  # the server's copy: x + the decoded move
                update.weights = wire.receive_update(up, task.global_state, update.weights, rank)
                update.extras = wire.receive_extras(extras, update.extras, rank)
            # the clients train on the server's model, whose W has every merge; a node is sent those it lacks
            update.bytes_down = down + merges.bytes_for(cid, round_index)
            merges.delivered(cid, round_index)
            update.bytes_up = array_bytes(up) + array_bytes(extras)
            updates.append(update)
        return updates

    def checkpoint_state(self) -> dict:
        return {}  # on disk, beside the checkpoint (ClientStore): files of later rounds do not count on resume

    def state_of(self, client_id: int) -> dict:
        """A client's newest state: at the federation's end, what it keeps."""
        return self.store.latest(client_id)

    def aggregation_inputs(self, updates: list[ClientUpdate]) -> list[ClientUpdate]:
        return updates  # the simulation's server is the clients' process: secagg has nothing to hide here


def client_records(phase: str, round_index: int, update: ClientUpdate, lr: float) -> list[dict]:
    """The metrics.jsonl lines of one client's round: one per local step (its loss; `global_step`
    counts the phase's steps, `elapsed` the seconds since the client's first step began), then the
    round's (see docs/metrics.md for every field)."""
    m = dict(update.metrics)
    losses: list[float] = m.pop("step_losses", [])
    elapsed: list[float] = m.pop("step_seconds", [])
    steps = m.pop("steps")
    where = {"phase": phase, "round": round_index + 1, "client": update.client_id}
    records = [
        {"type": "step", **where, "step": k + 1, "global_step": round_index * steps + k + 1, "loss": loss, "elapsed": t}
        for k, (loss, t) in enumerate(zip(losses, elapsed))
    ]
    records.append(
        {
            "type": "client",
            **where,
            "loss": m.pop("loss"),
            "examples": update.num_examples,
            "steps": steps,
            "tokens": m.pop("tokens"),
            "seconds": m.pop("seconds"),
            "lr": lr,
            **({"bytes_up": update.bytes_up, "bytes_down": update.bytes_down} if phase == "federated" else {}),
            **({"wire_up": update.wire_up, "wire_down": update.wire_down} if update.wire_up else {}),
            **m,
        }
    )
    return records


def save_heldout(run_dir: Path, examples: list) -> None:
    """heldout.jsonl: the examples held out of the user's data, in Alpaca's fields (a conversation as
    `messages`), so that what the run was scored on can be read, reused or given as data.eval_path."""
    import json

    with (run_dir / "heldout.jsonl").open("w") as f:
        for e in examples:
            row = {"instruction": e.instruction, "input": e.input, "output": e.output, "category": e.domain}
            if e.turns:
                row = {"messages": [{"role": r, "content": t} for r, t in e.turns], "category": e.domain}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def run_phase(
    setup: Setup,
    phase: str,
    run_dir: Path,
    log: MetricsLog,
    done: list[str],
    start_round: int = 0,
    state=None,
    server_state=None,
    client_states=None,
    clients: Clients | None = None,
) -> dict:
    """The rounds of one phase. `clients` trains the sampled clients of a round: the simulation's
    LocalClients by default, or a deployment's nodes (flower.server.NodeClients)."""
    cfg = setup.config
    partitions, per_round, steps = phase_clients(setup, phase)
    store = None
    if clients is None:
        store = ClientStore(run_dir / "client-state" / phase, safe_round=start_round)
        store.adopt(client_states or {}, start_round)  # a checkpoint from before the store: its client_states.pt
        clients = LocalClients(setup, phase, partitions, store)
    # a baseline is a federation of one: the client's model is the result
    algorithm = build_algorithm(cfg.fed) if phase == "federated" else FedAvg()
    algorithm.start(clients.sizes())
    # robust rules, norm bounding and DP between the replies and the algorithm's step
    combiner = Combiner.start(cfg) if phase == "federated" and not plain(cfg) else None
    algorithm.combine = combiner
    # how the LoRA factors are combined (the baselines have one client: nothing to combine)
    lora = LoraServer(
        lora_method(cfg, phase),
        cfg.lora.alpha / cfg.lora.rank,
        len(clients.sizes()),
        deployed=not isinstance(clients, LocalClients),  # a deployment's nodes are sent the merges themselves
    )
    if server_state:
        algorithm.load_state_dict(server_state)
        lora.load_state_dict(setup.model, server_state)
        if combiner is not None:
            combiner.load_state_dict(server_state)
    if combiner is not None:
        combiner.ensure_noise()
        combiner.check_budget(start_round)
    state = lora.shared(dict(setup.initial_state)) if state is None else state
    last_eval = None
    rounds = cfg.fed.rounds
    ledger = Ledger.start(cfg, log) if phase == "federated" else None
    if ledger is not None:
        # before any round: each sampled client receives x (+ the broadcast) and sends y_i back
        # (SCAFFOLD: with its c_i change, the adapter's shape again; SecAgg+: as int64, twice float32).
        # Every codec's sizes depend on the tensors' shapes only, so encoding x tells them.
        wire = Wire.of(cfg, phase)
        down = array_bytes(wire.send_state(state)) + array_bytes(wire.send_state(algorithm.server_message()))
        up = array_bytes(wire.send_update(state, state, {}, {})[0])
        up *= 2 if cfg.fed.algorithm == "scaffold" or cfg.secagg.enabled else 1
        first_round = per_round * (down + up)
        ledger.check_plan(start_round, rounds, first_round)
    bar = tqdm(
        range(start_round, rounds),
        desc=f"{phase} rounds",
        initial=start_round,
        total=rounds,
        dynamic_ncols=True,
        disable=None,
    )
    phase_start, timed = time.perf_counter(), 0
    for r in bar:
        round_start = time.perf_counter()
        task = ClientTask(
            global_state=state,
            message=algorithm.server_message(),
            lr=cosine_lr(r, rounds, cfg.train.lr, cfg.train.min_lr),
            steps=steps,
        )
        if ledger is not None:
            ledger.check(r, first_round)
        sample_seed = combiner.sampling_seed(cfg.train.seed) if combiner else cfg.train.seed
        sampled = sample_clients(sample_seed, phase, r, len(clients.sizes()), per_round)
        updates = clients.train_round(algorithm, r, sampled, task, lora.merges)
        faults.point("replies", r + 1)
        for update in updates:
            records = client_records(phase, r, update, task.lr)
            attack = attacks.kind_of(cfg, update.client_id, phase)
            if attack:  # marked by the server, from the config: a node reports only its numbers
                records[-1].update(malicious=True, attack=attack)
            for record in records:
                log.write(record)
        losses = [u.metrics["loss"] for u in updates]
        if combiner is not None:
            combiner.round_index = r
        inputs = clients.aggregation_inputs(updates)
        if models.is_peft(setup.model):
            seed = derive_seed(cfg.train.seed, phase, r, "lora")
            # under SecAgg+ the server has the sum only: no clients' products to measure against
            state, error = lora.aggregate(
                setup.model, algorithm, state, inputs, seed, measure=inputs is updates, round_index=r
            )
            if error:
                log.write({"type": "aggregation", "phase": phase, "round": r + 1, "aggregation_error": error})
        else:
            state, error = algorithm.aggregate(state, inputs), {}
        models.load_trainable_state(setup.model, lora.global_model(state, setup.initial_state))
        replied = [u.client_id for u in updates]
        message = f"[{phase}] round {r + 1}/{rounds}  clients {replied}  train loss {np.mean(losses):.3f}"
        if ledger is not None:
            message += f"  sent {mb(ledger.add(updates))}"
        privacy: dict = {}
        if combiner is not None:
            record = combiner.record(phase, r + 1)
            log.write(record)
            if combiner.private:
                privacy = {"epsilon": record["epsilon"]}
                message += f"  epsilon {record['epsilon']:.3g}"
            if "selected" in record:
                message += f"  kept {record['selected']}"
        if error and len(updates) > 1:  # one client's adapter is its own mean
            message += f"  aggregation error {max(error.values()):.3f}"
        # Baselines are evaluated once, at their end; the federation every eval.every rounds.
        due = r + 1 == rounds or (phase == "federated" and (r + 1) % cfg.eval.every == 0)
        timing = f"round {time.perf_counter() - round_start:.1f} s"
        if due:
            eval_start = time.perf_counter()
            bench_due = r + 1 == rounds or (r + 1) % (cfg.eval.every * cfg.eval.benchmark_every) == 0
            last_eval = evaluate(setup, benchmark_dir(run_dir, phase, r + 1) if bench_due else None)
            log.write({"type": "eval", "phase": phase, "round": r + 1, **last_eval, **privacy})
            message += "  " + eval_text(last_eval, per_domain=False)
            timing += f", eval {time.perf_counter() - eval_start:.1f} s"
        timed += 1
        if r + 1 < rounds:  # the rounds left at this phase's mean pace so far
            timing += f", ETA {duration((time.perf_counter() - phase_start) / timed * (rounds - r - 1))}"
        tqdm.write(f"{message}  ({timing})")
        if phase == "federated" and r + 1 == rounds and personalize.wanted(cfg, lora.method):
            if isinstance(clients, LocalClients):
                for record in personalize.personal_records(setup, clients, lora, state, last_eval or {}, r):
                    log.write(record)
                    tqdm.write(f"[personalized] client {record['client']} ({record['kind']})  " + personal_text(record))
            else:  # a node's B and data stay on it
                tqdm.write("(personalized models are scored in the simulation only; a deployment's stay on the nodes)")
        if r + 1 == rounds:
            with disk_errors(run_dir, f"the trained {phase} model"):
                path = final_dir(run_dir, phase, cfg.model.finetune == "full")
                if lora.save(setup.model, state, path):  # merges into W are part of the adapter written
                    card.finish(path, cfg)
                else:
                    save_trained(setup, lora.global_model(state, setup.initial_state), path)
            done = done + [phase]
        save_checkpoint(
            run_dir,
            state,
            {**algorithm.state_dict(), **lora.state_dict(setup.model), **(combiner.state_dict() if combiner else {})},
            {"phase": phase, "round": r + 1, "done": done, "metrics_lines": log.lines()},
            clients.checkpoint_state(),
        )
        if store is not None:
            store.safe_round = r + 1  # a resume now starts here: older client files can go
        if phase == "federated" and r + 1 == rounds:
            keep_federated_end(run_dir)
        faults.point("checkpoint", r + 1)
    bar.close()
    lora.restore(setup.model)  # the baselines train on the original frozen weights
    return last_eval or {}


def resume_phase(
    setup: Setup,
    phase: str,
    run_dir: Path,
    log: MetricsLog,
    done: list[str],
    checkpoint: Checkpoint,
    clients: Clients | None = None,
) -> dict:
    """Continue a phase from its checkpoint: global state, server state and every client's state."""
    return run_phase(
        setup,
        phase,
        run_dir,
        log,
        done,
        checkpoint.progress["round"],
        checkpoint.state,
        checkpoint.server_state,
        checkpoint.client_states,
        clients,
    )


def extension_point(run_dir: Path, checkpoint: Checkpoint | None, rounds: int) -> Checkpoint:
    """The federated phase's checkpoint to extend from (the baselines, which run after it, run again)."""
    if checkpoint is not None and checkpoint.progress["phase"] != "federated":
        checkpoint = load_checkpoint(run_dir, FEDERATED_END)
    if checkpoint is None or checkpoint.progress["phase"] != "federated":
        raise UserError(f"--fed.rounds: {run_dir} has no checkpoint of its federated phase to extend")
    at = checkpoint.progress["round"]
    if rounds <= at:
        raise UserError(f"--fed.rounds {rounds}: {run_dir} has trained {at} federated rounds; give more to extend it")
    checkpoint.progress["done"] = []  # the federated phase goes on; the baselines follow its new length
    print(
        f"Extending {run_dir} to {rounds} federated rounds from round {at}: the learning rate of rounds "
        f"{at + 1}..{rounds} follows the cosine over {rounds} rounds (rounds 1..{at} kept theirs); "
        "baselines run again for the new length"
    )
    return checkpoint


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


def resume_point(cfg: RunConfig, run_dir: Path, extend: bool = False) -> Checkpoint | None:
    """The checkpoint a resumed run continues from, checked against the run's config and its metrics
    log; None if the run was stopped before its first checkpoint. It needs no model: the CLI asks
    before loading one, so a damaged run directory fails in seconds, not after a model load."""
    checkpoint = load_checkpoint(run_dir)
    if extend:
        checkpoint = extension_point(run_dir, checkpoint, cfg.fed.rounds)
    if checkpoint is not None:
        log = MetricsLog(run_dir / "metrics.jsonl")
        check_progress(checkpoint.progress, phases_of(cfg), cfg.fed.rounds, log, run_dir)
    return checkpoint


def run(
    setup: Setup,
    run_dir: Path,
    resume: bool = False,
    clients: Clients | None = None,
    extend: bool = False,
    checkpoint: Checkpoint | None = None,
) -> dict:
    """Run (or continue) every phase; returns the summary written to summary.json. `clients` trains
    the federated phase's rounds (a deployment's nodes); by default the simulation's LocalClients.
    `extend`: the config's fed.rounds grew; continue the federated phase from its last checkpoint to
    the new total, then run the baselines again for the new length. `checkpoint`: what
    `resume_point` gave, if the caller asked already."""
    cfg = setup.config
    log = MetricsLog(run_dir / "metrics.jsonl")
    if resume and checkpoint is None:
        checkpoint = resume_point(cfg, run_dir, extend)  # None again costs nothing: no checkpoint files
    if extend:
        save_config(run_dir, to_dict(cfg))
    done: list[str] = []
    print(banner(setup, run_dir, checkpoint is not None), flush=True)
    if checkpoint is None:
        if resume:
            log.truncate(0)  # interrupted before the first checkpoint: start over
        run_dir.mkdir(parents=True, exist_ok=True)
        start_console_log()
        save_config(run_dir, to_dict(cfg))
        if (cfg.data.path or cfg.data.name) and not cfg.data.eval_path and setup.heldout:
            save_heldout(run_dir, setup.heldout)  # the rows the run set aside from the user's data
        what = "preference pairs" if cfg.train.objective == "dpo" else "training examples"
        if clients is None:  # a deployment's clients hold their own data; the nodes report their sizes
            print(f"Clients ({cfg.fed.split} split of {len(setup.train_rows)} {what}):")
            print(client_table(setup.train_domains, setup.clients))
            if isinstance(setup.train_rows, LazyRows):
                print("(training rows are tokenized when a client first uses them: data.tokenize)")
        if setup.over_length:
            what = "dropped" if cfg.data.over_length == "drop" else "cut at the end"
            print(
                f"({setup.over_length} training rows longer than data.max_length={cfg.data.max_length} tokens: {what})"
            )
        if setup.dropped:
            print(
                f"({setup.dropped} training rows dropped: no response token left within "
                f"data.max_length={cfg.data.max_length})"
            )
        for name, counts in benchmark_overlap(setup).items():
            log.write({"type": "overlap", "benchmark": name, **counts})
            if counts["overlap"]:
                print(
                    f"warning: eval.benchmarks {name}: {counts['overlap']} of its {counts['rows']} scored rows "
                    f"are training rows of this run; its score is not a held-out score"
                )
        before = evaluate(setup, benchmark_dir(run_dir, "federated", 0))
        log.write({"type": "eval", "phase": "federated", "round": 0, **before})
        tqdm.write("[before training]  " + eval_text(before))
    else:
        progress = checkpoint.progress
        start_console_log()
        log.truncate(progress["metrics_lines"])
        done = list(progress["done"])
        print(
            f"Resuming {run_dir}: {progress['phase']} phase after round {progress['round']}; "
            f"finished phases: {', '.join(done) or 'none'}"
        )
    log.mirrors = tracking.mirrors(cfg, run_dir)
    try:
        if checkpoint is None:  # what was written before the mirrors could open (the run dir is new)
            for record in log.records():
                for mirror in log.mirrors:
                    mirror.write(record)
        for phase in phases_of(cfg):
            if phase in done:
                continue
            if checkpoint is not None and checkpoint.progress["phase"] == phase:
                resume_phase(setup, phase, run_dir, log, done, checkpoint, clients if phase == "federated" else None)
            else:
                run_phase(setup, phase, run_dir, log, done, clients=clients if phase == "federated" else None)
            done = done + [phase]
    finally:
        for mirror in log.mirrors:
            mirror.close()
    plot_run(log.records(), run_dir / "plots", run_title(run_dir, cfg))
    summary = summarize(log.records(), run_dir, cfg)
    return summary
