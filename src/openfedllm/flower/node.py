"""The ClientApp: what runs on a SuperNode, next to the data it may not send anywhere.

A node trains with the simulation's own code (`rounds.train_client`) and the algorithm object
the config names; only the server's tensors and the round's settings come in, and only trainable
tensors and numbers go out (`transport.check_outgoing` runs on every reply before it leaves).

With `secagg.enabled`, a round is Flower's SecAgg+ protocol (`secagg.py`): `secaggplus_mod`
answers its key stages, and at the masked-vector stage this same handler trains and replies with
the move y_i - x and its weight, which the mod masks before anything leaves the node.

Which data a node holds comes from its node config (`flower-supernode --node-config "..."`):
    partition-id=I                 the client's id in the federation (0 .. fed.num_clients-1)
    data-path=FILE [data-format=F] the node's own file (any layout `openfedllm sft` reads); its
                                   training share is this client's data
    num-partitions=N               development instead: partition I of the config's own data,
                                   split exactly as the simulation splits it (N = fed.num_clients)
    state-dir=DIR                  where the client state (SCAFFOLD's c_i) lives between rounds
    threads=T                      torch CPU threads of this node
    warm=false                     train inside each ClientApp process instead of the warm worker

Flower starts a fresh ClientApp process for every message. Importing torch and loading the model
there would cost seconds per round, so the ClientApp only converts the message and hands it to
the node's warm worker (`worker.py`: one long-lived process per node, holding the model and the
tokenized rows, reached over a Unix socket on the node itself), then checks and sends the reply.

What lives with a client between rounds (SCAFFOLD's c_i) is kept on the node's disk, one file per
round the client trained in, so it survives a restart of the server or of the node, and a resumed
run picks the state as of the round it continues from. So are the merges FLoRA and FedEx-LoRA fold
into the frozen weights (`lora_aggregation.merges`), from which the node rebuilds W as of each round.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from ..errors import UserError

if TYPE_CHECKING:
    from ..algorithms import Algorithm
    from ..lora_aggregation.merges import FrozenBase
    from ..setup import Setup

_SETUPS: dict[str, NodeData] = {}  # one prepared node per (config, node config) in this process


@dataclass
class NodeData:
    setup: Setup  # the node's model, tokenizer and tokenized rows
    client_id: int
    rows: list  # this client's training rows
    algorithm: Algorithm  # the configured algorithm; the node calls only its client side
    frozen: FrozenBase = field(default_factory=lambda: _frozen_base())  # FLoRA / FedEx-LoRA: merges in W


def _frozen_base() -> FrozenBase:
    from ..lora_aggregation.merges import FrozenBase  # torch: the worker's, not the ClientApp's

    return FrozenBase()


def node_settings(node_config) -> dict:
    """The node config, checked: partition-id always, and either data-path or num-partitions."""
    known = {"partition-id", "num-partitions", "data-path", "data-format", "state-dir", "threads", "warm"}
    unknown = sorted(set(node_config) - known)
    if unknown:
        raise UserError(f"node config: unknown key {unknown[0]!r}; valid: {', '.join(sorted(known))}")
    if "partition-id" not in node_config:
        raise UserError("node config: partition-id=I (this client's id) is required")
    if "data-path" not in node_config and "num-partitions" not in node_config:
        raise UserError(
            "node config: give data-path=FILE (this node's data) or num-partitions=N "
            "(development: partition-id of the config's data)"
        )
    return dict(node_config)


def node_run_config(config_text: str, node: dict):
    """The run's config as this node trains it: the server's, with the node's own data."""
    from .. import config as cfg_mod

    config = cfg_mod.build(yaml.safe_load(config_text))
    config.baselines.local = config.baselines.centralized = False
    if node.get("threads"):
        config.train.threads = int(node["threads"])
    if "data-path" in node:
        # The whole file is this client's: a federation of one inside the node.
        config.data.path, config.data.name = str(node["data-path"]), ""
        config.data.format = str(node.get("data-format", "auto"))
        # fed.rank_by_size is resolved by the server, which knows every size, into fed.client_ranks
        config.fed.rank_by_size = []
        if config.fed.client_ranks:  # the federation of one keeps this client's rank
            ranks, client = config.fed.client_ranks, int(node["partition-id"])
            if not 0 <= client < len(ranks):
                raise UserError(f"node config: partition-id={client}, but fed.client_ranks has {len(ranks)} ranks")
            config.fed.client_ranks = [ranks[client]]
        config.fed.num_clients = config.fed.clients_per_round = 1
        config.fed.split = "iid"
        # attack: simulates malicious clients on partitions of the run's data; a data owner's node
        # trains honestly (docs/privacy_robustness.md)
        config.attack.fraction = 0.0
        config.baselines.local_client = 0
    elif int(node["num-partitions"]) != config.fed.num_clients:
        raise UserError(
            f"node config: num-partitions={node['num-partitions']} but the run has "
            f"fed.num_clients={config.fed.num_clients}"
        )
    return config


def node_data(config_text: str, node_config) -> NodeData:
    """The node's prepared model and rows, built once per process for the same run config.

    Nodes that hold partitions of the same data share one prepared model: a Ray actor of the
    Simulation Engine serves whichever virtual node is sampled, and loads the model only once."""
    node = node_settings(node_config)
    client_id = int(node["partition-id"])
    config = node_run_config(config_text, node)
    if "data-path" not in node and not 0 <= client_id < config.fed.num_clients:
        raise UserError(f"node config: partition-id={client_id} is not in [0, {config.fed.num_clients})")
    shared = {k: v for k, v in node.items() if k != "partition-id" or "data-path" in node}
    key = hashlib.sha256((config_text + repr(sorted(shared.items()))).encode()).hexdigest()
    if key not in _SETUPS:
        from ..algorithms import build_algorithm
        from ..logs import quiet_libraries
        from ..setup import prepare

        quiet_libraries()  # a Ray actor (Simulation Engine) has not been through the CLI
        setup = prepare(config, heldout=False)  # a node trains; the server evaluates
        _SETUPS.clear()  # one run per process: let the previous model go
        _SETUPS[key] = NodeData(setup, client_id, [], build_algorithm(config.fed))
    prepared = _SETUPS[key]
    setup = prepared.setup
    from ..data.lazy import client_rows

    rows = client_rows(setup.train_rows, setup.clients[0 if "data-path" in node else client_id])
    if not rows:
        raise UserError(f"node {client_id}: no training rows in its data")
    return NodeData(setup, client_id, rows, prepared.algorithm, prepared.frozen)


def state_dir(node_config, run_uid: str) -> Path:
    base = node_config.get("state-dir") or Path.home() / ".cache" / "openfedllm" / "nodes"
    if not re.fullmatch(r"[A-Za-z0-9_-]+", run_uid):
        raise ValueError(f"bad run id {run_uid!r}")
    return Path(str(base)).expanduser() / f"client-{node_config['partition-id']}" / run_uid


def query(content: dict, node_config) -> dict:
    """Who this node is and how many training examples it holds (the aggregation weight)."""
    node = node_data(content["config"]["config"], node_config)
    return {"metrics": {"client-id": node.client_id, "num-examples": len(node.rows)}}


def train(content: dict, node_config) -> dict:
    """One round of local training on this node's own rows; numpy arrays in, numpy arrays out."""
    from ..algorithms import ClientTask
    from ..compression import Wire
    from ..models import trainable_state
    from ..rounds import lora_method, train_client, wire_rank

    settings = content["config"]
    node = node_data(settings["config"], node_config)
    if int(settings["client-id"]) != node.client_id:
        raise ValueError(f"this node is client {node.client_id}, the message is for {settings['client-id']}")
    phase = str(settings["phase"])
    like = lora_method(node.setup.config, phase).shared(trainable_state(node.setup.model))
    wire = Wire.of(node.setup.config, phase)
    rank = wire_rank(node.setup.config, phase, node.client_id)  # its own rank: its bytes follow it
    task = ClientTask(
        global_state=wire.receive_state(content["arrays"], like, rank),
        message=wire.receive_state(content.get("message", {}), like, rank),
        lr=float(settings["lr"]),
        steps=int(settings["steps"]),
    )
    r = int(settings["round"])
    from ..client_state import load_client_state, save_client_state

    folder = state_dir(node_config, str(settings["run-uid"]))
    if "merged-rounds" in settings:  # FLoRA / FedEx-LoRA: W as the server's, merges kept beside the client state
        merges = content.get("merges", {})
        node.frozen.bring(node.setup.model, folder / "merges", int(settings["merged-rounds"]), merges)
    own_state = load_client_state(folder, r)
    update, own_state = train_client(node.setup, node.algorithm, phase, r, node.client_id, node.rows, task, own_state)
    arrays, extras, own_state = wire.send_update(update.weights, task.global_state, update.extras, own_state, rank)
    if own_state:
        save_client_state(folder, r, own_state)
    reply = {
        "arrays": arrays,
        "metrics": {**update.metrics, "num-examples": update.num_examples, "client-id": node.client_id},
    }
    if extras:
        reply["extras"] = extras
    return reply


def reply_layout(settings: dict) -> dict | int:
    """What this node's reply may carry: the codec's arrays for the trainable parameters' size (which
    the server states, as it sent them encoded), read from the run's config without torch."""
    from ..compression import reply_layout as layout

    comm = (yaml.safe_load(str(settings["config"])) or {}).get("comm") or {}
    upload, download = comm.get("upload", "none"), comm.get("download", "none")
    exact = upload == download == "none"
    fraction, size = float(comm.get("topk_fraction", 0.1)), int(settings["num-values"])
    return layout(upload, fraction, size, int(settings["num-segments"]), exact)


HANDLERS = {"query": query, "train": train}


def plain(content) -> dict:
    """A received RecordDict as plain Python: arrays as numpy, configs and metrics as dicts."""
    from flwr.app import ArrayRecord

    from .transport import record_arrays

    return {name: record_arrays(r) if isinstance(r, ArrayRecord) else dict(r) for name, r in content.items()}


def record_dict(reply: dict):
    from flwr.app import MetricRecord, RecordDict

    from .transport import arrays_record

    return RecordDict(
        {name: MetricRecord(value) if name == "metrics" else arrays_record(value) for name, value in reply.items()}
    )


def _handle(kind: str):
    def handler(msg, context):
        from flwr.app import Message

        from .secagg import fit_reply, fit_task, is_secure
        from .transport import check_outgoing
        from .worker import call

        secure = is_secure(msg.content)  # SecAgg+'s masked-vector stage: a FitIns, answered with a FitRes
        content = fit_task(msg.content) if secure else plain(msg.content)
        request = {"kind": kind, "content": content, "node_config": dict(context.node_config)}
        warm_worker = str(context.node_config.get("warm", "true")).lower() not in ("0", "false", "no")
        # Under the Simulation Engine each ClientApp lives in a long-lived Ray actor: already warm.
        if context.run_config.get("simulation") or not warm_worker:
            reply = HANDLERS[kind](content, request["node_config"])
        else:
            reply = call(request, handlers="openfedllm.flower.node:HANDLERS")
        out = record_dict(reply)
        # The privacy contract: nothing but the trainable tensors the server sent, and numbers, leaves.
        if secure or kind != "train":
            check_outgoing(out, sum(a.size for a in content.get("arrays", {}).values()))
        else:
            check_outgoing(out, reply_layout(content["config"]))
        if secure:  # the move and the weight, for secaggplus_mod to mask
            out = fit_reply(content, reply)
        return Message(out, reply_to=msg)

    handler.__name__ = kind
    return handler


def _make_app():
    from flwr.clientapp import ClientApp

    from .secagg import secure_mod

    app = ClientApp()
    app.train(mods=[secure_mod])(_handle("train"))
    app.query()(_handle("query"))
    return app


app = _make_app()
