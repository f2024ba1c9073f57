"""The typed configuration: the single schema of a run.

Each field carries a one-line help text, which is also what `openfedllm sft --help` shows.
A YAML recipe sets any subset of the fields; `--section.key value` on the command line
overrides it. Unknown keys, wrong types and impossible values fail when the config is read,
with a message naming the key.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from .compression import CodecName, ScaleGranularity
from .data.templates import OverLength, Template
from .errors import UserError
from .evaluation.choice import Mode
from .names import (
    AggregatorName,
    AlgorithmName,
    BackwardPrecision,
    Correction,
    Dtype,
    Finetune,
    FirstMoment,
    LoraAggregationName,
    Loss,
    Optimizer,
    Quantization,
    SecondMoment,
)
from .partition import Split
from .userfiles import read_yaml

Objective = Literal["sft", "dpo"]  # what local steps minimise
DPMode = Literal["central", "local"]  # who adds the noise
Tokenizing = Literal["auto", "eager", "lazy"]  # when sft training rows are tokenized (data/lazy.py)
AttackKind = Literal["sign_flip", "scale", "noise", "harmful_data", "flip_preferences"]


def opt(default, help: str, *, above=None, low=None, below=None, high=None):
    """A config field with its one-line help and its bounds (checked by `check_bounds`):
    above < value, low <= value, value < below, value <= high. Upper bounds of sizes lie far past
    any real run: a typo (an extra digit, 1e12 rounds) fails at once, naming its key."""
    bounds = {k: v for k, v in (("above", above), ("low", low), ("below", below), ("high", high)) if v is not None}
    metadata = {"help": help, **bounds}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def check_bounds(section: str, values) -> None:
    """Every field of a config section within the bounds its `opt` declares, or one line naming it."""
    for f in dataclasses.fields(values):
        value, meta, key = getattr(values, f.name), f.metadata, f"{section}.{f.name}"
        above, low, below, high = (meta.get(k) for k in ("above", "low", "below", "high"))
        outside = (above is not None and value <= above) or (low is not None and value < low)
        if below is not None and (outside or value >= below):
            left = f"({above}" if above is not None else f"[{low}"
            raise UserError(f"{key} must be in {left}, {below}), got {value}")
        if above is not None and value <= above:
            raise UserError(f"{key} must be > {above}, got {value}")
        if low is not None and value < low:
            raise UserError(f"{key} must be >= {low}, got {value}")
        if high is not None and value > high:
            raise UserError(f"{key} must be at most {high:,}, got {value:,}")


@dataclass
class ModelConfig:
    name: str = opt("smollm2-135m-instruct", "hub id, local folder, .gguf file, or the embedded default")
    device: str = opt(
        "auto", "where the model computes: auto (a CUDA GPU, then Apple MPS, then the CPU), cpu, cuda, cuda:N, mps"
    )
    dtype: Dtype = opt(
        "auto",
        "base weight dtype: auto (bfloat16 on GPUs that have it, else float16 with a loss scaler; float32 on "
        "CPU and MPS), float32, bfloat16, float16; adapters and optimizer state stay float32",
    )
    finetune: Finetune = opt("lora", "lora: train LoRA adapters; full: train every weight (small models only)")
    quantization: Quantization = opt(
        "none",
        "the frozen base weights: none, 8bit, or 4bit (NF4, double quantization: QLoRA); needs bitsandbytes "
        "and finetune: lora; the adapter then loads on the unquantized base too",
    )
    adapter: str = opt(
        "",
        "LoRA adapter to start from: an sft run directory or adapter folder (its rank and "
        "modules replace lora.*); for DPO it is also the reference model",
    )


@dataclass
class LoraConfig:
    rank: int = opt(8, "LoRA rank r; higher: more capacity, more memory and bytes per round", above=0, high=65_536)
    alpha: int = opt(16, "LoRA scaling numerator (update scaled by alpha / rank)", above=0)
    dropout: float = opt(0.05, "dropout on the LoRA input during training", low=0, below=1)
    target_modules: list[str] = opt(
        [],
        "module names that get adapters; empty: every linear layer of the attention blocks "
        "(q/k/v/o_proj on Llama-family models; the names used are written to the run's config.yaml)",
    )


@dataclass
class DataConfig:
    name: str = opt(
        "", "a known dataset (`openfedllm data list`): loaded from the hub, or its layout applied to data.path"
    )
    path: str = opt(
        "",
        "data file or folder: JSON, JSONL, CSV, Parquet, or a datasets save_to_disk folder; "
        "empty (and no data.name): the built-in suite",
    )
    format: str = opt(
        "auto",
        "auto (detected); sft: alpaca, sharegpt, messages, prompt_response; dpo: hh, ultrafeedback, sharegpt, plain",
    )
    label_column: str = opt(
        "",
        "column whose values label rows, for dirichlet and key splits; empty: "
        "category / domain / label / source if present",
    )
    template: Template = opt("chat", "prompt template: alpaca, vicuna, or chat (the model's own)")
    max_length: int = opt(
        256,
        "tokens per example; longer rows are cut at the end (or dropped: data.over_length)",
        above=0,
        high=10_000_000,
    )
    over_length: OverLength = opt(
        "truncate", "training rows longer than data.max_length: truncate (cut at the end) or drop; either way counted"
    )
    tokenize: Tokenizing = opt(
        "auto",
        "sft training rows: eager (all at start), lazy (each row when a client first uses it: fast start on "
        "large files), auto (lazy past 50,000 rows)",
    )
    train_per_domain: int = opt(
        200, "built-in suite: training examples (dpo: pairs) per domain", above=0, high=100_000_000
    )
    heldout_per_domain: int = opt(20, "built-in suite: held-out examples per domain", above=0, high=100_000_000)
    domains: list[str] = opt(
        [],
        "built-in suite: the domains used, for training and held-out alike (general, "
        "finance, medical, code, math); empty: all five",
    )
    eval_path: str = opt(
        "", "a validation file next to data.path (same formats): the held-out rows, instead of a share of data.path"
    )
    heldout_fraction: float = opt(0.05, "user file: share of rows held out for evaluation", above=0, below=1)
    max_heldout: int = opt(200, "user file: at most this many held-out rows", above=0, high=100_000_000)


@dataclass
class FedConfig:
    """The federation. Each algorithm's hyperparameters default to its own class's defaults
    (algorithms/), written out here so that reading a config needs no torch; a test holds each
    `Algorithm.from_config(FedConfig())` equal to the class built with no arguments."""

    algorithm: AlgorithmName = opt("fedavg", "FL algorithm (see `openfedllm algorithms`)")
    lora_aggregation: LoraAggregationName = opt(
        "naive",
        "how LoRA factors become the global adapter: naive (A, B averaged apart), ffa (A frozen, B "
        "alone: exact, half the bytes), fedsa (A shared, each client's B kept: personalized), flora "
        "(stacked, merged into W), svd (exact mean, SVD to rank r), fedex (mean A, B; residual into W); "
        "see docs/lora_aggregation.md",
    )
    client_ranks: list[int] = opt(
        [],
        "LoRA rank of each client, by client id (heterogeneous ranks, each at most lora.rank: a client "
        "trains the first r_i components); empty: every client lora.rank; with naive (HetLoRA's "
        "zero-padding), svd (each client takes its top r_i), flora or fedex",
    )
    rank_by_size: list[int] = opt(
        [],
        "heterogeneous ranks by data size instead of a list: clients sorted by their training rows get these "
        "ranks in equal groups, smallest first (e.g. [4, 8, 16]); the result is written out as fed.client_ranks",
    )
    personalize_steps: int = opt(
        0,
        "after the federation, each client fine-tunes the global model this many local steps on its own "
        "data and is scored with it (the personalization baseline; fedsa's clients are scored with their "
        "own B in any case); 0: off",
        low=0,
        high=1_000_000,
    )
    aggregator: AggregatorName = opt(
        "mean",
        "how the clients' moves y_i - x become the round's Delta: mean (example-weighted, the algorithms' "
        "own), median, trimmed_mean, krum, multikrum (robust to malicious clients; unweighted but "
        "multikrum's mean); see docs/privacy_robustness.md",
    )
    trim_fraction: float = opt(
        0.1, "trimmed_mean: share of the largest and of the smallest values dropped per coordinate", low=0, below=0.5
    )
    krum_byzantine: int = opt(0, "krum/multikrum: f, the malicious clients a round may hold", low=0)
    multikrum_keep: int = opt(0, "multikrum: moves averaged (the best-scoring); 0: clients sampled - f", low=0)
    norm_bound: float = opt(
        0.0, "clip every client's move to this L2 norm before it is combined (Sun et al. 2019); 0: off", low=0
    )
    num_clients: int = opt(5, "clients the data is partitioned over", above=0, high=10_000_000)
    clients_per_round: int = opt(0, "clients sampled (without replacement) each round; 0: all of them", low=0)
    rounds: int = opt(4, "federated rounds", above=0, high=1_000_000)
    split: Split = opt(
        "domain",
        "partition: iid, domain (one domain per client), dirichlet (label skew), key (each "
        "value of data.label_column a client), quantity (power-law sizes), shards",
    )
    dirichlet_alpha: float = opt(0.5, "Dirichlet concentration over labels; small: more skewed", above=0)
    key_min_size: int = opt(1, "split key: keys with fewer rows are left out", above=0)
    key_max_size: int = opt(0, "split key: larger keys are subsampled to this many rows; 0: no cap", low=0)
    quantity_exponent: float = opt(1.0, "split quantity: client k's share is proportional to (k + 1)^-exponent", low=0)
    shards_per_client: int = opt(2, "split shards: label-sorted shards dealt to each client", above=0)
    fedprox_mu: float = opt(0.01, "FedProx: weight mu of the proximal term (mu/2)*||w - x||^2; 0 is FedAvg", low=0)
    scaffold_server_lr: float = opt(1.0, "SCAFFOLD: global step size eta_g", above=0)
    scaffold_correction: Correction = opt(
        "update",
        "SCAFFOLD: where c - c_i enters a local step: update (after the "
        "optimizer; the paper's rule under SGD) or gradient (before Adam rescales it)",
    )
    fedavgm_server_lr: float = opt(1.0, "FedAvgM: server learning rate eta_s", above=0)
    fedavgm_momentum: float = opt(0.9, "FedAvgM: server momentum beta; 0 with eta_s 1 is FedAvg", low=0, below=1)
    fedavgm_damped: bool = opt(
        False,
        "FedAvgM: v <- beta*v + (1-beta)*Delta, v = Delta in round 1 (the OpenFedLLM "
        "reference); false: v <- beta*v + Delta (Hsu et al., Flower)",
    )
    fedopt_server_lr: float = opt(1e-2, "FedAdagrad/FedYogi/FedAdam: server learning rate eta", above=0)
    fedopt_beta1: float = opt(
        0.9,
        "FedAdagrad/FedYogi/FedAdam: decay of the first moment m (Reddi et al.; "
        "the reference and Flower use 0 for FedAdagrad)",
        low=0,
        below=1,
    )
    fedopt_first_moment: FirstMoment = opt(
        "zero",
        "FedAdagrad/FedYogi/FedAdam: m before round 1: zero (the paper) or "
        "delta (m = Delta in round 1, as the OpenFedLLM reference)",
    )
    fedopt_beta2: float = opt(0.99, "FedYogi/FedAdam: decay of the second moment v", low=0, below=1)
    fedopt_tau: float = opt(
        1e-3, "FedAdagrad/FedYogi/FedAdam: adaptivity tau; larger behaves more like FedAvgM", above=0
    )
    min_clients: int = opt(
        1,
        "deployment: a round completes if at least this many sampled clients reply "
        "within fed.round_timeout; fewer stop the run (resumable)",
        above=0,
    )
    round_timeout: float = opt(
        3600.0, "deployment: seconds the server waits for a round's replies", above=0, high=10_000_000.0
    )
    connect_timeout: float = opt(
        600.0,
        "deployment: seconds the server waits at the start for fed.num_clients nodes (it says which are missing)",
        above=0,
        high=10_000_000.0,
    )
    client_cpus: float = opt(
        1.0,
        "--federation local-simulation: CPU cores per virtual client (Ray runs cores / this clients at once)",
        above=0,
        high=100_000.0,
    )
    client_gpus: float = opt(
        0.0, "--federation local-simulation: GPU share per virtual client (0.5: two clients per GPU)", low=0, high=1.0
    )
    fedopt_second_moment: SecondMoment = opt(
        "delta",
        "FedAdagrad/FedYogi/FedAdam: square Delta in v (delta, the "
        "paper) or m (momentum, as the OpenFedLLM reference code does)",
    )

    def sampled(self) -> int:
        """Clients sampled each round: `clients_per_round`, or all clients when it is 0."""
        return self.clients_per_round or self.num_clients


@dataclass
class TrainConfig:
    objective: Objective = opt(
        "sft",
        "what local steps minimise: sft (next-token loss on responses) or dpo "
        "(preference pairs; what `openfedllm dpo` sets)",
    )
    local_steps: int = opt(4, "optimizer steps per client per round", above=0, high=10_000_000)
    optimizer: Optimizer = opt(
        "adamw", "local optimizer: adamw, or sgd (plain SGD, the optimizer the FL papers analyse)"
    )
    batch_size: int = opt(8, "examples per micro-batch", above=0, high=100_000)
    grad_accum: int = opt(1, "micro-batches per optimizer step", above=0, high=100_000)
    lr: float = opt(1e-3, "peak learning rate (AdamW), at the first round", above=0)
    min_lr: float = opt(1e-4, "learning rate reached by the cosine schedule at the last round", low=0)
    weight_decay: float = opt(0.0, "AdamW weight decay", low=0)
    max_grad_norm: float = opt(1.0, "gradient clipping norm; 0 turns clipping off", low=0)
    packing: bool = opt(
        True, "pack each batch's rows into as few sequences as fit: same examples and loss, less padding computed"
    )
    max_tokens_per_pass: int = opt(
        640,
        "forward/backward at most this many tokens at once (same gradient); "
        "bounds activation memory; 0: the whole batch",
        low=0,
        high=100_000_000,
    )
    seed: int = opt(42, "seed of the data, the split, client sampling and dropout")
    threads: int = opt(0, "torch CPU threads; 0 keeps torch's default", low=0)
    gradient_checkpointing: bool = opt(
        False, "recompute activations in the backward pass: less memory, ~30% more time (7B recipes turn it on)"
    )
    backward_precision: BackwardPrecision = opt(
        "float32",
        "products through frozen weights in the backward pass: float32, or bfloat16 (inputs rounded, "
        "float32 sums; forward and losses stay float32; pays on CPUs with AMX or AVX512-BF16)",
    )


@dataclass
class DPOConfig:
    beta: float = opt(0.1, "DPO beta: strength of the pull towards the reference; larger: stay closer", above=0)
    loss: Loss = opt("sigmoid", "preference loss: sigmoid (DPO), ipo, or hinge (SLiC)")
    rpo_alpha: float = opt(0.0, "add alpha x the chosen response's mean token NLL (RPO); 0: pure DPO", low=0)
    max_prompt_length: int = opt(
        192, "prompt tokens kept (the end of an over-long prompt); the response fills data.max_length", above=0
    )
    disable_dropout: bool = opt(
        True, "no dropout in DPO's forward passes, as trl's DPOConfig by default; false: keep lora.dropout"
    )


@dataclass
class DPSection:
    """Client-level differential privacy (DP-FedAvg); on when dp.noise_multiplier or dp.target_epsilon
    is set. See docs/privacy_robustness.md for what it protects and how epsilon is counted."""

    clip_norm: float = opt(
        0.0, "C: each client's move y_i - x is clipped to this L2 norm (the initial C with adaptive clipping)", low=0
    )
    noise_multiplier: float = opt(
        0.0, "z: Gaussian noise of std z * C on the clipped sum; 0 with dp.target_epsilon: computed from it", low=0
    )
    target_epsilon: float = opt(
        0.0,
        "the privacy budget: sigma is computed to spend it over fed.rounds (without dp.noise_multiplier); a run "
        "whose rounds would exceed it stops before the round that would; 0: no budget",
        low=0,
    )
    delta: float = opt(1e-5, "the delta of the reported (epsilon, delta)", above=0, below=1)
    mode: DPMode = opt(
        "central",
        "central: the server adds the noise to the sum (it sees each clipped move); local: each client noises "
        "its own move before it leaves (no trust in the server; far more noise)",
    )
    adaptive_clipping: bool = opt(
        False, "central: C follows a quantile of the update norms (Andrew et al. 2021), starting at dp.clip_norm"
    )
    target_quantile: float = opt(0.5, "adaptive clipping: gamma, the share of moves left unclipped", above=0, below=1)
    clip_lr: float = opt(0.2, "adaptive clipping: eta_C, the step of log C per round", above=0)
    clipped_count_stddev: float = opt(
        0.0, "adaptive clipping: sigma_b, noise on the unclipped count; 0: clients per round / 20", low=0
    )
    noise_seed: int = opt(
        0,
        "0: noise (and, with DP, client sampling) from a secret drawn from the OS and kept in the checkpoint; "
        "N: from N, reproducible (research only: whoever knows N can remove the noise)",
        low=0,
    )


@dataclass
class SecAggSection:
    """Flower's SecAgg+ on a federation: the server learns the sum of the clients' moves, not one of
    them (docs/privacy_robustness.md: what it protects, its quantization error, its cost)."""

    enabled: bool = opt(False, "secure aggregation of the moves on a Flower federation (a simulation: in the clear)")
    num_shares: float = opt(
        1.0, "<= 1: each client's key is shared with this share of the round's clients; > 1: with this many", above=0
    )
    reconstruction_threshold: float = opt(
        0.67, "<= 1: share of a key's shares that rebuilds it (the dropouts a round survives); > 1: a count", above=0
    )
    clipping_range: float = opt(
        1.0, "each coordinate of a move is clipped to [-c, c] before quantization (counted: secagg_clipped)", above=0
    )
    quantization_range: int = opt(
        4194304, "Q: levels in [-c, c]; a client rounds each coordinate by less than 2c/Q (Flower's 2^22)", above=1
    )


@dataclass
class CommSection:
    """What crosses the network and how (docs/efficiency.md): every client record has its bytes_up /
    bytes_down (docs/metrics.md)."""

    upload: CodecName = opt(
        "none", "how each client's update travels up: none (float32), fp16, bf16, int8, nf4, or topk (error feedback)"
    )
    download: CodecName = opt("none", "how the global model travels down: none (float32), fp16, bf16, int8 or nf4")
    topk_fraction: float = opt(
        0.1, "comm.upload topk: the share of the update's values a client sends", above=0, high=1
    )
    int8_scales: ScaleGranularity = opt("tensor", "int8: one scale per tensor, or per row of each tensor")

    budget_mb: float = opt(
        0.0,
        "stop before the round that would bring the run's communication (up + down, all clients) past this "
        "many MB (10^6 bytes); 0: no budget",
        low=0,
    )


@dataclass
class LogSection:
    """Experiment tracking: metrics.jsonl mirrored as the run writes it (docs/metrics.md)."""

    tensorboard: bool = opt(False, "also write TensorBoard event files to RUN/tensorboard")
    mlflow: str = opt("", "also log to MLflow: a tracking URI, or local (a SQLite store, RUN/mlflow.db); '': off")


@dataclass
class AttackSection:
    """Malicious clients, for research on robustness (docs/privacy_robustness.md)."""

    fraction: float = opt(
        0.0, "share of the clients that are malicious (chosen by train.seed); 0: none", low=0, below=1
    )
    kind: AttackKind = opt(
        "sign_flip",
        "sign_flip (send x - scale * move), scale (x + scale * move), noise (a Gaussian move, std scale x the "
        "honest move's RMS), harmful_data (sft: harmful requests answered mixed into the data), "
        "flip_preferences (dpo: chosen and rejected swapped)",
    )
    scale: float = opt(1.0, "sign_flip / scale / noise: the attack's strength", above=0)
    poison_fraction: float = opt(
        0.5, "harmful_data: share of a malicious client's rows replaced by harmful ones", above=0, high=1.0
    )


@dataclass
class EvalConfig:
    every: int = opt(1, "evaluate the global model every N rounds (and always after the last)", above=0)
    max_new_tokens: int = opt(12, "tokens generated per held-out answer", above=0, high=1_000_000)
    batch_size: int = opt(50, "held-out examples per generation batch", above=0)
    benchmarks: list[str] = opt(
        [],
        "benchmarks run on the global model (NAME or NAME=PATH, as `openfedllm eval` "
        "names them), logged in metrics.jsonl and plotted",
    )
    benchmark_every: int = opt(
        1,
        "run eval.benchmarks at every N-th evaluation round (and always before training and after the last round)",
        above=0,
    )
    benchmark_limit: int = opt(20, "questions per benchmark (per subject/task for mmlu and bbh)", above=0)
    benchmark_mode: Mode = opt("loglik", "multiple choice during training: loglik, generate or both")


@dataclass
class BaselinesConfig:
    local: bool = opt(True, "also train one client alone on its own data (same steps as in a round)")
    local_client: int = opt(0, "which client trains alone for the local-only baseline")
    centralized: bool = opt(True, "also train on all data pooled (same total steps as the federation)")


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    fed: FedConfig = field(default_factory=FedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    dp: DPSection = field(default_factory=DPSection)
    attack: AttackSection = field(default_factory=AttackSection)
    secagg: SecAggSection = field(default_factory=SecAggSection)
    comm: CommSection = field(default_factory=CommSection)
    log: LogSection = field(default_factory=LogSection)

    def _check_benchmarks(self) -> None:
        """eval.benchmarks names known benchmarks and files that exist, before a run writes anything."""
        if not self.eval.benchmarks:
            return
        from .evaluation.names import BENCHMARK_NAMES, canonical

        self.eval.benchmarks = [
            canonical(e.partition("=")[0]) + e[len(e.partition("=")[0]) :] for e in self.eval.benchmarks
        ]
        for entry in self.eval.benchmarks:
            name, _, path = entry.partition("=")
            if name not in BENCHMARK_NAMES:
                raise UserError(f"eval.benchmarks: unknown benchmark {name!r}; available: {', '.join(BENCHMARK_NAMES)}")
            if path and not Path(path).expanduser().exists():
                raise UserError(f"eval.benchmarks: {name}: {path}: file not found")

    def validate(self) -> None:
        """Impossible settings, named by their key."""
        for section in dataclasses.fields(self):
            check_bounds(section.name, getattr(self, section.name))
        if self.fed.sampled() > self.fed.num_clients:
            raise UserError(
                f"fed.clients_per_round ({self.fed.clients_per_round}) is more than "
                f"fed.num_clients ({self.fed.num_clients})"
            )
        if self.fed.min_clients > self.fed.sampled():
            raise UserError(
                f"fed.min_clients ({self.fed.min_clients}) is more than the clients sampled per round "
                f"({self.fed.sampled()})"
            )
        from .data.suite import DOMAINS

        unknown = [d for d in self.data.domains if d not in DOMAINS]
        if unknown:
            raise UserError(f"data.domains: unknown domain {unknown[0]!r}; valid: {', '.join(DOMAINS)}")
        from .models import parse_device

        parse_device(self.model.device)  # its form; whether it is present is checked where the model loads
        for section in dataclasses.fields(self):  # choices: a RunConfig built in Python skips build's check
            values = getattr(self, section.name)
            for name, hint in field_types(type(values)).items():
                if typing.get_origin(hint) is Literal and getattr(values, name) not in typing.get_args(hint):
                    valid = typing.get_args(hint)
                    raise UserError(
                        f"{section.name}.{name}: unknown value {getattr(values, name)!r}; valid: {', '.join(valid)}"
                    )
        formats = ("auto",) + FORMATS.get(self.train.objective, ())
        if self.data.format not in formats:  # the valid formats depend on the objective
            raise UserError(f"data.format: unknown value {self.data.format!r}; valid: {', '.join(formats)}")
        self._check_benchmarks()
        if not 0 <= self.baselines.local_client < self.fed.num_clients:
            raise UserError(f"baselines.local_client must be a client id in [0, {self.fed.num_clients})")
        if self.data.path and not Path(self.data.path).expanduser().exists():
            raise UserError(f"data.path: file not found: {self.data.path}")
        if self.data.eval_path and not Path(self.data.eval_path).expanduser().exists():
            raise UserError(f"data.eval_path: file not found: {self.data.eval_path}")
        if self.data.eval_path and not (self.data.path or self.data.name):
            raise UserError("data.eval_path: give the training data too (data.path or data.name)")
        if self.data.name:
            from .data.registry import known

            known(self.data.name, self.train.objective)
        if self.model.quantization != "none" and self.model.finetune != "lora":
            raise UserError(
                f"model.quantization: {self.model.quantization} needs model.finetune: lora (quantized "
                "weights are frozen; only adapters train on them)"
            )
        from .lora_aggregation import check as check_lora_aggregation

        check_lora_aggregation(self)
        from .attacks import check as check_attack
        from .combine import check as check_defences

        check_defences(self)
        check_attack(self)
        from .compression import check as check_compression

        check_compression(self)
        if self.secagg.enabled:
            from .flower.secagg import check as check_secagg

            check_secagg(self)
        if self.model.adapter:
            if self.model.finetune != "lora":
                raise UserError("model.adapter needs model.finetune: lora")
            from .models import adapter_config

            adapter_config(self.model.adapter)  # fails here, naming the key, if it is not an adapter
        if self.train.objective == "dpo" and self.dpo.max_prompt_length >= self.data.max_length:
            raise UserError(
                f"dpo.max_prompt_length ({self.dpo.max_prompt_length}) leaves no room for a response "
                f"within data.max_length ({self.data.max_length})"
            )


PHASES = ("federated", "local", "centralized")  # in run order; a baseline runs if baselines.<name>


def phases_of(config: RunConfig) -> list[str]:
    """The phases a run goes through: the federation, then each baseline it asks for."""
    return [p for p in PHASES if p == "federated" or getattr(config.baselines, p)]


OBJECTIVES = typing.get_args(Objective)
FORMATS = {
    "sft": ("alpaca", "sharegpt", "messages", "prompt_response"),
    "dpo": ("hh", "ultrafeedback", "sharegpt", "plain"),
}  # data.format per objective

# What `openfedllm dpo` starts from before a --config file and overrides (configs/dpo_default.yaml
# writes it out). A pair is two rows and needs its reference log-probs, so fewer pairs, smaller
# batches, fewer rounds and steps keep the job under 10 minutes on 2 CPU cores; a larger lr and
# the chosen response's NLL (RPO) make 9 steps per client change the answers, not only the margins.
DPO_DEFAULTS = {
    "data": {"train_per_domain": 40, "heldout_per_domain": 10},
    "fed": {"rounds": 3},
    "train": {"objective": "dpo", "local_steps": 3, "batch_size": 4, "lr": 2e-3, "min_lr": 2e-4},
    "dpo": {"rpo_alpha": 1.0},
}


def preset(objective: str, raw: dict) -> dict:
    """`raw` (a recipe, with any overrides) over the defaults `openfedllm OBJECTIVE` starts from:
    DPO_DEFAULTS for dpo, the dataclass defaults for sft. The one place the DPO preset is applied
    (the CLI, `data inspect --dpo` and the Flower server all call this)."""
    return merge(DPO_DEFAULTS, raw) if objective == "dpo" else raw


def merge(base: dict, raw: dict) -> dict:
    """`raw`'s keys over `base`'s, section by section."""
    out = {k: dict(v or {}) for k, v in base.items()}
    for section, values in (raw or {}).items():
        if isinstance(values, dict) and isinstance(out.get(section), dict):
            out[section].update(values)
        else:
            out[section] = values
    return out


SECTIONS = {f.name: f.default_factory for f in dataclasses.fields(RunConfig)}  # name -> class


def _section_class(name: str):
    return SECTIONS[name]


def _check_type(key: str, value, hint):
    """Coerce a YAML / command-line value to the field's type, or fail naming the key."""
    if typing.get_origin(hint) is list or hint is list:
        item = (typing.get_args(hint) or (str,))[0]
        if isinstance(value, str):
            value = [v.strip() for v in value.strip("[]").split(",") if v.strip()]
            if item is int:
                try:
                    value = [int(v) for v in value]
                except ValueError:
                    raise UserError(f"{key}: expected a list of integers, got {value!r}") from None
        if item is int:
            if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise UserError(f"{key}: expected a list of integers, got {value!r}")
            return value
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UserError(f"{key}: expected a list of names, got {value!r}")
        return value
    if typing.get_origin(hint) is Literal:  # a choice: the owning module's names
        valid = typing.get_args(hint)
        if value not in valid:
            raise UserError(f"{key}: unknown value {value!r}; valid: {', '.join(valid)}")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{key}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):  # nan passes every range check (nan <= 0 is False) and inf trains to NaN
            raise UserError(f"{key}: must be a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if value is None:
            return ""
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise UserError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise TypeError(f"unsupported config type {hint} for {key}")


def field_types(section_cls) -> dict[str, typing.Any]:
    return typing.get_type_hints(section_cls)


def did_you_mean(name: str, valid, prefix: str = "") -> str:
    """ " (did you mean X?)" for the closest valid name to a misspelled one, or nothing."""
    import difflib

    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.6)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


def build(raw: dict | None) -> RunConfig:
    """A RunConfig from nested dicts; unknown sections or keys fail with the valid names."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise UserError("config: expected a mapping of sections (model, data, fed, ...)")
    sections = {}
    for name in raw:
        if name not in SECTIONS:
            raise UserError(
                f"unknown config section {name!r}{did_you_mean(str(name), SECTIONS)}; valid: {', '.join(SECTIONS)}"
            )
    for name in SECTIONS:
        cls = _section_class(name)
        values = raw.get(name) or {}
        if not isinstance(values, dict):
            raise UserError(f"{name}: expected a mapping of keys, got {values!r}")
        types_ = field_types(cls)
        kwargs = {}
        for key, value in values.items():
            if key not in types_:
                raise UserError(
                    f"unknown config key {name}.{key}{did_you_mean(key, types_, name + '.')}; "
                    f"valid keys in {name}: {', '.join(types_)}"
                )
            kwargs[key] = _check_type(f"{name}.{key}", value, types_[key])
        sections[name] = cls(**kwargs)
    return RunConfig(**sections)


def to_dict(config: RunConfig) -> dict:
    return dataclasses.asdict(config)


def load_yaml(path: str, what: str = "--config") -> dict:
    """A config file: a mapping of sections, each a mapping of keys (checked by `build`)."""
    data = read_yaml(path, what) or {}
    if not isinstance(data, dict):
        raise UserError(
            f"{what}: {path}: expected a mapping of sections (model:, train:, ...), got a {type(data).__name__}"
        )
    for section, values in data.items():
        if values is not None and not isinstance(values, dict):
            raise UserError(f"{what}: {path}: section {section!r} must be a mapping of keys, got {values!r}"[:300])
    return data


def apply_overrides(raw: dict, overrides: Sequence[tuple[str, ...]]) -> dict:
    """Set `section.key` values given as strings on the command line (parsed as YAML scalars)."""
    raw = {k: dict(v or {}) for k, v in raw.items()} if raw else {}
    for dotted, text in overrides:
        if dotted.count(".") != 1:
            raise UserError(f"--{dotted}: expected --section.key (e.g. --fed.rounds 3)")
        section, key = dotted.split(".")
        if section not in SECTIONS:
            raise UserError(
                f"unknown config section in --{dotted}{did_you_mean(section, SECTIONS)}; valid: {', '.join(SECTIONS)}"
            )
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        if field_types(_section_class(section)).get(key) is str:
            value = text  # keep strings verbatim ("1e-3" or "007" stay strings)
        raw.setdefault(section, {})[key] = value
    return raw


def help_lines(objective: str = "sft") -> list[str]:
    """`--section.key  (type, default) help` for every field, for --help: the defaults that run with
    `openfedllm OBJECTIVE` (dpo's own, DPO_DEFAULTS, over the shared ones)."""
    lines = []
    defaults = build(DPO_DEFAULTS) if objective == "dpo" else RunConfig()
    for section in SECTIONS:
        cls = _section_class(section)
        for f in dataclasses.fields(cls):
            default = getattr(getattr(defaults, section), f.name)
            hint = field_types(cls)[f.name]
            literal = typing.get_origin(hint) is Literal
            type_name = "|".join(typing.get_args(hint)) if literal else getattr(hint, "__name__", "list")
            lines.append(f"  --{section}.{f.name} ({type_name}, default {default!r})\n      {f.metadata['help']}")
    return lines
