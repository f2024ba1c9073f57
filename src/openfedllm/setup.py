"""Setting a run up: read and check the data, load the model, tokenize once, split over clients.

`prepare` does every check that can fail on a user's input before anything is written, so a run
directory exists only for a run that can start. The simulation, the Flower ServerApp and each
Flower node prepare through it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import torch

from . import attacks, backward_precision, faults, memory, models
from .client import Objective, next_token_loss
from .config import RunConfig
from .data import Example, load_examples, split_heldout
from .data.lazy import LazyRows
from .data.preference import load_preference_data, tokenize_pair
from .data.preference_suite import SAFETY, builtin_preferences, harmful_instructions
from .data.templates import check_template, dialogue_prompt_ids, prompt_ids, tokenize, truncate
from .dpo import DPOLoss, Reference, compute_reference
from .errors import UserError
from .evaluation import finance
from .partition import partition

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from .models import Model


LAZY_FROM = 50_000  # data.tokenize auto: training rows past which they are tokenized when first used


@dataclass
class Setup:
    """Everything a run needs, prepared (and validated) before anything is written to disk."""

    config: RunConfig
    model: Model
    tokenizer: PreTrainedTokenizerBase
    train_rows: list  # Tokenized examples (sft) or PairRows with their reference log-probs (dpo)
    train_domains: list[str]
    clients: list[list[int]]  # indices into train_rows, per client
    heldout: list[Example]  # held-out tasks whose generated answers are checked
    heldout_rows: list  # held-out Tokenized examples (loss) or PairRows (preference metrics)
    heldout_prompts: list[list[int]]  # generation prompts of `heldout`
    initial_state: dict[str, torch.Tensor]
    dropped: int  # training rows whose response was cut away entirely by max_length
    over_length: int = 0  # sft: training rows longer than max_length (cut, or dropped by data.over_length)
    objective: Objective = next_token_loss  # what a client's local steps minimise
    harmful_prompts: list[list[int]] = field(default_factory=list)  # dpo, built-in set: refusal rate
    train_texts: set[str] = field(default_factory=set)  # sft with a finance eval.benchmark: rows' texts, normalised


def prepare(config: RunConfig, train: bool = True, heldout: bool = True) -> Setup:
    """Read the data, load the model, tokenize once, split over clients. Writes no run files.

    Each role prepares only what it uses: a deployment's server (`train=False`) evaluates and never
    trains, so it tokenizes no training rows; a node (`heldout=False`) trains and never evaluates,
    so it tokenizes no held-out rows and computes no held-out DPO references."""
    config.validate()
    faults.interrupt("prepare")
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    device = models.resolve_device(config.model.device)  # an absent device fails before any data is read
    model_path = models.resolve_model(config.model.name)
    dpo = config.train.objective == "dpo"
    tokenizer, data = tokenized_data(config, model_path, train, heldout)
    clients = split_clients(data["train_domains"], config) if train else [[] for _ in range(config.fed.num_clients)]
    if train and config.fed.rank_by_size and not config.fed.client_ranks:
        from .lora_aggregation import ranks_by_size

        config.fed.client_ranks = ranks_by_size(config.fed.rank_by_size, [len(c) for c in clients])
        print(f"fed.rank_by_size: client ranks {config.fed.client_ranks} (by training rows)")
    if train:  # malicious clients' data, before any reference log-prob is computed on it
        clients = attacks.poison(config, data, clients, harmful_rows(config, tokenizer))
    if not dpo and heldout and config.attack.kind == "harmful_data":  # the safety attack's measure
        data["harmful_prompts"] = harmful_prompts(config, tokenizer)
    if train:  # before the weights load: a 7B model that cannot fit fails in seconds, not after minutes
        memory.check(config, model_path, device)
    model = load_model(config, model_path, device)
    setup = Setup(config, model, tokenizer, clients=clients, initial_state=models.trainable_state(model), **data)
    if dpo:
        if config.dpo.disable_dropout:
            models.disable_dropout(model)
        # The reference is the model as it starts: a fresh adapter is switched off for it; a given SFT
        # adapter, or all weights as they start when every weight trains, are loaded back to compute
        # it (switching "the adapter" off does nothing without one). Held-out pairs get theirs now,
        # in the batches evaluation uses.
        fresh_adapter = models.is_peft(model) and not config.model.adapter
        start = None if fresh_adapter else setup.initial_state
        compute_reference(
            model,
            setup.heldout_rows,
            tokenizer.pad_token_id,
            config.eval.batch_size,
            config.train.packing,
            adapter_disabled=fresh_adapter,
            desc="reference log-probs (held-out pairs)",
        )
        reference = Reference(
            model, setup.train_rows, tokenizer.pad_token_id, config.eval.batch_size, config.train.packing, start
        )
        from .lora_aggregation import LORA_AGGREGATIONS

        if train and LORA_AGGREGATIONS[config.fed.lora_aggregation].merges_into_base:
            # the rounds will change the frozen weights: every reference value from the original ones, now
            reference.ensure(setup.train_rows)
        setup.objective = DPOLoss(config.dpo.beta, config.dpo.loss, config.dpo.rpo_alpha, reference)
    return setup


def harmful_rows(config: RunConfig, tokenizer) -> list:
    """The safety attack's rows (harmful requests answered), tokenized; empty unless it is configured."""
    if config.attack.kind != "harmful_data" or not config.attack.fraction:
        return []
    train, _ = harmful_instructions(config.data.heldout_per_domain, config.train.seed)
    rows = [tokenize(e, config.data.template, tokenizer, config.data.max_length) for e in train]
    return [r for r in rows if r is not None]


def harmful_prompts(config: RunConfig, tokenizer) -> list[list[int]]:
    """Held-out harmful requests (never trained on): the refusal rate's prompts."""
    _, held = harmful_instructions(config.data.heldout_per_domain, config.train.seed)
    return [prompt_ids(e, config.data.template, tokenizer, config.data.max_length) for e in held]


def split_clients(labels: list[str], config: RunConfig) -> list[list[int]]:
    fed = config.fed
    return partition(
        labels,
        fed.num_clients,
        fed.split,
        config.train.seed,
        fed.dirichlet_alpha,
        key_min_size=fed.key_min_size,
        key_max_size=fed.key_max_size,
        exponent=fed.quantity_exponent,
        shards_per_client=fed.shards_per_client,
    )


def load_model(config: RunConfig, model_path: str, device: torch.device):
    model = models.load_base_model(
        model_path, config.model.dtype, config.model.quantization, device, config.train.gradient_checkpointing
    )
    if config.model.adapter:
        found = models.adapter_config(config.model.adapter)
        # The adapter's own shape wins; the saved config.yaml then says what was trained.
        config.lora.rank, config.lora.alpha = found["rank"], found["alpha"]
        config.lora.target_modules = found["target_modules"]
        print(
            f"Starting from the adapter in {found['path']} (rank {found['rank']}, "
            f"modules {', '.join(found['target_modules'])})"
        )
        model = models.load_adapter(model, found["path"])
    elif config.model.finetune == "lora":
        if not config.lora.target_modules:  # the names used are saved with the run's config
            config.lora.target_modules = models.attention_modules(model)
        torch.manual_seed(config.train.seed)  # the initial adapter is part of the run's identity
        model = models.add_lora(
            model, config.lora.rank, config.lora.alpha, config.lora.dropout, config.lora.target_modules
        )
        if config.fed.lora_aggregation == "ffa":  # A stays at this seeded init on every client and node
            models.freeze_lora_a(model)
    if config.train.backward_precision == "bfloat16":
        backward_precision.use_bf16_backward(model)
        if device.type != "cpu" or not backward_precision.supported():
            print(
                "train.backward_precision bfloat16: no bfloat16 matrix units here (AMX or AVX512-BF16 on a "
                "CPU), so the backward pass stays float32"
            )
    return model


def tokenized_data(config: RunConfig, model_path: str, train: bool = True, heldout: bool = True) -> tuple:
    """(tokenizer, the run's rows tokenized: `instruction_data` or `preference_data`). The data is
    read (a malformed file refused) before the tokenizer loads: transformers' import alone is ~2.5 s
    here, and a bad file should not wait for it."""
    dpo = config.train.objective == "dpo"
    read = read_preferences(config) if dpo else load_examples(config.data, config.train.seed, config.fed.split)
    tokenizer = models.load_tokenizer(model_path)
    check_template(config.data.template, tokenizer)
    return tokenizer, (preference_data if dpo else instruction_data)(config, tokenizer, read, train, heldout)


def instruction_data(
    config: RunConfig, tokenizer, read: tuple, train_rows: bool = True, heldout_rows: bool = True
) -> dict:
    """SFT rows: each example tokenized once for the whole run, not per round (the training rows
    only with `train_rows`, the held-out ones only with `heldout_rows`). `read`: what
    `load_examples` gave."""
    train, heldout = read
    if not heldout_rows:
        heldout = []
    limit = config.data.max_length

    def fit(example) -> tuple:
        """(the row within data.max_length, or None if it has no response token left or is dropped;
        whether it was longer)."""
        row = tokenize(example, config.data.template, tokenizer, 0)
        if row is None or len(row.input_ids) <= limit:
            return row, False
        return (None if config.data.over_length == "drop" else truncate(row, limit)), True

    mode = config.data.tokenize
    rows: list | LazyRows
    if mode == "lazy" or (mode == "auto" and len(train) > LAZY_FROM):
        rows, domains, dropped, over = LazyRows(train if train_rows else [], fit), [e.domain for e in train], 0, 0
    else:
        rows, domains, dropped, over = [], [], 0, 0
        for example in train if train_rows else ():
            row, longer = fit(example)
            over += longer
            if row is None:
                dropped += not (longer and config.data.over_length == "drop")
                continue
            rows.append(row)
            domains.append(example.domain)
    if train_rows and not len(rows):
        raise UserError(
            f"data: no training example keeps a response within data.max_length={config.data.max_length} tokens"
        )
    tokenized = [(e, tokenize(e, config.data.template, tokenizer, config.data.max_length)) for e in heldout]
    heldout = [e for e, row in tokenized if row is not None]
    # Kept only when a finance benchmark will be checked against them (benchmark_overlap): a large
    # file's texts are not held for nothing.
    checked = any(b.partition("=")[0] in finance.SOURCES for b in config.eval.benchmarks)
    texts = {finance.normal_text(t) for e in train for t in (e.input, e.instruction) if t} if checked else set()
    return {
        "train_rows": rows,
        "train_domains": domains,
        "heldout": heldout,
        "train_texts": texts,
        "heldout_rows": [row for _, row in tokenized if row is not None],
        "heldout_prompts": [prompt_ids(e, config.data.template, tokenizer, config.data.max_length) for e in heldout],
        "dropped": dropped,
        "over_length": over,
    }


def read_preferences(config: RunConfig) -> tuple[list, list, list[Example]]:
    """(training pairs, held-out pairs, held-out tasks) of the built-in preference set or a user's
    file, not yet tokenized."""
    data = config.data
    if not (data.path or data.name):
        return builtin_preferences(data.train_per_domain, data.heldout_per_domain, config.train.seed)
    prefs, report, where = load_preference_data(data)
    print(f"Preference data {where}: {report.summary(len(prefs))}")
    if data.eval_path:  # the user's validation pairs are the held-out ones
        held, held_report, held_where = load_preference_data(replace(data, path=data.eval_path, name=""))
        print(f"Validation pairs {held_where}: {held_report.summary(len(held))}")
        return prefs, held, []
    train, held = split_heldout(prefs, data, config.train.seed)
    return train, held, []


def preference_data(
    config: RunConfig, tokenizer, read: tuple, train_rows: bool = True, heldout_rows: bool = True
) -> dict:
    """DPO pairs of the built-in preference set or a user's file, tokenized once (the training pairs
    only with `train_rows`, the held-out ones and tasks only with `heldout_rows`). `read`: what
    `read_preferences` gave."""
    data = config.data
    train, held, tasks = read

    def pairs(prefs):
        tokenized = [
            (p, tokenize_pair(p, data.template, tokenizer, data.max_length, config.dpo.max_prompt_length))
            for p in prefs
        ]
        return [p for p, row in tokenized if row is not None], [row for _, row in tokenized if row is not None]

    if not heldout_rows:
        held, tasks = [], []
    train_kept, kept_rows = pairs(train if train_rows else [])
    if train_rows and not kept_rows:
        raise UserError(
            f"data: no preference pair keeps both responses within data.max_length={data.max_length} "
            f"tokens (prompts cut to dpo.max_prompt_length={config.dpo.max_prompt_length})"
        )
    held_kept, held_rows = pairs(held)
    harmful = [
        dialogue_prompt_ids(p.messages(), data.template, tokenizer, data.max_length)
        for p in held_kept
        if p.domain == SAFETY
    ]
    return {
        "train_rows": kept_rows,
        "train_domains": [p.domain for p in train_kept],
        "heldout": tasks,
        "heldout_rows": held_rows,
        "heldout_prompts": [prompt_ids(e, data.template, tokenizer, data.max_length) for e in tasks],
        "harmful_prompts": harmful,
        "dropped": len(train) - len(kept_rows) if train_rows else 0,
    }
