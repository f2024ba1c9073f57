"""`openfedllm data inspect`: the client split a config would train on, before any training.

Reads and tokenizes the data exactly as `sft` / `dpo` would (same config, same hygiene, same
split), loads only the tokenizer, and prints one row per client: size, label mix, mean prompt and
response length in tokens; and draws client sizes and label mix into a PNG.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from . import models
from .config import RunConfig
from .partition import label_mix
from .textfmt import text_table

TOP_LABELS = 8  # labels drawn by name in the plot; the rest are "other"


def inspect(config: RunConfig, png: Path) -> list[dict]:
    from .setup import split_clients, tokenized_data

    config.validate()
    dpo = config.train.objective == "dpo"
    config.data.tokenize = "eager"  # every row's token counts are the report
    _, data = tokenized_data(config, models.resolve_model(config.model.name))
    labels = data["train_domains"]
    clients = split_clients(labels, config)
    rows = []
    for cid, idx in enumerate(clients):
        prompt, response = [], []
        for i in idx:
            row = data["train_rows"][i]
            for t in (row.chosen, row.rejected) if dpo else (row,):
                prompt.append(t.prompt_len)
                response.append(len(t.input_ids) - t.prompt_len)
        rows.append(
            {
                "client": cid,
                "size": len(idx),
                "labels": Counter(labels[i] for i in idx),
                "prompt_tokens": sum(prompt) / max(len(prompt), 1),
                "response_tokens": sum(response) / max(len(response), 1),
            }
        )
    unit = "pairs" if dpo else "examples"
    print(
        f"{config.fed.split} split of {len(labels)} training {unit} over {len(clients)} clients "
        f"({len(set(labels))} distinct labels; {sum(r['size'] for r in rows)} assigned)"
    )
    print(
        "\n".join(
            text_table(
                ["client", "size", "label mix (top 3)", "prompt tokens", "response tokens"],
                [
                    [
                        str(r["client"]),
                        str(r["size"]),
                        label_mix(r["labels"], r["size"]),
                        f"{r['prompt_tokens']:.0f}",
                        f"{r['response_tokens']:.0f}",
                    ]
                    for r in rows
                ],
            )
        )
    )
    _plot(rows, png)
    print(f"plot      {png}")
    return rows


def _plot(rows: list[dict], png: Path) -> None:
    fig = figure(rows)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)


def figure(rows: list[dict]):
    """Client sizes and label mix, one bar per client, the client axis in whole numbers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    total: Counter[str] = Counter()
    for r in rows:
        total.update(r["labels"])
    named = [label for label, _ in total.most_common(TOP_LABELS)]
    fig, (ax_size, ax_mix) = plt.subplots(1, 2, figsize=(12, 4.2))
    ids = [r["client"] for r in rows]
    ax_size.bar(ids, [r["size"] for r in rows], color="tab:blue")
    ax_size.set_xlabel("client")
    ax_size.set_ylabel("training rows")
    ax_size.set_title("Client sizes")
    bottom = [0.0] * len(rows)
    for label in named + (["other"] if len(total) > len(named) else []):
        shares = [
            (r["labels"].get(label, 0) if label != "other" else r["size"] - sum(r["labels"].get(x, 0) for x in named))
            / max(r["size"], 1)
            for r in rows
        ]
        ax_mix.bar(ids, shares, bottom=bottom, label=label)
        bottom = [b + s for b, s in zip(bottom, shares)]
    ax_mix.set_xlabel("client")
    ax_mix.set_ylabel("share of the client's rows")
    ax_mix.set_title("Label mix per client")
    ax_mix.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    for ax in (ax_size, ax_mix):  # client ids, never 0.5
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig
