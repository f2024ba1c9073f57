"""Personalized models after the federation, each scored beside the global model.

The question of the paper's own-domain comparison: does a client end up better served by what the
federation gives it? Each client's held-out "own domain" is the domains of its training rows; its
accuracy there (`accuracy_own`) and over all domains (`accuracy_mean`) is measured for its
personalized model and for the global model:
- FedSA-LoRA (`fed.lora_aggregation: fedsa`): the shared A with the client's own B;
- any run with `fed.personalize_steps K`: the global model fine-tuned K local steps on the
  client's own rows (at the last round's learning rate), the usual personalization baseline.
Runs in the simulation, where the server can reach each client's state; a node's B stays on it.
"""

from __future__ import annotations

import numpy as np

from .algorithms import ClientTask, FedAvg
from .client import cosine_lr
from .data.lazy import client_rows
from .evaluation.heldout import evaluate
from .lora_aggregation.base import LOCAL


def own_accuracy(accuracy: dict[str, float], client_domains: list[set[str]]) -> float | None:
    """Mean over clients of the accuracy on the domains each client holds."""
    per_client = [
        np.mean([accuracy[d] for d in domains if d in accuracy])
        for domains in client_domains
        if any(d in accuracy for d in domains)
    ]
    return float(np.mean(per_client)) if per_client else None


def wanted(cfg, method) -> bool:
    return bool(method.keeps_b or cfg.fed.personalize_steps)


def personal_records(setup, clients, lora, state: dict, global_eval: dict, round_index: int) -> list[dict]:
    """One `personal` record per client: its personalized model's held-out scores and the global
    model's, on its own domains and on all. The model is left holding the global state."""
    from .models import load_trainable_state
    from .rounds import train_client

    cfg = setup.config
    method = lora.method
    records = []
    for k, partition in enumerate(clients.partitions):
        domains = [{setup.train_domains[i] for i in partition}]
        if method.keeps_b:
            kept = {key[len(LOCAL) :]: v for key, v in clients.state_of(k).items() if key.startswith(LOCAL)}
            personal, kind = method.client_start(state, setup.initial_state, kept), "own B"
            trained = {}
        else:
            steps = cfg.fed.personalize_steps
            lr = cosine_lr(cfg.fed.rounds - 1, cfg.fed.rounds, cfg.train.lr, cfg.train.min_lr)
            task = ClientTask(global_state=state, message={}, lr=lr, steps=steps)
            rows = client_rows(setup.train_rows, partition)
            update, _ = train_client(setup, FedAvg(), "personal", round_index, k, rows, task, {})
            personal, kind = update.weights, f"fine-tuned {steps} steps"
            trained = {"train_loss": update.metrics["loss"]}
        load_trainable_state(setup.model, personal)
        result = evaluate(setup)
        records.append(
            {
                "type": "personal",
                "phase": "federated",
                "round": round_index + 1,
                "client": k,
                "kind": kind,
                "loss": result["loss"],
                "accuracy": result["accuracy"],
                "accuracy_mean": result["accuracy_mean"],
                "accuracy_own": own_accuracy(result["accuracy"], domains),
                "global_accuracy_own": own_accuracy(global_eval.get("accuracy", {}), domains),
                **trained,
            }
        )
    load_trainable_state(setup.model, lora.global_model(state, setup.initial_state))
    return records


def summary(records: list[dict]) -> dict | None:
    """Means over clients of the personalized and the global model's scores (summary.json)."""
    personal = [r for r in records if r["type"] == "personal"]
    if not personal:
        return None

    def mean(key):
        values = [r[key] for r in personal if r.get(key) is not None]
        return float(np.mean(values)) if values else None

    return {
        "kind": personal[0]["kind"],
        "clients": len(personal),
        "personal": {
            "accuracy_own": mean("accuracy_own"),
            "accuracy_mean": mean("accuracy_mean"),
            "loss": mean("loss"),
        },
        "global": {"accuracy_own": mean("global_accuracy_own")},
    }
