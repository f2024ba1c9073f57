"""The command line that started this process's run, for the run's provenance (set by the CLI; kept in
a module of its own so that recording it imports nothing heavy)."""

COMMAND: list[str] = []
