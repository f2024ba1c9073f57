"""Financial sentiment: FPB, FiQA-SA, TFNS and NWGI, as FinGPT's benchmark scores them (Wang et al.
2023; fingpt/FinGPT_Benchmark/benchmarks/{fpb,fiqa,tfns,nwgi}.py, which produced the paper's finance
numbers): the prompt "Instruction: What is the sentiment of this news? Please choose an answer from
{negative/neutral/positive}.\nInput: ...\nAnswer: ", three classes, accuracy and macro, micro and
weighted F1. A generated answer is read by FinGPT's `change_target` (the variant its test_* functions
apply, without lower-casing): "positive" or "Positive" anywhere -> positive, else "negative" or
"Negative" -> negative, else neutral.

Held-out rows are FinGPT's, not the whole sets: most of FPB and FiQA-SA is inside
fingpt-sentiment-train (the paper's finance training data), so FinGPT scores
- FPB on the test part of `train_test_split(seed=42)` (25%) of the 50-agree sentences;
- FiQA-SA on the test part of `train_test_split(0.226, seed=42)` of train + validation + test;
- TFNS on its validation split, NWGI on its test split, whole.
The splits are made by `datasets` itself, so they are FinGPT's rows exactly.

Native layouts (`--data`), each also the hub dataset named in SOURCES when online:
- FPB (Malo et al. 2014): Sentences_50Agree.txt ("sentence@label", Latin-1) or rows
  {sentence, label 0 negative / 1 neutral / 2 positive} (financial_phrasebank), all of the set;
- FiQA-SA (pauri32/fiqa-2018): rows {sentence, sentiment_score, format}, all of the set: one file, a
  folder of its split files (read train, validation, test in that order) or a `save_to_disk` folder;
  score < -0.1 negative, >= 0.1 positive, else neutral, as FinGPT maps it; "post" rows are tweets;
- TFNS (zeroshot/twitter-financial-news-sentiment): rows {text, label 0 bearish / 1 bullish / 2 neutral};
- NWGI (oliverwang15/news_with_gpt_instructions): rows {news, label: seven grades}, which FinGPT
  folds to three (strong / moderately -> negative or positive, mildly -> neutral).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .choice import Choice
from .files import need, table_rows

LABELS = ["negative", "neutral", "positive"]
SOURCES = {
    "fpb": ("financial_phrasebank", "sentences_50agree", "train"),
    "fiqa-sa": ("pauri32/fiqa-2018", None, "train+validation+test"),
    "tfns": ("zeroshot/twitter-financial-news-sentiment", None, "validation"),
    "nwgi": ("oliverwang15/news_with_gpt_instructions", None, "test"),
}
NWGI = {
    "strong negative": "negative",
    "moderately negative": "negative",
    "mildly negative": "neutral",
    "neutral": "neutral",
    "mildly positive": "neutral",
    "moderately positive": "positive",
    "strong positive": "positive",
}
TFNS = {0: "negative", 1: "positive", 2: "neutral"}
HELD_OUT = {"fpb": None, "fiqa-sa": 0.226}  # FinGPT's train_test_split test_size (None: datasets' 0.25)
FIQA_SPLITS = ("train", "valid", "test")  # the order FinGPT concatenates fiqa-2018's splits in


def change_target(text: str) -> str:
    """FinGPT's reading of a generated answer (its benchmarks' change_target)."""
    if "positive" in text or "Positive" in text:
        return "positive"
    if "negative" in text or "Negative" in text:
        return "negative"
    return "neutral"


def fingpt_split(name: str, rows: list) -> tuple[list, list]:
    """(train part, test part) of FPB or FiQA-SA as FinGPT splits them; other sets: ([], all)."""
    if name not in HELD_OUT:
        return [], rows
    import datasets

    index = datasets.Dataset.from_dict({"i": list(range(len(rows)))})
    parts = index.train_test_split(test_size=HELD_OUT[name], seed=42)
    return [rows[i] for i in parts["train"]["i"]], [rows[i] for i in parts["test"]["i"]]


def _fiqa_table(data: str | None) -> list[dict]:
    """All of fiqa-2018 in FinGPT's order: train, validation, test."""
    if data and Path(data).expanduser().is_dir():
        folder = Path(data).expanduser()
        if (folder / "dataset_dict.json").is_file():  # save_to_disk, as FinGPT keeps it
            import datasets

            saved = datasets.load_from_disk(str(folder))
            return [r for split in ("train", "validation", "test") if split in saved for r in saved[split].to_list()]
        files = [f for f in folder.iterdir() if f.is_file()]
        order = [
            next((i for i, key in enumerate(FIQA_SPLITS) if key in f.name.lower()), len(FIQA_SPLITS)) for f in files
        ]
        return [r for _, f in sorted(zip(order, files)) for r in table_rows("fiqa-sa", str(f))]
    return table_rows("fiqa-sa", data, SOURCES["fiqa-sa"])


def _fiqa_label(score: float) -> str:
    return "negative" if score < -0.1 else "neutral" if score < 0.1 else "positive"


def _fpb_rows(data: str | None) -> list[tuple[str, str, str]]:
    if data and Path(data).expanduser().suffix == ".txt":
        file = Path(data).expanduser()
        if not file.is_file():
            raise UserError(f"fpb: {data}: file not found")
        rows = []
        for i, line in enumerate(file.read_text(encoding="latin-1").splitlines(), start=1):
            if line.strip():
                text, sep, label = line.rpartition("@")
                if not sep or label.strip() not in LABELS:
                    raise UserError(f"fpb: {data}: line {i} is not 'sentence@negative|neutral|positive'")
                rows.append((text.strip(), label.strip(), "news"))
        if not rows:
            raise UserError(f"fpb: {data}: no rows")
        return rows
    table = table_rows("fpb", data, SOURCES["fpb"])
    need("fpb", table, ("sentence",), data or "hub", "rows {sentence, label}")
    return [
        (r["sentence"], LABELS[int(r["label"])] if str(r["label"]).isdigit() else str(r["label"]), "news")
        for r in table
    ]


def rows_of(name: str, data: str | None) -> list[tuple[str, str, str]]:
    """(text, label, kind) triples; kind is "news" or "tweet", which the prompt names."""
    if name == "fpb":
        out = _fpb_rows(data)
    elif name == "fiqa-sa":
        rows = _fiqa_table(data)
        need(name, rows, ("sentence", "sentiment_score"), data or "hub", "rows {sentence, sentiment_score, format}")
        out = [
            (r["sentence"], _fiqa_label(float(r["sentiment_score"])), "tweet" if r.get("format") == "post" else "news")
            for r in rows
        ]
    elif name == "tfns":
        rows = table_rows(name, data, SOURCES[name])
        need(name, rows, ("text",), data or "hub", "rows {text, label 0/1/2}")
        out = [(r["text"], TFNS[int(r["label"])], "tweet") for r in rows]
    else:
        rows = table_rows(name, data, SOURCES[name])
        need(name, rows, ("news", "label"), data or "hub", "rows {news, label}")
        unknown = sorted({r["label"] for r in rows} - NWGI.keys())
        if unknown:
            raise UserError(f"nwgi: unknown labels {unknown}; expected {', '.join(NWGI)}")
        out = [(r["news"], NWGI[r["label"]], "news") for r in rows]
    bad = next((label for _, label, _ in out if label not in LABELS), None)
    if bad is not None:
        raise UserError(f"{name}: unknown label {bad!r}; expected {', '.join(LABELS)}")
    return out


def normal_text(text: str) -> str:
    """A sentence as the overlap check compares it: lower case, whitespace collapsed."""
    return " ".join(str(text).lower().split())


def held_out_texts(name: str, data: str | None) -> list[str]:
    """The sentences a benchmark scores (after FinGPT's split), for the training-overlap check."""
    return [normal_text(t) for t, _, _ in fingpt_split(name, rows_of(name, data))[1]]


def items(name: str, data: str | None, limit: int | None, shots: int = 0) -> list[Choice]:
    def prompt(text, kind):
        return (
            f"Instruction: What is the sentiment of this {kind}? Please choose an answer from "
            f"{{negative/neutral/positive}}.\nInput: {text}\nAnswer: "
        )

    train, test = fingpt_split(name, rows_of(name, data))
    if not train:  # sets scored whole: the demonstrations are their first rows
        train, test = test[:shots], test[shots:]
    demo = "".join(f"{prompt(t, k)}{label}\n\n" for t, label, k in train[:shots])
    return [
        Choice(
            prompt=demo + prompt(t, k),
            options=list(LABELS),
            labels=LABELS,
            gold=LABELS.index(label),
            question=(demo + prompt(t, k)).rstrip(),
            read=change_target,
        )
        for t, label, k in test[:limit]
    ]
