"""What a message between the server and a node may carry, and how tensors travel.

Only two kinds of records ever cross the network: ArrayRecords of trainable tensors (the global
adapter, a client's update, SCAFFOLD's control variates), keyed by parameter name, and
MetricRecords of numbers. `check_outgoing` refuses anything else, so no raw text, token ids or
config strings can leave a node by mistake.

Flower moves arrays through numpy, which has no bfloat16: tensors are cast to float32 for
transport (exact for bf16 and fp16, which float32 represents exactly) and restored to the
receiver's own dtype, taken from its copy of the same parameters, so no dtype metadata travels.
"""

from __future__ import annotations

import numpy as np

from ..errors import UserError

# torch is imported only where tensors are made: a node's ClientApp process (which hands the work to
# its warm worker) must not pay torch's import on every message.


def to_numpy(state: dict) -> dict[str, np.ndarray]:
    """Tensors as float32/float64 numpy arrays (bf16 / fp16 cast to float32, exactly)."""
    import torch

    return {k: (v if v.dtype in (torch.float32, torch.float64) else v.float()).detach().cpu().contiguous().numpy()
            for k, v in state.items()}


def from_numpy(arrays: dict[str, np.ndarray], like: dict) -> dict:
    """Numpy arrays as tensors in the dtype and on the device of `like` (same names, same shapes)."""
    import torch

    return _fit({k: torch.from_numpy(np.array(a)) for k, a in arrays.items()}, like)


def array_record(arrays: dict[str, np.ndarray]):
    from flwr.app import Array, ArrayRecord

    return ArrayRecord(array_dict={k: Array(np.ascontiguousarray(a)) for k, a in arrays.items()})


def record_arrays(record) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in record.items()}


def to_record(state: dict):
    """An ArrayRecord of the tensors, bf16 / fp16 cast to float32 (exactly)."""
    return array_record(to_numpy(state))


def from_record(record, like: dict) -> dict:
    """The tensors of a record, in the dtype and on the device of `like` (same names, same shapes)."""
    return from_numpy(record_arrays(record), like)


def _fit(state: dict, like: dict) -> dict:
    if set(state) != set(like):
        missing, extra = sorted(set(like) - set(state)), sorted(set(state) - set(like))
        raise UserError(f"a message's tensors do not match this model's trainable parameters "
                        f"(missing {missing[:3]}, unexpected {extra[:3]})")
    out = {}
    for k, ref in like.items():
        if tuple(state[k].shape) != tuple(ref.shape):
            raise UserError(f"a message's tensor {k} has shape {tuple(state[k].shape)}, this model's "
                            f"{tuple(ref.shape)}")
        out[k] = state[k].to(dtype=ref.dtype, device=ref.device)
    return out


def check_outgoing(content, parameter_names: set[str]) -> None:
    """Raise unless the RecordDict holds only float tensors named after trainable parameters and
    numeric metrics (the privacy contract of a node: data never leaves it)."""
    from flwr.app import ArrayRecord, MetricRecord

    for name, record in content.items():
        if isinstance(record, MetricRecord):
            continue  # MetricRecord itself admits only ints, floats and lists of them
        if not isinstance(record, ArrayRecord):
            raise ValueError(f"record {name!r} is a {type(record).__name__}; a node sends only tensors and metrics")
        unknown = sorted(set(record) - parameter_names)
        if unknown:
            raise ValueError(f"record {name!r} holds {unknown[:3]}, which are not trainable parameters")
        for key, array in record.items():
            if not np.issubdtype(np.dtype(array.dtype), np.floating):
                raise ValueError(f"record {name!r}: {key} is {array.dtype}; only float tensors may leave a node")


def describe(message) -> dict:
    """What a received message carried, for the run's messages.jsonl: every record's kind, and for
    tensors their names, dtypes and bytes; for metrics their names. Never the values."""
    from flwr.app import ArrayRecord, MetricRecord

    if message.has_error():
        return {"error": message.error.reason}
    records = {}
    for name, record in message.content.items():
        if isinstance(record, ArrayRecord):
            records[name] = {"kind": "arrays", "tensors": {k: a.dtype for k, a in record.items()},
                             "bytes": sum(len(a.data) for a in record.values())}
        elif isinstance(record, MetricRecord):
            records[name] = {"kind": "metrics", "keys": sorted(record)}
        else:
            records[name] = {"kind": type(record).__name__}
    return {"records": records}
