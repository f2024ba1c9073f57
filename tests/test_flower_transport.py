"""Tensors cross Flower's messages unchanged (bf16 included), packed into one vector named after
nothing but the receiver's own parameters, and a node can send nothing but a vector of exactly the
trainable parameters' size and numeric metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict  # noqa: E402

from openfedllm.errors import UserError  # noqa: E402
from openfedllm.flower.transport import PACKED, check_outgoing, from_record, pack, to_record, unpack  # noqa: E402


def test_bf16_and_fp32_tensors_round_trip_exactly():
    torch.manual_seed(0)
    state = {
        "lora_A.weight": torch.randn(4, 8).to(torch.bfloat16),
        "lora_B.weight": torch.randn(8, 4),
        "half": torch.randn(3).to(torch.float16),
    }
    record = to_record(state)
    assert list(record) == [PACKED] and record[PACKED].dtype == "float32" and tuple(record[PACKED].shape) == (67,)
    back = from_record(record, state)
    for k, v in state.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v)


def test_packing_is_sorted_name_order_and_unpacks_by_the_receivers_shapes():
    arrays = {"b": np.array([[3.0, 4.0]], np.float32), "a": np.array([1.0, 2.0], np.float32)}
    np.testing.assert_array_equal(pack(arrays), [1.0, 2.0, 3.0, 4.0])  # a first, then b
    like = {"a": torch.zeros(2), "b": torch.zeros(1, 2)}
    out = unpack(pack(arrays), like)
    np.testing.assert_array_equal(out["b"], [[3.0, 4.0]])
    assert pack({}).size == 0


def test_a_record_that_does_not_fit_the_model_is_one_line():
    like = {"w": torch.zeros(2, 3)}
    with pytest.raises(UserError, match="5 values, the model has 6"):
        from_record(to_record({"w": torch.zeros(5)}), like)
    with pytest.raises(UserError, match="missing \\['w'\\]"):
        from_record(ArrayRecord({"v": torch.zeros(2, 3)}), like)


def test_only_the_trainable_vector_and_metrics_may_leave_a_node():
    ok = RecordDict({"arrays": to_record({"w": torch.ones(2)}), "metrics": MetricRecord({"loss": 0.5, "steps": 3})})
    check_outgoing(ok, 2)
    with pytest.raises(ValueError, match="ConfigRecord"):
        check_outgoing(RecordDict({"config": ConfigRecord({"text": "a private sentence"})}), 2)
    with pytest.raises(ValueError, match="only float tensors"):
        ids = ArrayRecord(array_dict={PACKED: Array(np.array([101, 2023, 102]))})
        check_outgoing(RecordDict({"arrays": ids}), 3)
    with pytest.raises(ValueError, match="not the 2 values"):
        check_outgoing(RecordDict({"arrays": to_record({"w": torch.ones(3)})}), 2)
    with pytest.raises(ValueError, match=r"not the trainable parameters' \['trainable'\]"):
        check_outgoing(RecordDict({"arrays": ArrayRecord({"embed_tokens.weight": torch.ones(2)})}), 2)
    # MetricRecord itself admits lists of ints: token ids under any name would pass it
    with pytest.raises(ValueError, match="'patient_name_tokens' is not one a node reports"):
        check_outgoing(RecordDict({"metrics": MetricRecord({"patient_name_tokens": [15496, 995, 11]})}), 2)
    with pytest.raises(ValueError, match="'loss' is a list; only single numbers"):
        check_outgoing(RecordDict({"metrics": MetricRecord({"loss": [15496, 995, 11]})}), 2)


def test_nodes_started_on_one_machine_share_its_cores_by_default(monkeypatch, tmp_path):
    import os

    from openfedllm.flower.federation import node_config_of, threads_per_node

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert [threads_per_node(n) for n in (1, 3, 8, 20)] == [8, 2, 1, 1]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert threads_per_node(3) == 1  # 3 nodes on 2 cores: one thread each, never torch's 2 each
    assert node_config_of(0, 3, tmp_path, threads_per_node(3)).endswith(" threads=1")


@pytest.fixture
def as_a_server_task(monkeypatch):
    """Messages carry the sending task's identity; a ServerApp process has one, a test sets one."""
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


def test_message_bytes_are_the_payload_plus_a_fixed_framing_and_identical_chunks_travel_once(as_a_server_task):
    from flwr.app import Message

    from openfedllm.flower.transport import content_bytes, message_bytes

    rng = np.random.default_rng(0)

    def message(n: int, fill=None) -> Message:
        values = rng.standard_normal(n).astype(np.float32) if fill is None else np.full(n, fill, np.float32)
        content = RecordDict({"arrays": ArrayRecord({PACKED: Array(values)}), "config": ConfigRecord({"round": 1})})
        return Message(content, dst_node_id=7, message_type="train")

    small, double = message(1000), message(2000)
    assert content_bytes(small.content) == 4000 + 128  # the values as .npy: a 128-byte header
    framing = message_bytes(small) - content_bytes(small.content)
    assert 0 < framing < 2048  # protobuf, object headers, the metadata: well under a LoRA adapter's bytes
    assert message_bytes(double) - content_bytes(double.content) == framing  # it does not grow with the values
    # Flower cuts large arrays into chunks addressed by their hash: a run of equal chunks moves once
    zeros = message(6_000_000, fill=0.0)
    assert content_bytes(zeros.content) == 24_000_128 > message_bytes(zeros) > 4_000_000
