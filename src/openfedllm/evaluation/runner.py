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
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError
from . import choice, crass, finance, generative, medical, mmlu, open_ended
from .code import code_benchmark
from .files import sources_read, write_jsonl

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
    log_samples: bool = False  # write each question, answer and score to OUT.NAME/samples.jsonl

    def path(self, name: str) -> str | None:
        return self.data.get(name) or self.data.get("") or None

    def tokens(self, default: int) -> int:
        return self.max_new_tokens or default

    def out_dir(self, name: str) -> Path:
        return Path(f"{self.out_prefix}.{name}") if self.out_prefix else Path(f"eval.{name}")


@dataclass(frozen=True)
class Used:
    """The settings a benchmark really ran with (its defaults where the command line named none)."""

    shots: int | None  # None: the benchmark takes no demonstrations
    max_new_tokens: int | None  # None: nothing is generated (log-likelihood or samples only)


def _choice(load, classification: bool = False):
    def run(s: Settings, name: str, used: Used) -> dict:
        items = load(name, s.path(name), s.limit, used.shots)
        if not items:
            raise UserError(f"{name}: no questions (after the demonstrations); check --data, --shots and --limit")
        return choice.evaluate(s.get_lm(), items, s.modes, classification, max_new_tokens=used.max_new_tokens or 16)

    return run


def _free(fn):
    def run(s: Settings, name: str, used: Used) -> dict:
        return fn(s.get_lm(), s.path(name), s.limit, used.shots, used.max_new_tokens)

    return run


def _code(s: Settings, name: str, used: Used) -> dict:
    return code_benchmark(name, s.get_lm, s.path(name), s.samples, s.limit, s.ks, used.max_new_tokens or 384)


def _judged(s: Settings, name: str, used: Used) -> dict:
    return open_ended.judged_bench(
        name,
        s.get_lm,
        s.path(name),
        s.limit,
        s.out_dir(name),
        s.model_id,
        s.judge,
        s.judge_prompts,
        used.max_new_tokens or open_ended.ANSWER_TOKENS,
    )


def _advbench(s: Settings, name: str, used: Used) -> dict:
    return open_ended.advbench(s.get_lm, s.path(name), s.limit, s.out_dir(name), used.max_new_tokens or 64)


def _instruction_examples(name: str, path: str | None):
    from ..config import DataConfig
    from ..data import load_instruction_data

    if not path:
        raise UserError(f"{name}: needs --data, an instruction file (any format `openfedllm sft` reads)")
    examples, _, _ = load_instruction_data(DataConfig(path=path))
    return examples


def _perplexity(s: Settings, name: str, used: Used) -> dict:
    from ..data.templates import tokenize
    from ..evaluate import heldout_loss

    examples = _instruction_examples(name, s.path(name))[: s.limit]
    lm = s.get_lm()
    rows = [r for r in (tokenize(e, lm.template, lm.tokenizer, lm.max_length) for e in examples) if r]
    loss = heldout_loss(lm.model, rows, lm.tokenizer.pad_token_id, lm.batch_size)
    return {"metrics": {"loss": loss, "perplexity": math.exp(loss)}, "questions": len(rows)}


def _overlap(s: Settings, name: str, used: Used) -> dict:
    from ..data.templates import user_text
    from .metrics import bleu, exact_match, rouge_l, token_f1

    examples = [e for e in _instruction_examples(name, s.path(name)) if not e.turns][: s.limit]
    prompts: list[str | list[dict]] = [user_text(e) for e in examples]
    said = [t.strip() for t in s.get_lm().chat(prompts, max_new_tokens=used.max_new_tokens or 256)]
    refs = [e.output for e in examples]
    scores = {"exact_match": list(map(exact_match, said, refs)), "token_f1": list(map(token_f1, said, refs))}
    scores["rouge_l"] = list(map(rouge_l, said, refs))
    n = len(examples)
    logged = [{"prompt": p, "target": r, "answer": a} for p, r, a in zip(prompts, refs, said)]
    for metric, values in scores.items():
        for record, value in zip(logged, values):
            record[metric] = value
    return {
        "metrics": {**{metric: sum(values) / n for metric, values in scores.items()}, "bleu": bleu(said, refs)},
        "questions": n,
        "logged": logged,
    }


def _mc(module_fn):
    return lambda name, data, limit, shots: module_fn(data, limit, shots)


@dataclass(frozen=True)
class Benchmark:
    run: Callable[[Settings, str, Used], dict]
    shots: int | None = None  # demonstrations by default (the paper's / the benchmark's own count)
    tokens: int | None = None  # new tokens per answer by default
    fixed_shots: bool = False  # the demonstrations are part of the benchmark: --shots does not apply
    multiple_choice: bool = False  # scored by --mode: generates only in the generate mode


BENCHMARKS: dict[str, Benchmark] = {
    "mmlu": Benchmark(_choice(_mc(mmlu.items)), shots=5, tokens=16, multiple_choice=True),
    "bbh": Benchmark(_free(generative.bbh), shots=3, tokens=32),
    "drop": Benchmark(_free(generative.drop), shots=3, tokens=32),
    "crass": Benchmark(_choice(_mc(crass.items)), shots=3, tokens=16, multiple_choice=True),
    "gsm8k": Benchmark(_free(generative.gsm8k), shots=0, tokens=256),
    "humaneval": Benchmark(_code, tokens=384),
    "mbpp": Benchmark(_code, shots=3, tokens=384, fixed_shots=True),  # MBPP's prompt examples (ids 2-4)
    **{
        name: Benchmark(_choice(finance.items, classification=True), shots=0, tokens=16, multiple_choice=True)
        for name in finance.SOURCES
    },
    "medqa": Benchmark(_choice(_mc(medical.medqa)), shots=0, tokens=16, multiple_choice=True),
    "medmcqa": Benchmark(_choice(_mc(medical.medmcqa)), shots=0, tokens=16, multiple_choice=True),
    "pubmedqa": Benchmark(_choice(_mc(medical.pubmedqa)), shots=0, tokens=16, multiple_choice=True),
    "mt-bench": Benchmark(_judged, tokens=open_ended.ANSWER_TOKENS),
    "vicuna-bench": Benchmark(_judged, tokens=open_ended.ANSWER_TOKENS),
    "advbench": Benchmark(_advbench, tokens=64),
    "perplexity": Benchmark(_perplexity),
    "overlap": Benchmark(_overlap, tokens=256),
}
SAMPLES_OK = ("humaneval", "mbpp")


def check_names(names: list[str]) -> None:
    for name in names:
        if name not in BENCHMARKS:
            raise UserError(f"--benchmark: unknown benchmark {name!r}; available: {', '.join(BENCHMARKS)}")


def used_settings(name: str, settings: Settings) -> Used:
    bench = BENCHMARKS[name]
    if settings.samples:  # scored as given: nothing is prompted or generated
        return Used(shots=None, max_new_tokens=None)
    shots = bench.shots if bench.fixed_shots or settings.shots is None else settings.shots
    generates = bench.tokens is not None and (not bench.multiple_choice or "generate" in settings.modes)
    return Used(shots=shots, max_new_tokens=settings.tokens(bench.tokens or 0) if generates else None)


def run_benchmarks(names: list[str], settings: Settings, progress=None) -> dict[str, dict]:
    """{name: result}. Each result states the settings it ran with ("settings": shots, new tokens,
    limit, the data it read); its per-question records go to OUT.NAME/samples.jsonl when
    `settings.log_samples`. `progress(name, result)` is called as each benchmark finishes."""
    check_names(names)
    if settings.samples and any(n not in SAMPLES_OK for n in names):
        raise UserError(f"--samples scores code benchmarks only ({', '.join(SAMPLES_OK)})")
    results = {}
    for name in names:
        start = time.perf_counter()
        used = used_settings(name, settings)
        sources_read(start=True)
        result = BENCHMARKS[name].run(_labelled(settings, name), name, used)
        data = settings.path(name)
        result["settings"] = {
            "shots": used.shots,
            "max_new_tokens": used.max_new_tokens,
            "limit": settings.limit,
            "data": [str(Path(data).expanduser().resolve())] if data else sources_read(),
        }
        logged = result.pop("logged", None)
        if settings.log_samples and logged is not None:
            path = settings.out_dir(name) / "samples.jsonl"
            write_jsonl(path, [{"index": i, **record} for i, record in enumerate(logged)])
            result["samples_file"] = str(path)
        result["seconds"] = round(time.perf_counter() - start, 2)
        results[name] = result
        if progress:
            progress(name, result)
    return results


def _labelled(settings: Settings, name: str) -> Settings:
    """The settings with a model that names `name` on its progress bars."""

    def get_lm():
        lm = settings.get_lm()
        lm.label = name
        return lm

    return replace(settings, get_lm=get_lm)


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


def _done_line(name: str, result: dict) -> None:
    """One line on stderr as each benchmark of several finishes (the table comes at the end)."""
    count = result.get("questions", result.get("tasks", ""))
    shown = ", ".join(f"{k} {v:.4f}" for k, v in list(result["metrics"].items())[:3])
    print(f"{name}: {shown or 'done'} (n={count}, {result['seconds']:.1f} s)", file=sys.stderr, flush=True)


def evaluate_all(benchmarks: list[str], output: Path | None, settings: Settings, meta: dict) -> dict:
    """Run the benchmarks, print the table, and write OUT.json (atomically) when `output` is given."""
    if output is not None:
        settings.out_prefix = output.with_suffix("") if output.suffix == ".json" else output
    results = run_benchmarks(benchmarks, settings, progress=_done_line if len(benchmarks) > 1 else None)
    report = {"benchmarks": results, "meta": {**meta, "date": time.strftime("%Y-%m-%d %H:%M:%S")}}
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = output.with_name(f".{output.name}.tmp")
        tmp.write_text(json.dumps(report, indent=1))
        tmp.replace(output)
    print(markdown(results))
    return report
