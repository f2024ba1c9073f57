"""Server-side time of one round's robust rule or DP step, at the default job's adapter size.

Ten clients' random LoRA updates in the default job's shape (SmolLM2-135M-Instruct, LoRA r8 on
q,k,v,o of 30 layers; the shape benchmarks/lora_aggregation.py builds), then per setting the median
wall time of FedAvg's aggregation through the round's Combiner (the code a run calls): the plain
mean (no combiner: the algorithms' own exact path), each robust rule, norm bounding, and central
DP (clipping + noise) with fixed and adaptive clipping, and the accountant's epsilon after the
round. Compare with a round's time (docs/benchmarks.md: ~19 s for the quick job's 3 clients).

    python benchmarks/privacy_robustness.py [--clients 10] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

SETTINGS = {
    "mean (plain)": {},
    "median": {"fed": {"aggregator": "median"}},
    "trimmed_mean": {"fed": {"aggregator": "trimmed_mean", "trim_fraction": 0.2}},
    "krum": {"fed": {"aggregator": "krum", "krum_byzantine": 3}},
    "multikrum": {"fed": {"aggregator": "multikrum", "krum_byzantine": 3}},
    "norm_bound": {"fed": {"norm_bound": 0.1}},
    "dp central": {"dp": {"clip_norm": 0.1, "noise_multiplier": 1.0}},
    "dp adaptive": {
        "dp": {"clip_norm": 0.1, "noise_multiplier": 1.0, "adaptive_clipping": True, "clipped_count_stddev": 1.0}
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch
    from lora_aggregation import adapters  # the same folder

    from openfedllm.algorithms import ClientUpdate, FedAvg
    from openfedllm.combine import Combiner, plain
    from openfedllm.config import build

    torch.set_num_threads(args.threads)
    states, _ = adapters("default", args.clients + 1)
    x, clients = states[0], states[1:]
    updates = [ClientUpdate(i, s, 100) for i, s in enumerate(clients)]
    params = sum(t.numel() for t in x.values())
    rows = {}
    for name, raw in SETTINGS.items():
        fed = {"num_clients": args.clients, **raw.get("fed", {})}
        config = build({**raw, "fed": fed})
        config.validate()
        algorithm = FedAvg()
        combiner = None if plain(config) else Combiner.start(config)
        algorithm.combine = combiner
        times = []
        for r in range(args.repeats):
            if combiner is not None:
                combiner.round_index = r
            start = time.perf_counter()
            algorithm.aggregate(x, updates)
            times.append(time.perf_counter() - start)
        row = {"seconds": round(statistics.median(times), 4)}
        if combiner is not None and combiner.private:
            start = time.perf_counter()
            row["epsilon"] = round(combiner.epsilon(), 3)
            row["accountant_seconds"] = round(time.perf_counter() - start, 3)
        rows[name] = row
        print(f"{name:14s} {json.dumps(row)}", flush=True)
    print(json.dumps({"clients": args.clients, "parameters": params, "threads": args.threads, "results": rows}))


if __name__ == "__main__":
    main()
