"""`openfedllm eval`: measure a model, an adapter, a run, or a samples file on the paper's benchmarks.

One registry of benchmark names (BENCHMARKS). Each entry reads the benchmark's native files (or
its hub copy when online), asks the model through `lm.LM`, and returns {"metrics": {...}, ...}.
`run_benchmarks` is shared by the CLI and by evaluation during federated training. The CLI writes
OUT.json (metrics, counts, seconds and the model / run / data / settings used) atomically and
prints a markdown table; answer files of open-ended benchmarks go to OUT.NAME/ beside it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError
from . import choice, crass, finance, generative, medical, mmlu, open_ended
from .code import code_benchmark

if TYPE_CHECKING:
    from .lm import LM
from .judge import Judge


def _no_model() -> LM:
    raise UserError("this benchmark needs a model (--model or --run)")


@dataclass
class Settings:
    """What every benchmark may use; `tokens`, `shots` and `limit` fall back to each benchmark's own."""

    data: dict[str, str] = field(default_factory=dict)  # benchmark name -> path; "" -> for every benchmark
    samples: str | None = None
    limit: int | None = None
    shots: int | None = None
    modes: tuple[str, ...] = choice.MODES
    max_new_tokens: int | None = None
    ks: tuple[int, ...] = (1, 10, 100)
    out_prefix: Path | None = None  # OUT.json without its suffix: answer files go to OUT.NAME/
    model_id: str = "model"
    judge: Judge | None = None
    judge_prompts: str | None = None
    get_lm: Callable[[], LM] = _no_model  # loaded on first use (a samples file needs no model)

    def path(self, name: str) -> str | None:
        return self.data.get(name) or self.data.get("") or None

    def tokens(self, default: int) -> int:
        return self.max_new_tokens or default

    def out_dir(self, name: str) -> Path:
        return Path(f"{self.out_prefix}.{name}") if self.out_prefix else Path(f"eval.{name}")


def _choice(load, shots: int, classification: bool = False):
    def run(s: Settings, name: str) -> dict:
        items = load(name, s.path(name), s.limit, s.shots if s.shots is not None else shots)
        if not items:
            raise UserError(f"{name}: no questions (after the demonstrations); check --data, --shots and --limit")
        return choice.evaluate(s.get_lm(), items, s.modes, classification, max_new_tokens=s.tokens(16))

    return run


def _free(fn, shots: int, tokens: int):
    def run(s: Settings, name: str) -> dict:
        return fn(s.get_lm(), s.path(name), s.limit, s.shots if s.shots is not None else shots, s.tokens(tokens))

    return run


def _code(s: Settings, name: str) -> dict:
    return code_benchmark(name, s.get_lm, s.path(name), s.samples, s.limit, s.ks, s.tokens(384))


def _judged(s: Settings, name: str) -> dict:
    return open_ended.judged_bench(
        name,
        s.get_lm,
        s.path(name),
        s.limit,
        s.out_dir(name),
        s.model_id,
        s.judge,
        s.judge_prompts,
        s.tokens(open_ended.ANSWER_TOKENS),
    )


def _advbench(s: Settings, name: str) -> dict:
    return open_ended.advbench(s.get_lm, s.path(name), s.limit, s.out_dir(name), s.tokens(64))


def _instruction_examples(name: str, path: str | None):
    from ..config import DataConfig
    from ..data import load_instruction_data

    if not path:
        raise UserError(f"{name}: needs --data, an instruction file (any format `openfedllm sft` reads)")
    examples, _, _ = load_instruction_data(DataConfig(path=path))
    return examples


def _perplexity(s: Settings, name: str) -> dict:
    from ..data.templates import tokenize
    from ..evaluate import heldout_loss

    examples = _instruction_examples(name, s.path(name))[: s.limit]
    lm = s.get_lm()
    rows = [r for r in (tokenize(e, lm.template, lm.tokenizer, lm.max_length) for e in examples) if r]
    loss = heldout_loss(lm.model, rows, lm.tokenizer.pad_token_id, lm.batch_size)
    return {"metrics": {"loss": loss, "perplexity": math.exp(loss)}, "questions": len(rows)}


def _overlap(s: Settings, name: str) -> dict:
    from ..data.templates import user_text
    from .metrics import bleu, exact_match, rouge_l, token_f1

    examples = [e for e in _instruction_examples(name, s.path(name)) if not e.turns][: s.limit]
    said = [t.strip() for t in s.get_lm().chat([user_text(e) for e in examples], max_new_tokens=s.tokens(256))]
    refs = [e.output for e in examples]
    n = len(examples)
    return {
        "metrics": {
            "exact_match": sum(map(exact_match, said, refs)) / n,
            "token_f1": sum(map(token_f1, said, refs)) / n,
            "rouge_l": sum(map(rouge_l, said, refs)) / n,
            "bleu": bleu(said, refs),
        },
        "questions": n,
    }


def _mc(module_fn):
    return lambda name, data, limit, shots: module_fn(data, limit, shots)


BENCHMARKS: dict[str, Callable[[Settings, str], dict]] = {
    "mmlu": _choice(_mc(mmlu.items), shots=5),
    "bbh": _free(generative.bbh, shots=3, tokens=32),
    "drop": _free(generative.drop, shots=3, tokens=32),
    "crass": _choice(_mc(crass.items), shots=3),
    "gsm8k": _free(generative.gsm8k, shots=0, tokens=256),
    "humaneval": _code,
    "mbpp": _code,
    **{name: _choice(finance.items, shots=0, classification=True) for name in finance.SOURCES},
    "medqa": _choice(_mc(medical.medqa), shots=0),
    "medmcqa": _choice(_mc(medical.medmcqa), shots=0),
    "pubmedqa": _choice(_mc(medical.pubmedqa), shots=0),
    "mt-bench": _judged,
    "vicuna-bench": _judged,
    "advbench": _advbench,
    "perplexity": _perplexity,
    "overlap": _overlap,
}
SAMPLES_OK = ("humaneval", "mbpp")


def check_names(names: list[str]) -> None:
    for name in names:
        if name not in BENCHMARKS:
            raise UserError(f"--benchmark: unknown benchmark {name!r}; available: {', '.join(BENCHMARKS)}")


def run_benchmarks(names: list[str], settings: Settings) -> dict[str, dict]:
    check_names(names)
    if settings.samples and any(n not in SAMPLES_OK for n in names):
        raise UserError(f"--samples scores code benchmarks only ({', '.join(SAMPLES_OK)})")
    results = {}
    for name in names:
        start = time.perf_counter()
        results[name] = BENCHMARKS[name](settings, name)
        results[name]["seconds"] = round(time.perf_counter() - start, 2)
    return results


def load_model(model: str | None, run: str | None, device: str = "auto"):
    """(model, tokenizer, template, description): the default model, a model id/folder, or a run's adapter,
    on `device` (a `model.device` value) in float32 on the CPU and the GPU's half precision on a GPU."""
    from .. import models
    from ..config import build
    from ..rundir import read_config
    from .lm import default_template

    adapter, template = None, None
    if run:
        if not (Path(run) / "adapter").is_dir():
            raise UserError(f"--run {run}: no adapter/ folder (is it an openfedllm run directory?)")
        config = build(read_config(Path(run), "--run"))
        model, adapter, template = model or config.model.name, str(Path(run) / "adapter"), config.data.template
    model = model or models.DEFAULT_MODEL
    path = models.resolve_model(model)
    tokenizer = models.load_tokenizer(path)
    where = models.resolve_device(device)
    loaded = models.load_base_model(path, "auto", device=where)
    if adapter:
        loaded = models.load_adapter(loaded, adapter)
    # config.use_cache stays off: generate() asks for the cache itself, and a forward that builds
    # one by default does not keep packed rows apart (log-likelihoods would fall back to padding)
    return loaded.eval(), tokenizer, template or default_template(tokenizer), {"model": model, "adapter": adapter}


def lm_loader(
    model: str | None, run: str | None, batch_size: int, temperature: float, seed: int = 0, device: str = "auto"
):
    """() -> LM, loading the model on the first call only."""
    from .lm import LM

    cache = {}

    def get():
        if "lm" not in cache:
            import torch

            torch.manual_seed(seed)  # sampled answers (temperature > 0) repeat run to run
            loaded, tokenizer, template, _ = load_model(model, run, device)
            cache["lm"] = LM(loaded, tokenizer, template, batch_size=batch_size, temperature=temperature)
        return cache["lm"]

    return get


def markdown(results: dict[str, dict]) -> str:
    lines = ["| benchmark | metric | value |", "|---|---|---|"]
    for name, result in results.items():
        for metric, value in result["metrics"].items():
            lines.append(f"| {name} | {metric} | {value:.4f} |")
        if not result["metrics"] and "judge" in result:
            lines.append(f"| {name} | judge score | skipped (no judge configured) |")
    return "\n".join(lines)


def evaluate_all(benchmarks: list[str], output: Path | None, settings: Settings, meta: dict) -> dict:
    """Run the benchmarks, print the table, and write OUT.json (atomically) when `output` is given."""
    if output is not None:
        settings.out_prefix = output.with_suffix("") if output.suffix == ".json" else output
    results = run_benchmarks(benchmarks, settings)
    report = {"benchmarks": results, "meta": {**meta, "date": time.strftime("%Y-%m-%d %H:%M:%S")}}
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = output.with_name(f".{output.name}.tmp")
        tmp.write_text(json.dumps(report, indent=1))
        tmp.replace(output)
    print(markdown(results))
    return report
