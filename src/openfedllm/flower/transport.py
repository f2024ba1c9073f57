"""What a message between the server and a node may carry, and how tensors travel.

Only two kinds of records ever leave a node: ArrayRecords of its trainable tensors (a client's
update, SCAFFOLD's change of c_i), packed into one float vector whose size is exactly that of the
trainable parameters, and MetricRecords of scalar numbers under the names in NODE_METRICS.
`check_outgoing` refuses anything else, so no raw text, token ids (a list of ints is a valid
MetricRecord value) or config strings can leave a node by mistake. Both ends name and shape the
packed values after their own copy of the same trainable parameters (sorted by name), so no names
travel; a vector of the wrong size is refused.

Flower moves arrays through numpy, which has no bfloat16: tensors are cast to float32 for
transport (exact for bf16 and fp16, which float32 represents exactly) and restored to the
receiver's own dtype, taken from its copy of the same parameters, so no dtype metadata travels.
"""

from __future__ import annotations

import numpy as np

from ..errors import UserError

# torch is imported only where tensors are made: a node's ClientApp process (which hands the work to
# its warm worker) must not pay torch's import on every message.


PACKED = "trainable"  # the one array of a record: every tensor, flattened, in sorted-name order
# The metrics a node reports (client.train_local's and DPO's step statistics, the round's size):
# named here so that a new one is a decision, not an accident.
NODE_METRICS = frozenset(
    {
        "loss",
        "steps",
        "tokens",
        "seconds",
        "reward_accuracy",
        "reward_margin",
        "num-examples",
        "client-id",
        "secagg_clipped",  # SecAgg+: coordinates of the move past secagg.clipping_range
    }
)
# Per-step series a node reports: one float per local step (the step's loss, seconds since the first
# step began); floats only, as many as the steps it took, so no list of token ids fits.
NODE_SERIES = frozenset({"step_losses", "step_seconds"})


def content_bytes(content) -> int:
    """The payload bytes of a RecordDict as sent: its arrays' serialised data, and the bytes values of
    its config records (SecAgg+'s keys, shares and masked vectors). Settings text and metrics are
    not counted (a few hundred bytes; the ledger counts what scales with the model)."""
    from flwr.app import ArrayRecord, ConfigRecord

    total = 0
    for record in content.values():
        if isinstance(record, ArrayRecord):
            total += sum(len(a.data) for a in record.values())
        elif isinstance(record, ConfigRecord):
            for value in record.values():
                total += sum(len(v) for v in (value if isinstance(value, list) else [value]) if isinstance(v, bytes))
    return total


def message_bytes(message) -> int:
    """The bytes Flower transfers for `message`: every object of its tree (the message with its
    metadata, the RecordDict, each record, each array and its chunks) as Flower serialises it to push
    or pull, each distinct object once (objects are addressed by their hash, so identical chunks
    travel once). The payload plus Flower's framing: protobuf, object headers, metadata. The HTTP
    and TLS layers underneath are not counted."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    return sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values())


def to_numpy(state: dict) -> dict[str, np.ndarray]:
    """Tensors as float32/float64 numpy arrays (bf16 / fp16 cast to float32, exactly)."""
    import torch

    return {
        k: (v if v.dtype in (torch.float32, torch.float64) else v.float()).detach().cpu().contiguous().numpy()
        for k, v in state.items()
    }


def pack(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """All tensors as one flat vector, in sorted-name order. Flower stores and moves every Array of a
    message as objects of their own (one HTTP request each); one array instead of one per LoRA
    matrix (240 for SmolLM2) is what keeps a message's transfer in the tens of milliseconds."""
    names = sorted(arrays)
    dtype = np.result_type(*(arrays[n].dtype for n in names)) if names else np.float32
    return (
        np.concatenate([arrays[n].astype(dtype, copy=False).ravel() for n in names])
        if names
        else np.zeros(0, np.float32)
    )


def unpack(flat: np.ndarray, like: dict) -> dict[str, np.ndarray]:
    """The tensors of a packed vector, named and shaped after the receiver's own parameters `like`."""
    names = sorted(like)
    sizes = [int(np.prod(tuple(like[n].shape))) for n in names]
    if flat.ndim != 1 or flat.size != sum(sizes):
        raise UserError(
            f"a message's tensors do not match this model's trainable parameters "
            f"({flat.size} values, the model has {sum(sizes)})"
        )
    out, offset = {}, 0
    for name, size in zip(names, sizes):
        out[name] = flat[offset : offset + size].reshape(tuple(like[name].shape))
        offset += size
    return out


def from_numpy(arrays: dict[str, np.ndarray], like: dict) -> dict:
    """Numpy arrays as tensors in the dtype and on the device of `like` (same names, same shapes)."""
    import torch

    if set(arrays) == {PACKED} and set(like) != {PACKED}:
        arrays = unpack(arrays[PACKED], like)
    return _fit({k: torch.from_numpy(np.array(a)) for k, a in arrays.items()}, like)


def array_record(arrays: dict[str, np.ndarray]):
    """One ArrayRecord holding one packed float vector of `arrays` (see `pack`)."""
    from flwr.app import Array, ArrayRecord

    return ArrayRecord(array_dict={PACKED: Array(np.ascontiguousarray(pack(arrays)))})


def arrays_record(arrays: dict[str, np.ndarray]):
    """One ArrayRecord of arrays as they are (a codec's, or one packed vector: `compression.Wire`)."""
    from flwr.app import Array, ArrayRecord

    return ArrayRecord(array_dict={k: Array(np.ascontiguousarray(a)) for k, a in arrays.items()})


def record_arrays(record) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in record.items()}


def to_record(state: dict):
    """An ArrayRecord of the tensors, bf16 / fp16 cast to float32 (exactly), packed into one vector."""
    return array_record(to_numpy(state))


def from_record(record, like: dict) -> dict:
    """The tensors of a record, in the dtype and on the device of `like` (same names, same shapes)."""
    return from_numpy(record_arrays(record), like)


def _fit(state: dict, like: dict) -> dict:
    if set(state) != set(like):
        missing, extra = sorted(set(like) - set(state)), sorted(set(state) - set(like))
        raise UserError(
            f"a message's tensors do not match this model's trainable parameters "
            f"(missing {missing[:3]}, unexpected {extra[:3]})"
        )
    out = {}
    for k, ref in like.items():
        if tuple(state[k].shape) != tuple(ref.shape):
            raise UserError(
                f"a message's tensor {k} has shape {tuple(state[k].shape)}, this model's {tuple(ref.shape)}"
            )
        out[k] = state[k].to(dtype=ref.dtype, device=ref.device)
    return out


def check_outgoing(content, layout: int | dict[str, tuple[str, int]]) -> None:
    """Raise unless the RecordDict holds only numeric metrics and ArrayRecords of exactly `layout`:
    an int is one packed float vector of that many values, the size of the trainable parameters;
    a compressed reply's layout names each array's dtype and length (compression.reply_layout),
    which depend only on that size. The privacy contract of a node: its data never leaves it."""
    from flwr.app import ArrayRecord, MetricRecord

    if isinstance(layout, int):
        layout = {PACKED: ("float", layout)}

    for name, record in content.items():
        if isinstance(record, MetricRecord):
            for key, value in record.items():
                if key in NODE_SERIES:
                    steps = record.get("steps")
                    if not isinstance(value, list) or not all(type(v) is float for v in value) or len(value) != steps:
                        raise ValueError(f"metric {key!r} is not one float per local step ({steps})")
                    continue
                if key not in NODE_METRICS:
                    known = ", ".join(sorted(NODE_METRICS | NODE_SERIES))
                    raise ValueError(f"metric {key!r} is not one a node reports ({known})")
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(
                        f"metric {key!r} is a {type(value).__name__}; only single numbers may leave a node"
                    )
            continue
        if not isinstance(record, ArrayRecord):
            raise ValueError(f"record {name!r} is a {type(record).__name__}; a node sends only tensors and metrics")
        if set(record) != set(layout):
            raise ValueError(
                f"record {name!r} holds {sorted(record)[:3]}, not the trainable parameters' {sorted(layout)}"
            )
        for key, (dtype, size) in layout.items():
            array = record[key]
            if dtype == "float" and not np.issubdtype(np.dtype(array.dtype), np.floating):
                raise ValueError(f"record {name!r} is {array.dtype}; only float tensors may leave a node")
            if dtype != "float" and np.dtype(array.dtype) != np.dtype(dtype):
                raise ValueError(f"record {name!r}'s {key!r} is {array.dtype}, not {dtype}")
            if tuple(array.shape) != (size,):
                raise ValueError(
                    f"record {name!r} has shape {tuple(array.shape)}, not the {size} values of the trainable parameters"
                )


def numbers(record) -> dict:
    """A MetricRecord's single-number values (ints stay ints) and per-step series, as check_outgoing
    allows them."""
    return {
        k: list(v) if k in NODE_SERIES else v
        for k, v in record.items()
        if k in NODE_SERIES or (isinstance(v, (int, float)) and not isinstance(v, bool))
    }


def describe(message) -> dict:
    """What a received message carried, for the run's messages.jsonl: every record's kind, and for
    tensors their names, dtypes and bytes; for metrics their names. Never the values."""
    from flwr.app import ArrayRecord, ConfigRecord, MetricRecord

    if message.has_error():
        return {"error": message.error.reason}
    records = {}
    for name, record in message.content.items():
        if isinstance(record, ArrayRecord):
            records[name] = {
                "kind": "arrays",
                "tensors": {k: a.dtype for k, a in record.items()},
                "shapes": {k: list(a.shape) for k, a in record.items()},
                "bytes": sum(len(a.data) for a in record.values()),
            }
        elif isinstance(record, MetricRecord):
            records[name] = {"kind": "metrics", "keys": sorted(record)}
        elif isinstance(record, ConfigRecord):  # SecAgg+'s protocol: keys, shares, the masked vector
            values = [v for value in record.values() for v in (value if isinstance(value, list) else [value])]
            records[name] = {
                "kind": "config",
                "keys": sorted(record),
                "bytes": sum(len(v) for v in values if isinstance(v, bytes)),
            }
        else:
            records[name] = {"kind": type(record).__name__}
    return {"records": records}
