"""Server-side time and peak memory of one round's LoRA aggregation, per method.

Random adapters of 10 clients (float32, as clients send them) in two shapes: the default job's
(SmolLM2-135M-Instruct, LoRA r8 on q,k,v,o of 30 layers: 576 wide, k/v 192) and a 7B-shaped one
(LoRA r16 on q,k,v,o of 32 layers of 4096). Per method, in a fresh process: the median wall time
of `aggregate` (FedAvg underneath), of the aggregation-error metric computed every round, and, for
the methods that merge into the frozen weights, of making the merge dense (U @ V per layer, what
the server adds to W); and the process's peak RSS above what the clients' adapters take.

    python benchmarks/lora_aggregation.py [--shape default|7b|both] [--clients 10] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

SHAPES = {  # layers, {module: (d_out, d_in)}, rank
    "default": (30, {"q_proj": (576, 576), "k_proj": (192, 576), "v_proj": (192, 576), "o_proj": (576, 576)}, 8),
    "7b": (32, {name: (4096, 4096) for name in ("q_proj", "k_proj", "v_proj", "o_proj")}, 16),
}


def adapters(shape: str, clients: int):
    import torch

    layers, dims, rank = SHAPES[shape]
    generator = torch.Generator().manual_seed(0)
    states = []
    for _ in range(clients):
        state = {}
        for layer in range(layers):
            for name, (d_out, d_in) in dims.items():
                prefix = f"base_model.model.model.layers.{layer}.self_attn.{name}"
                state[f"{prefix}.lora_A.weight"] = torch.randn(rank, d_in, generator=generator) / d_in**0.5
                state[f"{prefix}.lora_B.weight"] = torch.randn(d_out, rank, generator=generator) * 1e-2
        states.append(state)
    return states, rank


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(method: str, shape: str, clients: int, repeats: int, threads: int) -> dict:
    import statistics
    import time

    import torch

    from openfedllm.algorithms import ClientUpdate, FedAvg
    from openfedllm.lora_aggregation import aggregation_error, build

    torch.set_num_threads(threads)
    states, rank = adapters(shape, clients)
    full = {k: v.clone() for k, v in states[0].items()}
    # what the clients send and the server holds: FFA-LoRA B alone (A frozen, known to all), FedSA-LoRA A alone
    sent = {"ffa": ".lora_B.", "fedsa": ".lora_A."}.get(method, "")
    states = [{k: v for k, v in s.items() if sent in k} for s in states]
    updates = [ClientUpdate(i, s, 100 + 10 * i) for i, s in enumerate(states)]
    global_state = {k: v for k, v in full.items() if sent in k}
    scale = 16 / rank
    before = peak_rss_mb()
    timings: dict[str, list[float]] = {"aggregate": [], "error": [], "dense_merge": []}
    for _ in range(repeats):
        start = time.perf_counter()
        outcome = build(method).aggregate(FedAvg(), global_state, updates, scale, seed=1)
        timings["aggregate"].append(time.perf_counter() - start)
        if method != "fedsa":  # the server never sees a B_i: no error to compute
            start = time.perf_counter()
            aggregation_error(updates, outcome, scale, full)
            timings["error"].append(time.perf_counter() - start)
        if outcome.merged:
            start = time.perf_counter()
            for stack in outcome.merged.values():
                stack.dense()  # made and dropped one layer at a time, as the server adds it to W
            timings["dense_merge"].append(time.perf_counter() - start)
    return {
        "method": method,
        "shape": shape,
        **{k: statistics.median(v) for k, v in timings.items() if v},
        "peak_above_inputs_mb": peak_rss_mb() - before,
        "inputs_mb": before,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=(*SHAPES, "both"), default="both")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "SHAPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one, args.clients, args.repeats, args.threads)))
        return
    from openfedllm.lora_aggregation import LORA_AGGREGATIONS

    shapes = list(SHAPES) if args.shape == "both" else [args.shape]
    print(f"{args.clients} clients, {args.threads} threads, median of {args.repeats}")
    print(f"{'shape':8s} {'method':7s} {'aggregate s':>12s} {'error s':>8s} {'dense merge s':>14s} {'peak MB':>8s}")
    for shape in shapes:
        for method in LORA_AGGREGATIONS:
            done = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--one",
                    method,
                    shape,
                    "--clients",
                    str(args.clients),
                    "--repeats",
                    str(args.repeats),
                    "--threads",
                    str(args.threads),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(done.stdout.strip().splitlines()[-1])
            merge = f"{r['dense_merge']:.3f}" if "dense_merge" in r else "-"
            error = f"{r['error']:.3f}" if "error" in r else "-"
            print(
                f"{shape:8s} {method:7s} {r['aggregate']:12.3f} {error:>8s} {merge:>14s} "
                f"{r['peak_above_inputs_mb']:8.0f}"
            )


if __name__ == "__main__":
    main()
