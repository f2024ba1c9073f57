"""Known datasets, usable by name (`data.name`): the paper's eight training sets and a few of the
same kinds. Each entry says where it lives on the Hugging Face hub, its format and columns, and
which column labels a row (for Dirichlet and by-key splits).

With `data.path` too, the entry's format and columns are applied to a local copy (a file or a
folder, e.g. a `datasets` save_to_disk folder); without it the hub is used (online, or the
Hugging Face cache).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from .instructions import Columns


@dataclass(frozen=True)
class KnownDataset:
    hub: tuple[str, ...]  # hub ids holding this layout; the first is loaded by name
    objective: str  # sft or dpo
    format: str  # an instruction format, or a preference format
    columns: Columns | None = None  # instruction formats: where the fields live
    label: str = ""  # column whose values label rows (Dirichlet / by-key splits); "" none
    config: str | None = None  # the hub dataset's config name
    split: str = "train"
    about: str = ""


_ALPACA = Columns("instruction", "output", "input")

DATASETS = {
    # the paper's training sets
    "alpaca": KnownDataset(("tatsu-lab/alpaca",), "sft", "alpaca", _ALPACA, about="general instructions (52k)"),
    "alpaca-cleaned": KnownDataset(
        ("yahma/alpaca-cleaned",), "sft", "alpaca", _ALPACA, about="Alpaca with its known errors fixed"
    ),
    "alpaca-gpt4": KnownDataset(
        ("vicgalle/alpaca-gpt4",), "sft", "alpaca", _ALPACA, about="Alpaca instructions answered by GPT-4"
    ),
    "fingpt-sentiment": KnownDataset(
        ("FinGPT/fingpt-sentiment-train",), "sft", "alpaca", _ALPACA, about="financial sentiment (76k)"
    ),
    "medalpaca-flashcards": KnownDataset(
        ("medalpaca/medical_meadow_medical_flashcards",), "sft", "alpaca", _ALPACA, about="medical flashcards (34k)"
    ),
    "code-alpaca": KnownDataset(
        ("lucasmccabe-lmi/CodeAlpaca-20k", "sahil2801/CodeAlpaca-20k"),
        "sft",
        "alpaca",
        _ALPACA,
        about="code instructions (20k)",
    ),
    "mathinstruct": KnownDataset(
        ("TIGER-Lab/MathInstruct",),
        "sft",
        "alpaca",
        Columns("instruction", "output", None),
        label="source",
        about="math, labelled by source dataset (262k)",
    ),
    "ultrafeedback": KnownDataset(
        ("HuggingFaceH4/ultrafeedback_binarized",),
        "dpo",
        "ultrafeedback",
        split="train_prefs",
        about="preference pairs (61k)",
    ),
    "hh-rlhf": KnownDataset(("Anthropic/hh-rlhf",), "dpo", "hh", about="helpful / harmless dialogues (161k)"),
    # others of the same kinds
    "dolly": KnownDataset(
        ("databricks/databricks-dolly-15k",),
        "sft",
        "alpaca",
        Columns("instruction", "response", "context"),
        label="category",
        about="human-written instructions in 8 categories (15k)",
    ),
    "wizardlm": KnownDataset(
        ("WizardLMTeam/WizardLM_evol_instruct_70k",),
        "sft",
        "alpaca",
        Columns("instruction", "output", None),
        about="evolved instructions (70k)",
    ),
    "gsm8k": KnownDataset(
        ("openai/gsm8k",),
        "sft",
        "prompt_response",
        Columns("question", "answer", None),
        config="main",
        about="grade-school math, answer after #### (7.5k)",
    ),
}


def known(name: str, objective: str | None = None) -> KnownDataset:
    """The registry entry of `name`; with `objective`, it must hold that kind of data."""
    if name not in DATASETS:
        # A hub id: the registry's entry when it lists that id, else the hub dataset as it is, its
        # layout detected from its columns (or given by data.format).
        entry_of_id = next((e for e in DATASETS.values() if name in e.hub), None)
        if entry_of_id is not None:
            return known(next(k for k, e in DATASETS.items() if e is entry_of_id), objective)
        if "/" not in name:
            raise UserError(
                f"data.name: unknown dataset {name!r}; known: {', '.join(DATASETS)}, or any hub id (owner/name)"
            )
        return KnownDataset(hub=(name,), objective=objective or "sft", format="auto", about="a hub dataset")
    entry = DATASETS[name]
    if objective is not None and entry.objective != objective:
        raise UserError(
            f"data.name: {name} is {entry.objective} data, not {objective}; train it with openfedllm {entry.objective}"
        )
    return entry
