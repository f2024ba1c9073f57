"""`flower-superlink`, whose SuperExec forks each ServerApp from a warm parent: `python -m openfedllm.flower.superlink`.

Everything is the real flower-superlink, with its own arguments; only the SuperExec it starts for
ServerApp tasks is `openfedllm.flower.superexec`, which has torch, transformers and openfedllm
imported before the first run arrives (a run's server starts seconds sooner). A plain
`flower-superlink` works with the same ServerApp, only slower to start each run.
"""

from __future__ import annotations

import os
import sys

from .superexec import COMMAND, PRELOAD_ENV, require_tested_flower


def main() -> None:
    import importlib

    cli = importlib.import_module("flwr.superlink.cli.flower_superlink")  # the module, not the function
    require_tested_flower("superlink", hasattr(cli, "_get_superexec_command"))
    real = cli._get_superexec_command

    def superexec_command(*args, **kwargs) -> list[str]:
        command = real(*args, **kwargs)
        return [*COMMAND, *command[1:]] if command[:1] == ["flower-superexec"] else command

    setattr(cli, "_get_superexec_command", superexec_command)  # noqa: B010 - a module's attribute
    os.environ.setdefault(PRELOAD_ENV, "flwr-serverapp")  # the SuperExec inherits it
    sys.argv[0] = "flower-superlink"
    cli.flower_superlink()


if __name__ == "__main__":
    main()
