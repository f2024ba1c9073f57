"""The benchmark names, in the order `--help` lists them: what the config and the CLI check
against without importing the benchmarks themselves (runner.BENCHMARKS maps each to its code;
a test keeps the two equal)."""

BENCHMARK_NAMES = (
    "mmlu",
    "bbh",
    "drop",
    "crass",
    "gsm8k",
    "humaneval",
    "mbpp",
    "fpb",
    "fiqa-sa",
    "tfns",
    "nwgi",
    "medqa",
    "medmcqa",
    "pubmedqa",
    "mt-bench",
    "vicuna-bench",
    "advbench",
    "perplexity",
    "overlap",
)
