"""Library chatter that says nothing to a user of this tool, turned off in one place."""

from __future__ import annotations

import logging
import os
import warnings


def quiet_libraries() -> None:
    """Library chatter that says nothing to a user of this tool."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # bitsandbytes (imported by peft whenever it is installed) warns at import, on CPUs with
    # AVX512-BF16, that an optional kernels package is missing: every run would print it.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
