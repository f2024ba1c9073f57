"""Secure aggregation on a federation with Flower's own SecAgg+: the server learns the weighted sum
of the clients' moves y_i - x, never one client's.

The protocol and its cryptography are Flower's (SecAgg+, Bell et al., CCS 2020, "Secure
Single-Server Aggregation with (Poly)Logarithmic Overhead"): `SecAggPlusWorkflow` drives its four
stages from the server (setup, share keys, collect masked vectors, unmask) and `secaggplus_mod`
answers them on each node. Nothing here touches a key, a share or a mask. What this module adds is
the seam to the round loop:

- Server: `secure_round` runs the workflow for one round through `ProtocolGrid` (our grid: the
  round timeout, the payload check on every reply, messages.jsonl) with a legacy Strategy that
  only hands out the round's FitIns and keeps what `aggregate_fit` is given, which is the
  unmasked weighted mean. The round loop then steps from one `ClientUpdate` holding x + that mean
  (`aggregation_inputs`), as it would from the clients' own updates.
- Node: `fit_reply` turns the node's update into the FitRes the mod masks: the move y_i - x
  (centred on zero, so a small clipping range keeps the quantization fine) and the client's
  aggregation weight (its example count; 1 under local DP, where every client counts the same).

What a reply holds in each stage is checked on the server (`check_reply`): protocol keys only,
the masked vector the size of the shared tensors, numbers in the metrics.

Flower's quantization: each coordinate of r_i * move_i (r_i = weight_i / max weight, so r_i <= 1)
is clipped to [-c, c] and stochastically rounded to Q levels, so each client adds less than one
step 2c/Q; the mean divides the sum of k clients by sum_i r_i, hence its error per coordinate is
below k / (sum_i r_i) * 2c/Q (2c/Q when the weights are equal). A coordinate past c is clipped:
each node counts them (`secagg_clipped` on its client record) and the server warns.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from ..errors import UserError

TRACE_ENV = "OPENFEDLLM_TRACE_SECAGG"  # tests: a folder where each side writes what it sent / received
DROP_ENV = "OPENFEDLLM_SECAGG_DROP"  # tests: "CLIENT:ROUND": that node fails at the masked-vector stage
MODULUS = 2**32  # Flower's default mask range; sums of k quantized values need k * Q < 2^32
# what each stage's reply may hold in its protocol record (flwr.common.secure_aggregation.Key values)
STAGE_KEYS = {
    "setup": {"pk1", "pk2"},
    "share_keys": {"dsts", "ctxts"},
    "collect_masked_vectors": {"masked_params"},
    "unmask": {"nids", "shares"},
}


def shares(value: float) -> int | float:
    """Flower's convention: a float is a share of the round's clients, an integer a count."""
    return float(value) if value <= 1 else int(value)


def workflow(config, max_weight: float):
    """Flower's SecAgg+ workflow for one round, from the `secagg:` section."""
    from flwr.server.workflow import SecAggPlusWorkflow

    s = config.secagg
    return SecAggPlusWorkflow(
        num_shares=shares(s.num_shares),
        reconstruction_threshold=shares(s.reconstruction_threshold),
        max_weight=max_weight,
        clipping_range=s.clipping_range,
        quantization_range=s.quantization_range,
        modulus_range=MODULUS,
        timeout=config.fed.round_timeout,
    )


def check(config) -> None:
    """One line for a combination SecAgg+ cannot serve (called when the config is read)."""
    from ..combine import dp_on
    from ..lora_aggregation import LORA_AGGREGATIONS

    fed, s = config.fed, config.secagg
    why = "the server sees only the sum of the moves"
    if fed.algorithm == "scaffold":
        raise UserError(f"secagg: not with fed.algorithm scaffold ({why}; its c_i changes would travel in the clear)")
    if fed.aggregator != "mean" or fed.norm_bound:
        raise UserError(f"secagg: not with fed.aggregator {fed.aggregator} / fed.norm_bound ({why}; they need each)")
    if dp_on(config) and config.dp.mode == "central":
        raise UserError(f"secagg: not with dp.mode central ({why}, and it clips each); use dp.mode local")
    lora = LORA_AGGREGATIONS[fed.lora_aggregation]
    if lora.server_algorithms is not None or lora.merges_into_base:
        raise UserError(
            f"secagg: not with fed.lora_aggregation {fed.lora_aggregation}, which combines each client's "
            "B_i A_i; use naive, ffa or fedsa"
        )
    if fed.sampled() < 2:
        raise UserError("secagg: needs at least 2 clients per round (a sum of one is that client's update)")
    if (fed.sampled() + 1) * s.quantization_range >= MODULUS:
        raise UserError(
            f"secagg.quantization_range: {fed.sampled()} clients x {s.quantization_range} overflow the 2^32 "
            "mask range; lower it"
        )
    try:
        workflow(config, 1.0)  # Flower's own checks of the shares and the threshold
    except (ValueError, TypeError) as exc:
        raise UserError(f"secagg: {exc}") from None


# --- the server -------------------------------------------------------------------------------


@dataclass
class NodeProxy:
    """What the legacy Strategy API calls a ClientProxy: here only which node and client it is."""

    node_id: int
    client_id: int


def _collector(fitins: list):
    """The legacy Strategy the workflow asks for the round's FitIns and hands the unmasked mean to."""
    from flwr.server.strategy import Strategy

    class Collect(Strategy):
        def __init__(self) -> None:
            self.results: list = []
            self.failures: list = []

        def initialize_parameters(self, client_manager):
            return None

        def configure_fit(self, server_round, parameters, client_manager):
            return fitins

        def aggregate_fit(self, server_round, results, failures):
            self.results, self.failures = results, failures
            return (results[0][1].parameters if results else None), {}

        def configure_evaluate(self, server_round, parameters, client_manager):
            return []

        def aggregate_evaluate(self, server_round, results, failures):
            return None, {}

        def evaluate(self, server_round, parameters):
            return None

    return Collect()


@dataclass
class ProtocolGrid:
    """The grid the workflow talks through: the deployment's own exchange (its polling, the round
    timeout, nodes that leave), every reply checked and written to messages.jsonl."""

    clients: object  # server.NodeClients
    round_index: int
    client_of: dict[int, int]  # node id -> client id
    masked: dict[int, Any] = field(default_factory=dict)  # node id -> its masked-vector reply
    errors: dict[int, str] = field(default_factory=dict)  # node id -> why it dropped out
    sent: dict[int, int] = field(default_factory=dict)  # node id -> payload bytes sent to it, all stages
    received: dict[int, int] = field(default_factory=dict)  # node id -> payload bytes from it, all stages
    # the same, as Flower transfers them (transport.message_bytes: payload and framing)
    wire_sent: dict[int, int] = field(default_factory=dict)
    wire_received: dict[int, int] = field(default_factory=dict)

    def send_and_receive(self, messages, *, timeout=None):
        from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

        from .server import error_reason
        from .transport import content_bytes, message_bytes

        messages = list(messages)
        if not messages:
            return []
        stage = str(messages[0].content.config_records[RECORD_KEY_CONFIGS][Key.STAGE])
        for message in messages:
            node = message.metadata.dst_node_id
            self.sent[node] = self.sent.get(node, 0) + content_bytes(message.content)
            self.wire_sent[node] = self.wire_sent.get(node, 0) + message_bytes(message)
        start = time.perf_counter()
        replies = self.clients._exchange(messages, timeout or self.clients.config.fed.round_timeout)
        took = round(time.perf_counter() - start, 3)  # the stage's exchange, all nodes (benchmarks/secagg_round.py)
        for node_id, reply in replies.items():
            where = {"secagg_stage": stage, "stage_seconds": took}
            self.clients._record(self.round_index + 1, self.client_of.get(node_id), reply, **where)
            if reply.has_error():
                self.errors[node_id] = f"SecAgg+ {stage}: {error_reason(reply)}"
                continue
            self.received[node_id] = self.received.get(node_id, 0) + content_bytes(reply.content)
            self.wire_received[node_id] = self.wire_received.get(node_id, 0) + message_bytes(reply)
            check_reply(reply.content, stage, self.clients.num_values)
            if stage == "collect_masked_vectors":
                self.masked[node_id] = reply
                trace(f"received-round{self.round_index + 1}-client{self.client_of[node_id]}", masked_vector(reply))
        for message in messages:
            if message.metadata.dst_node_id not in replies:
                self.errors.setdefault(message.metadata.dst_node_id, f"SecAgg+ {stage}: no reply")
        return list(replies.values())


def secure_round(clients, round_index: int, contents: dict, client_of: dict[int, int], global_state: dict):
    """One round under SecAgg+: (each replying client's update without tensors, the one update
    holding x + the unmasked weighted mean of the moves, {node id: why it was lost})."""
    import torch
    from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
    from flwr.common import FitIns, Parameters, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server import ServerConfig
    from flwr.server.compat import LegacyContext

    from ..algorithms import ClientUpdate
    from ..algorithms.base import apply_step
    from ..combine import dp_on
    from .transport import numbers, unpack

    config = clients.config
    fitins = []
    for node_id, content in contents.items():
        packed = content["arrays"]["trainable"].numpy()
        settings = dict(content["config"])
        fitins.append((NodeProxy(node_id, client_of[node_id]), FitIns(ndarrays_to_parameters([packed]), settings)))
    local_dp = dp_on(config) and config.dp.mode == "local"
    weight_of = {c: 1 if local_dp else clients.examples[c] for c in client_of.values()}
    weights = list(weight_of.values())
    strategy = _collector(fitins)
    # the workflow reads the round number and (for configure_fit, which ignores them) the parameters
    state = RecordDict({"config": ConfigRecord({"current_round": round_index + 1}), "parameters": ArrayRecord()})
    context = LegacyContext(
        Context(run_id=0, node_id=0, node_config={}, state=state, run_config={}),
        config=ServerConfig(num_rounds=config.fed.rounds),
        strategy=strategy,
    )
    grid = ProtocolGrid(clients, round_index, client_of)
    workflow(config, float(max(weights)))(grid, context)
    lost = dict(grid.errors)
    if not strategy.results:  # the workflow stopped: too few nodes stayed for the reconstruction threshold
        halted = "SecAgg+ halted: too few of the round's nodes stayed for secagg.reconstruction_threshold"
        return [], None, {n: lost.get(n, halted) for n in client_of}
    parameters: Parameters = strategy.results[0][1].parameters
    mean = unpack(np.asarray(parameters_to_ndarrays(parameters)[0], dtype=np.float64), global_state)
    trace(f"aggregate-round{round_index + 1}", np.concatenate([mean[k].ravel() for k in sorted(mean)]))
    delta = {k: torch.from_numpy(np.array(v)) for k, v in mean.items()}
    updates, total, clipped = [], 0, 0
    order = list(client_of.values())  # the sampled order, as a plain round logs them (not arrival order)
    for proxy, fitres in sorted(strategy.results, key=lambda result: order.index(result[0].client_id)):
        reply = grid.masked[proxy.node_id]
        metrics = numbers(reply.content["metrics"])
        metrics.pop("num-examples", None)
        metrics.pop("client-id", None)
        clipped += int(metrics.get("secagg_clipped", 0))
        if fitres.num_examples != weight_of[proxy.client_id]:  # the weight it scaled its masked move by
            raise ValueError(
                f"SecAgg+: client {proxy.client_id} weighed its move {fitres.num_examples}, "
                f"not the {weight_of[proxy.client_id]} it reported"
            )
        total += fitres.num_examples
        update = ClientUpdate(proxy.client_id, {}, clients.examples[proxy.client_id], metrics=metrics)
        update.bytes_down, update.bytes_up = grid.sent[proxy.node_id], grid.received[proxy.node_id]
        update.wire_down, update.wire_up = grid.wire_sent[proxy.node_id], grid.wire_received[proxy.node_id]
        updates.append(update)
        lost.pop(proxy.node_id, None)
    if clipped:
        print(
            f"[federated] round {round_index + 1}: secagg: {clipped} coordinates of the moves were past "
            f"secagg.clipping_range={config.secagg.clipping_range:g} and were clipped; raise it",
            flush=True,
        )
    summed = ClientUpdate(-1, apply_step(global_state, delta), total)
    return updates, summed, lost


def masked_vector(reply) -> np.ndarray:
    """The masked integer vector of a collect-masked-vectors reply (Flower prepends the weight factor)."""
    from flwr.common import bytes_to_ndarray
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    masked = cast(list[bytes], reply.content.config_records[RECORD_KEY_CONFIGS]["masked_params"])
    arrays = [bytes_to_ndarray(b) for b in masked]
    return arrays[-1]


def check_reply(content, stage: str, num_values: int) -> None:
    """Raise unless a reply holds what its stage allows: the protocol's keys (public keys, encrypted
    shares, node ids, the masked vector of exactly the shared tensors' size), and, with the masked
    vector, the node's numbers (transport.check_outgoing's rule) and its FitRes weight."""
    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
    from flwr.common import bytes_to_ndarray
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    from .transport import check_outgoing

    allowed = {RECORD_KEY_CONFIGS}
    if stage == "collect_masked_vectors":
        allowed |= {"metrics", "fitres.metrics", "fitres.num_examples", "fitres.parameters", "fitres.status"}
    extra = sorted(set(content) - allowed)
    if extra:
        raise ValueError(f"SecAgg+ {stage}: a reply holds record {extra[0]!r}")
    protocol = content[RECORD_KEY_CONFIGS]
    if not isinstance(protocol, ConfigRecord) or set(protocol) - STAGE_KEYS[stage]:
        raise ValueError(f"SecAgg+ {stage}: unexpected protocol keys {sorted(set(protocol) - STAGE_KEYS[stage])}")
    for key, value in protocol.items():
        items = value if isinstance(value, list) else [value]
        if not all(type(v) in (bytes, int) for v in items):
            raise ValueError(f"SecAgg+ {stage}: {key!r} holds something other than bytes and integers")
    if stage != "collect_masked_vectors":
        return
    arrays = [bytes_to_ndarray(b) for b in cast(list[bytes], protocol["masked_params"])]
    if len(arrays) != 2 or arrays[1].shape != (num_values,) or not all(a.dtype.kind in "iu" for a in arrays):
        raise ValueError(f"SecAgg+: a masked reply is not one integer vector of the {num_values} shared values")
    check_outgoing(RecordDict({"metrics": content["metrics"]}), num_values)
    params = content["fitres.parameters"]
    if not isinstance(params, ArrayRecord) or len(params):
        raise ValueError("SecAgg+: a reply carries unmasked arrays")
    if dict(content["fitres.metrics"]):
        raise ValueError("SecAgg+: FitRes metrics travel in the checked metrics record only")
    weight = content["fitres.num_examples"]
    if not isinstance(weight, MetricRecord) or set(weight) != {"num_examples"}:
        raise ValueError("SecAgg+: the FitRes weight record holds more than the weight")
    status = content["fitres.status"]
    if dict(status) != {"code": 0, "message": ""}:
        raise ValueError("SecAgg+: a FitRes status other than OK with no message")


def trace(name: str, values: np.ndarray) -> None:
    """Tests: keep what one side saw (TRACE_ENV's folder); unset, as always outside tests, nothing."""
    folder = os.environ.get(TRACE_ENV)
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        np.save(Path(folder) / f"{name}.npy", values)


# --- the node ---------------------------------------------------------------------------------


def is_secure(content) -> bool:
    """Whether a received message is a SecAgg+ stage (its protocol record is there)."""
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    return RECORD_KEY_CONFIGS in content.config_records


def secure_mod(msg, context, call_next):
    """Flower's secaggplus_mod for the SecAgg+ messages of a round; a plain round passes through."""
    if not is_secure(msg.content):
        return call_next(msg, context)
    from flwr.client.mod import secaggplus_mod
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

    stage = msg.content.config_records[RECORD_KEY_CONFIGS].get(Key.STAGE)
    here = f"{context.node_config.get('partition-id')}:{msg.metadata.group_id}"  # client:round
    if stage == "collect_masked_vectors" and os.environ.get(DROP_ENV) == here:
        raise RuntimeError("dropped out (test: OPENFEDLLM_SECAGG_DROP)")
    return secaggplus_mod(msg, context, call_next)


def fit_task(content) -> dict:
    """A FitIns-shaped SecAgg+ message as the plain content the node's train handler takes."""
    from flwr.common import parameters_to_ndarrays
    from flwr.compat.common.recorddict_compat import recorddict_to_fitins

    fitins = recorddict_to_fitins(content, keep_input=True)
    return {"arrays": {"trainable": parameters_to_ndarrays(fitins.parameters)[0]}, "config": dict(fitins.config)}


def fit_reply(task: dict, reply: dict):
    """The node's reply as the FitRes secaggplus_mod masks: the move y_i - x and the weight; the
    numbers stay in their own record (FitRes metrics take no per-step lists)."""
    import yaml
    from flwr.app import MetricRecord
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
    from flwr.compat.common.recorddict_compat import fitres_to_recorddict

    from .transport import pack

    # The resolved config as plain YAML: the config module imports torch, which a ClientApp process
    # (one per message) must not pay for. Local DP on = combine.dp_on with dp.mode local.
    raw = yaml.safe_load(task["config"]["config"])
    dp = raw["dp"]
    local_dp = (dp["noise_multiplier"] > 0 or dp["target_epsilon"] > 0) and dp["mode"] == "local"
    x = np.asarray(task["arrays"]["trainable"])
    move = (pack(reply["arrays"]).astype(np.float64) - x).astype(np.float32)  # y_i as check_outgoing saw it
    metrics = dict(reply["metrics"])
    weight = 1 if local_dp else int(metrics["num-examples"])
    metrics["secagg_clipped"] = int((np.abs(move) > float(raw["secagg"]["clipping_range"])).sum())
    where = f"round{int(task['config']['round']) + 1}-client{metrics['client-id']}"
    trace(f"x-{where}", x)
    trace(f"sent-{where}", move)
    trace(f"weight-{where}", np.array([weight]))
    content = fitres_to_recorddict(FitRes(Status(Code.OK, ""), ndarrays_to_parameters([move]), weight, {}), False)
    content["metrics"] = MetricRecord(metrics)
    return content
