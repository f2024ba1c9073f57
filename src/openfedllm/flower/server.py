"""The ServerApp: the rounds of `rounds.run`, with the sampled clients training on their own nodes.

`rounds.run` drives the run exactly as on one machine (sampling, the algorithm object's
aggregate, evaluation, metrics.jsonl, plots, the adapter, checkpoints and resume); only the
round's training goes through `NodeClients`, which sends each sampled client the global tensors
and the round's settings and waits for the replies. A round completes with the clients that
replied within fed.round_timeout if at least fed.min_clients did; the others are logged as lost.

The run config (`flwr run src/openfedllm/flower/app CONN --run-config ...`, or what
`openfedllm sft --federation` sends):
    config-file   a YAML recipe on the server (as `openfedllm sft --config`)
    config-text   the resolved config itself, as YAML (what `openfedllm sft --federation` sends)
    overrides     "section.key=value ..." applied on top
    output-dir    the run directory (default runs/sft-DATE-TIME)
    resume        true: continue output-dir from its last checkpoint
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from ..errors import UserError
from .polling import Backoff
from .transport import arrays_record, check_outgoing, content_bytes, describe, message_bytes, numbers

if TYPE_CHECKING:
    from flwr.app import Message, RecordDict

    from ..algorithms import Algorithm, ClientTask, ClientUpdate
    from ..lora_aggregation.merges import MergeLog

# How often the server asks the SuperLink for replies (Flower's own loop waits 3 s): 0.1 s after
# sending and after each reply, growing to 0.5 s while none comes (polling.py: each ask costs the
# SuperLink CPU that, on one machine, the nodes' training is using); and which nodes are still
# there, every 2 s.
POLL_SECONDS, POLL_MAX_SECONDS, LIVENESS_SECONDS = 0.1, 0.5, 2.0


WAITING_EVERY = 10.0  # seconds between "waiting for nodes" lines at the start


class NodeClients:
    """The clients of a deployment: one SuperNode each, found and counted when the run starts."""

    def __init__(self, grid, setup, run_dir: Path, run_uid: str):
        from ..config import to_dict
        from ..models import trainable_state
        from ..rundir import MetricsLog

        self.grid, self.setup, self.run_uid = grid, setup, run_uid
        self.config = setup.config
        self.config_text = yaml.safe_dump(to_dict(self.config), sort_keys=False)
        from ..rounds import lora_method

        # what crosses the network: the shared tensors (FedSA-LoRA: A alone; FFA-LoRA: B alone)
        method = lora_method(self.config, "federated")
        self.like = method.shared(trainable_state(setup.model))
        self.merging = method.merges_into_base  # FLoRA, FedEx-LoRA: the nodes' W follows the server's
        self.num_values = sum(t.numel() for t in self.like.values())
        from ..compression import Wire

        self.wire = Wire.of(self.config)  # how the tensors travel (comm.upload / comm.download)
        self.log = MetricsLog(run_dir / "metrics.jsonl")
        self.audit = run_dir / "messages.jsonl"
        self.node_of: dict[int, int] = {}  # client id -> SuperNode id
        self.examples: dict[int, int] = {}  # client id -> its training examples (the aggregation weight)
        self.secure_sum: ClientUpdate | None = None  # SecAgg+: the round's one update, x + the unmasked mean
        self.last_sent: dict[int, Message] = {}  # node id -> the last message sent to it (for its wire bytes)

    # --- what travels -----------------------------------------------------------------------------

    def rank_of(self, client_id: int) -> int | None:
        """The rank the client's tensors travel at (fed.client_ranks), None for the whole adapter."""
        from ..rounds import wire_rank

        return wire_rank(self.config, "federated", client_id)

    def sizes_at(self, rank: int | None) -> tuple[int, int]:
        """(values, int8 segments) of what a client of this rank sends."""
        from ..compression import narrow, segments

        sent = narrow(self.like, rank)
        return sum(t.numel() for t in sent.values()), len(segments(sent, self.config.comm.int8_scales))

    def layout_at(self, rank: int | None) -> dict:
        """What a reply of a client of this rank may hold (transport.check_outgoing)."""
        from ..compression import reply_layout

        comm = self.config.comm
        return reply_layout(comm.upload, comm.topk_fraction, *self.sizes_at(rank), self.wire.exact)

    # --- sending and receiving ---------------------------------------------------------------

    def _send(self, contents: dict[int, RecordDict], message_type: str, timeout: float) -> dict[int, Message]:
        """Send each node its content; the replies that arrive within `timeout` seconds, by node id."""
        from flwr.app import Message

        messages = [Message(c, dst_node_id=n, message_type=message_type) for n, c in contents.items()]
        self.last_sent = {m.metadata.dst_node_id: m for m in messages}
        return self._exchange(messages, timeout)

    def _exchange(self, messages: list[Message], timeout: float) -> dict[int, Message]:
        """Push the messages; the replies that arrive within `timeout` seconds, by node id. A node
        that leaves the federation meanwhile is given up within LIVENESS_SECONDS."""
        node_of_message = [m.metadata.dst_node_id for m in messages]
        ids = dict(zip(self.grid.push_messages(messages), node_of_message))  # message id -> node id
        pending = {m for m in ids if m}
        replies: dict[int, Message] = {}
        deadline = time.monotonic() + timeout
        checked = time.monotonic()
        waits = Backoff(POLL_SECONDS, POLL_MAX_SECONDS)
        while pending and time.monotonic() < deadline:
            for reply in self.grid.pull_messages(list(pending)):
                mid = reply.metadata.reply_to_message_id
                if mid in pending:
                    pending.discard(mid)
                    replies[ids[mid]] = reply
                    waits.reset()
            if pending:
                if time.monotonic() - checked >= LIVENESS_SECONDS:
                    online = set(self.grid.get_node_ids())
                    pending = {m for m in pending if ids[m] in online}
                    checked = time.monotonic()
                time.sleep(min(waits.next(), max(deadline - time.monotonic(), 0)))
        return replies

    def _record(self, round_index: int, client_id, reply, **extra) -> None:
        with self.audit.open("a") as f:
            f.write(
                json.dumps(
                    {
                        "round": round_index,
                        "client": client_id,
                        "node": reply.metadata.src_node_id,
                        "type": reply.metadata.message_type,
                        **extra,
                        **describe(reply),
                    }
                )
                + "\n"
            )

    # --- the run's start: who is there ---------------------------------------------------------

    def connect(self) -> None:
        """Wait until a node answers for every client 0 .. fed.num_clients-1, asking each new node
        which client it is and how much it holds."""
        fed = self.config.fed
        start = time.monotonic()
        said = -WAITING_EVERY  # say what it waits for at once, then every WAITING_EVERY seconds
        while True:
            self._rediscover()
            missing = [c for c in range(fed.num_clients) if c not in self.node_of]
            if not missing:
                break
            waited = time.monotonic() - start
            # Said before giving up too: a first query that outlasts the timeout (nodes loading the
            # model on a busy machine) still leaves the line naming who answered and who did not.
            if waited - said >= WAITING_EVERY:
                said = waited
                print(
                    f"Waiting for nodes: {len(self.node_of)} of {fed.num_clients} connected (missing client "
                    f"{', '.join(map(str, missing[:5]))}{' ...' if len(missing) > 5 else ''}); "
                    f"{waited:.0f} of up to {fed.connect_timeout:g} s (fed.connect_timeout)",
                    flush=True,
                )
            if waited > fed.connect_timeout:
                raise UserError(
                    f"only {len(self.node_of)} of fed.num_clients={fed.num_clients} nodes connected "
                    f"within fed.connect_timeout={fed.connect_timeout:g} s (missing: client {missing[0]})"
                )
            time.sleep(0.5)
        if fed.rank_by_size and not fed.client_ranks:  # the nodes train at the ranks their sizes give
            from ..config import to_dict
            from ..lora_aggregation import ranks_by_size

            fed.client_ranks = ranks_by_size(fed.rank_by_size, self.sizes())
            self.config_text = yaml.safe_dump(to_dict(self.config), sort_keys=False)
            print(f"fed.rank_by_size: client ranks {fed.client_ranks} (by training rows)", flush=True)
        print(
            f"Federation: {len(self.node_of)} nodes; training examples per client: "
            + ", ".join(f"{c}: {self.examples[c]}" for c in sorted(self.examples)),
            flush=True,
        )

    def _query(self, node_ids: list[int]) -> None:
        from flwr.app import ConfigRecord, RecordDict
        from flwr.common.constant import ErrorCode

        content = {n: RecordDict({"config": ConfigRecord({"config": self.config_text})}) for n in node_ids}
        replies = self._send(content, "query", self.config.fed.round_timeout)
        for node_id, reply in replies.items():
            if reply.has_error() and reply.error.code == ErrorCode.NODE_UNAVAILABLE:
                continue  # a node the SuperLink lost (e.g. one of a restarted federation's former nodes)
            if reply.has_error():
                raise UserError(f"node {node_id} could not start: {error_reason(reply)}")
            self._record(0, None, reply)
            metrics = numbers(reply.content["metrics"])
            client = int(metrics["client-id"])
            if client in self.node_of and self.node_of[client] != node_id and self.node_of[client] in node_ids:
                raise UserError(f"two nodes say they are client {client} (partition-id must be unique)")
            if not 0 <= client < self.config.fed.num_clients:
                raise UserError(
                    f"node {node_id} is client {client}, outside [0, fed.num_clients={self.config.fed.num_clients})"
                )
            self.node_of[client] = node_id
            self.examples[client] = int(metrics["num-examples"])

    def _rediscover(self) -> None:
        """Nodes that joined since (a restarted node has a new id): ask who they are."""
        new = [n for n in self.grid.get_node_ids() if n not in self.node_of.values()]
        if new:
            self._query(new)

    # --- what run_phase calls --------------------------------------------------------------------

    def sizes(self) -> list[int]:
        return [self.examples[c] for c in range(self.config.fed.num_clients)]

    def checkpoint_state(self) -> dict:
        return {}  # client state lives on the nodes

    def aggregation_inputs(self, updates: list[ClientUpdate]) -> list[ClientUpdate]:
        """What the algorithm aggregates: the clients' updates, or under SecAgg+ their sum alone."""
        return [self.secure_sum] if self.config.secagg.enabled and self.secure_sum else updates

    def train_round(
        self, algorithm: Algorithm, round_index: int, sampled: list[int], task: ClientTask, merges: MergeLog
    ) -> list[ClientUpdate]:
        from flwr.app import ConfigRecord, RecordDict

        fed = self.config.fed
        online = set(self.grid.get_node_ids())
        if any(self.node_of.get(c) not in online for c in sampled):
            self._rediscover()
            online = set(self.grid.get_node_ids())
        # Packed once per round and rank: every sampled client of a rank gets the same x (and c).
        broadcast = algorithm.server_message()
        packed: dict = {}
        contents: dict[int, RecordDict] = {}
        client_of: dict[int, int] = {}
        for cid in sampled:
            node_id = self.node_of.get(cid)
            if node_id is None or node_id not in online:
                continue
            rank = self.rank_of(cid)
            if rank not in packed:
                message = arrays_record(self.wire.send_state(broadcast, rank)) if broadcast else None
                x = arrays_record(self.wire.send_state(task.global_state, rank))
                packed[rank] = (x, message, self.sizes_at(rank))
            arrays, message, (num_values, num_segments) = packed[rank]
            records = {
                "arrays": arrays,
                "config": ConfigRecord(
                    {
                        "config": self.config_text,
                        "run-uid": self.run_uid,
                        "phase": "federated",
                        "round": round_index,
                        "lr": task.lr,
                        "steps": task.steps,
                        "client-id": cid,
                        # the reply's size, which a node checks it against (its download may be encoded)
                        "num-values": num_values,
                        "num-segments": num_segments,
                    }
                ),
            }
            if message is not None:
                records["message"] = message
            if self.merging:  # FLoRA / FedEx-LoRA: W as of this round, with the merges this node lacks
                records["config"]["merged-rounds"] = round_index
                records["merges"] = arrays_record(merges.arrays_for(cid, round_index))
            contents[node_id] = RecordDict(records)
            client_of[node_id] = cid
        if self.config.secagg.enabled:
            from .secagg import secure_round

            updates, self.secure_sum, lost = secure_round(self, round_index, contents, client_of, task.global_state)
            for node_id, reason in lost.items():
                self._lost(round_index, client_of[node_id], node_id, reason)
        else:
            updates = self._plain_round(round_index, contents, client_of, task.global_state)
            for update in updates:
                merges.delivered(update.client_id, round_index)
        for cid in sampled:
            if cid not in client_of.values():
                self._lost(round_index, cid, self.node_of.get(cid), "not connected")
        if len(updates) < fed.min_clients:
            raise UserError(
                f"round {round_index + 1}: {len(updates)} of {len(sampled)} sampled clients replied, "
                f"fewer than fed.min_clients={fed.min_clients}; the last checkpoint is kept "
                f"(continue with --resume)"
            )
        return updates

    def _plain_round(self, round_index: int, contents: dict, client_of: dict[int, int], x) -> list[ClientUpdate]:
        """Each sampled node's update, as it sent it (compressed: x + its decoded move)."""
        from ..algorithms import ClientUpdate
        from .transport import record_arrays

        fed = self.config.fed
        replies = self._send(contents, "train", fed.round_timeout)
        updates = []
        for node_id, cid in client_of.items():
            reply = replies.get(node_id)
            if reply is None or reply.has_error():
                reason = (
                    error_reason(reply)
                    if reply is not None
                    else (
                        "left the federation"
                        if node_id not in set(self.grid.get_node_ids())
                        else f"no reply within fed.round_timeout={fed.round_timeout:g} s"
                    )
                )
                self._lost(round_index, cid, node_id, reason)
                continue
            self._record(round_index + 1, cid, reply)
            rank = self.rank_of(cid)
            check_outgoing(reply.content, self.layout_at(rank))  # the adapter's tensors and numbers alone
            metrics = numbers(reply.content["metrics"])
            num_examples = int(metrics.pop("num-examples"))
            metrics.pop("client-id", None)
            got = {name: record_arrays(reply.content[name]) for name in ("arrays", "extras") if name in reply.content}
            weights = self.wire.receive_update(got["arrays"], x, self.like, rank)
            extras = self.wire.receive_extras(got.get("extras", {}), self.like, rank)
            update = ClientUpdate(cid, weights, num_examples, metrics=metrics, extras=extras)
            # what crossed the network, measured on the records themselves
            update.bytes_down, update.bytes_up = content_bytes(contents[node_id]), content_bytes(reply.content)
            update.wire_down, update.wire_up = message_bytes(self.last_sent[node_id]), message_bytes(reply)
            updates.append(update)
        return updates

    def _lost(self, round_index: int, cid: int, node_id, reason: str) -> None:
        print(f"[federated] round {round_index + 1}: client {cid} (node {node_id}) lost: {reason}", flush=True)
        self.log.write(
            {
                "type": "lost",
                "phase": "federated",
                "round": round_index + 1,
                "client": cid,
                "node": node_id,
                "reason": reason,
            }
        )


def error_reason(reply) -> str:
    """A node's error, without Flower's "<class 'RuntimeError'>:<'...'>" wrapping."""
    import re

    found = re.fullmatch(r"<class '[^']+'>:<'(.*)'>", reply.error.reason, re.DOTALL)
    return found.group(1) if found else reply.error.reason


def server_config(run_config) -> tuple:
    """(config, run directory, resume) from the ServerApp's run config."""
    from .. import config as cfg_mod
    from ..rundir import read_config

    output_dir = str(run_config.get("output-dir", "") or "")
    resume = bool(run_config.get("resume", False))
    if resume:
        if not output_dir or not Path(output_dir).is_dir():
            raise UserError(f"resume: no such run directory: {output_dir!r}")
        return cfg_mod.build(read_config(Path(output_dir))), Path(output_dir), True
    text = str(run_config.get("config-text", "") or "")
    path = str(run_config.get("config-file", "") or "")
    raw = yaml.safe_load(text) if text else (cfg_mod.load_yaml(path) if path else {})
    overrides = [tuple(item.split("=", 1)) for item in str(run_config.get("overrides", "") or "").split()]
    if any(len(o) != 2 for o in overrides):
        raise UserError("overrides: expected section.key=value items separated by spaces")
    raw = cfg_mod.apply_overrides(raw or {}, overrides)
    config = cfg_mod.build(cfg_mod.preset(str((raw.get("train") or {}).get("objective", "sft")), raw))
    run_dir = Path(output_dir or time.strftime(f"runs/{config.train.objective}-%Y%m%d-%H%M%S"))
    if run_dir.exists() and any(run_dir.iterdir()):
        raise UserError(f"output-dir {run_dir} already holds files; pick another, or resume it")
    return config, run_dir, False


def run_id_of(run_dir: Path) -> str:
    """The run's identity on the nodes (their client state lives under it); kept in the run dir."""
    path = run_dir / "federation.json"
    if path.is_file():
        return json.loads(path.read_text())["run_uid"]
    uid = uuid.uuid4().hex
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"run_uid": uid}))
    return uid


def serve_run(grid, run_config) -> dict:
    """The whole federated run, on the nodes of `grid`."""
    from ..logs import quiet_libraries
    from ..rounds import run
    from ..rundir import console_log
    from ..setup import prepare

    quiet_libraries()
    config, run_dir, resume = server_config(run_config)
    # Baselines pool data or train one client alone on the server: neither exists in a deployment.
    config.baselines.local = config.baselines.centralized = False
    config.validate()
    created = not run_dir.exists()
    try:
        with console_log(run_dir):
            setup = prepare(config, train=False)  # the server evaluates; the nodes train on their own rows
            clients = NodeClients(grid, setup, run_dir, run_id_of(run_dir))
            clients.connect()
            return run(setup, run_dir, resume=resume, clients=clients)
    except BaseException:
        if created and not (run_dir / "checkpoints").exists():
            import shutil

            shutil.rmtree(run_dir, ignore_errors=True)  # nothing worth keeping
        raise


def _make_app():
    from flwr.serverapp import ServerApp

    app = ServerApp()

    @app.main()
    def main(grid, context) -> None:
        try:
            serve_run(grid, context.run_config)
        except UserError as exc:
            # One line a user can act on, in the run's log; raised on as an Exception so that Flower
            # flushes the log, marks the run failed and keeps the line as the run's status details.
            print(f"openfedllm server: error: {exc}", flush=True)
            raise RuntimeError(str(exc)) from None
        except Exception:
            import traceback

            traceback.print_exc(file=sys.stdout)  # the run's log stream shows stdout
            sys.stdout.flush()
            raise

    return app


app = _make_app()
