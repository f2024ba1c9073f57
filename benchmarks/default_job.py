"""Wall time and peak memory of the default job, and load time of the default model.

Runs `openfedllm sft` with no arguments (or the arguments given after `--`) in a child process
and reads its peak resident memory from the kernel's accounting (getrusage of the children),
so the figure covers everything the job allocates. Also times loading the converted default
model from the cache in a fresh process (tokenizer + weights; the first load also pays
transformers' lazy imports, the second does not).

    python benchmarks/default_job.py [-- --config configs/sft_quick.yaml]
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time

LOAD = """
import time
from openfedllm import models
path = models.resolve_model(models.DEFAULT_MODEL)
for _ in range(2):  # the first load also pays transformers' lazy imports
    start = time.perf_counter()
    models.load_tokenizer(path); models.load_base_model(path)
    print(f"{time.perf_counter() - start:.2f}")
"""


def main() -> None:
    extra = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else []
    load = subprocess.run([sys.executable, "-c", LOAD], capture_output=True, text=True, check=True)
    first, second = load.stdout.strip().splitlines()[-2:]
    print(
        f"default model load from the cache (tokenizer + weights): first in a fresh process {first} s, again {second} s"
    )
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "openfedllm", "sft", "--output-dir", f"{tmp}/run", *extra], check=True)
        wall = time.perf_counter() - start
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB on Linux
    print(f"openfedllm sft {' '.join(extra)}: {wall / 60:.1f} min wall, peak RSS {peak_gib:.2f} GiB")


if __name__ == "__main__":
    main()
