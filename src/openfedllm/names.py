"""The names a config may choose among, for the modules that compute with torch.

Each alias lists what one module implements (its comment names the module), and is written here
rather than there so that `config.py` reads, checks and documents a run without importing torch.
That keeps `openfedllm sft --help` and a mistyped key at a fraction of a second instead of torch's
~2.5 s import (a test in tests/test_cli.py holds it). Names whose modules need no torch
(partition, templates, compression, evaluation.choice) stay where they are.
"""

from __future__ import annotations

from typing import Literal

AlgorithmName = Literal["fedavg", "fedprox", "scaffold", "fedavgm", "fedadagrad", "fedyogi", "fedadam"]  # algorithms
Correction = Literal["update", "gradient"]  # algorithms.scaffold: where c - c_i enters a local step
FirstMoment = Literal["zero", "delta"]  # algorithms.fedopt: m before the first round
SecondMoment = Literal["delta", "momentum"]  # algorithms.fedopt: what the v update squares
AggregatorName = Literal["mean", "median", "trimmed_mean", "krum", "multikrum"]  # robust
LoraAggregationName = Literal["naive", "ffa", "fedsa", "flora", "svd", "fedex"]  # lora_aggregation
Optimizer = Literal["adamw", "sgd"]  # client: the local optimizer
BackwardPrecision = Literal["float32", "bfloat16"]  # backward_precision
Loss = Literal["sigmoid", "ipo", "hinge"]  # dpo: the preference loss
# models: the base weights' dtype; auto: bfloat16 on a GPU that has it, else float16 (trained with
# a loss scaler) on a GPU, float32 on the CPU (and on Apple's MPS, whose half-precision training is
# not dependable across macOS versions).
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
Finetune = Literal["lora", "full"]  # models: LoRA adapters, or every weight
Quantization = Literal["none", "8bit", "4bit"]  # models: the frozen base weights as they are, int8, or NF4 (QLoRA)
