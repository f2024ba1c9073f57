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

# The same benchmarks under the spellings their home tools use (FastChat's mt_bench / vicuna_bench
# question folders, lm-evaluation-harness task names where they differ from ours).
ALIASES = {
    "mt_bench": "mt-bench",
    "vicuna_bench": "vicuna-bench",
    "fiqa_sa": "fiqa-sa",
    "fiqa": "fiqa-sa",
    "medqa_4options": "medqa",
    "gsm8k_cot": "gsm8k",
    "bbh_cot_fewshot": "bbh",
    "human_eval": "humaneval",
}


def canonical(name: str) -> str:
    """Our name of a benchmark given under any of its spellings (unknown names pass through)."""
    return ALIASES.get(name, ALIASES.get(name.lower(), name))
