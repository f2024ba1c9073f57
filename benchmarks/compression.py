"""Bytes per message and encode/decode cost of each comm codec, on adapter-shaped tensors.

Shapes: the default job's adapter (SmolLM2-135M, LoRA r8 on q,k,v,o of 30 layers of 576, k/v 192
wide: 921,600 values) and a 7B-shaped one (LoRA r16 on q,k,v,o of 32 layers of 4096: 16.8 M
values). Values: a stand-in for a client's move, Student-t (3 degrees of freedom, heavy-tailed like
real updates) times 1e-3, from a fixed seed. For each codec: the bytes of one message as a Flower
Array carries it (`compression.array_bytes`, what the ledger counts), the ratio to float32, the
relative L2 error of one round trip, and the median time to encode and decode (torch threads pinned).

    python benchmarks/compression.py [--threads 1] [--repeats 5] [--topk-fraction 0.1]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from openfedllm.compression import CODECS, Wire, array_bytes
from openfedllm.config import build


def adapter(layers: int, width: int, kv: int, rank: int) -> dict[str, torch.Tensor]:
    out = {}
    for layer in range(layers):
        for proj, d_out in (("q", width), ("k", kv), ("v", kv), ("o", width)):
            name = f"model.layers.{layer}.self_attn.{proj}_proj"
            for part, shape in (("lora_A", (rank, width)), ("lora_B", (d_out, rank))):
                t = torch.distributions.StudentT(3.0).sample(shape) * 1e-3
                out[f"{name}.{part}.weight"] = t
    return out


def measure(move: dict, codec: str, fraction: float, repeats: int, scales: str = "tensor") -> dict:
    wire = Wire.of(build({"comm": {"upload": codec, "topk_fraction": fraction, "int8_scales": scales}}))
    zero = {k: torch.zeros_like(v) for k, v in move.items()}
    encode, decode = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        arrays, _, _ = wire.send_update(move, zero, {}, {})
        encode.append(time.perf_counter() - start)
        start = time.perf_counter()
        back = wire.receive_update(arrays, zero, move)
        decode.append(time.perf_counter() - start)
    num = sum(((back[k] - move[k]) ** 2).sum() for k in move) ** 0.5
    den = sum((move[k] ** 2).sum() for k in move) ** 0.5
    return {
        "bytes": array_bytes(arrays),
        "error": float(num / den),
        "encode": statistics.median(encode),
        "decode": statistics.median(decode),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--topk-fraction", type=float, default=0.1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"{platform.processor() or platform.machine()}, {args.threads} torch threads, torch {torch.__version__}")
    shapes = {
        "SmolLM2-135M LoRA r8 (default job)": (30, 576, 192, 8),
        "7B-shaped LoRA r16 (32 x 4096, q,k,v,o)": (32, 4096, 4096, 16),
    }
    for title, shape in shapes.items():
        move = adapter(*shape)
        n = sum(t.numel() for t in move.values())
        print(f"\n{title}: {n:,} values")
        print("| codec | bytes per message | vs float32 | relative L2 error | encode (s) | decode (s) |")
        print("|---|---|---|---|---|---|")
        plain = None
        for codec, scales in [(c, "tensor") for c in CODECS] + [("int8", "row")]:
            m = measure(move, codec, args.topk_fraction, args.repeats, scales)
            plain = plain or m["bytes"]
            name = {"topk": f"topk ({args.topk_fraction:g})", "int8": f"int8 (per {scales})"}.get(codec, codec)
            print(
                f"| {name} | {m['bytes']:,} | {plain / m['bytes']:.2f}x | {m['error']:.2e} | "
                f"{m['encode']:.3f} | {m['decode']:.3f} |"
            )


if __name__ == "__main__":
    main()
