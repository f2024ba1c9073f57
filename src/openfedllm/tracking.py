"""Experiment tracking: metrics.jsonl mirrored, record by record, to TensorBoard (`log.tensorboard`)
and MLflow (`log.mlflow`), so a run shows up in the tools a lab already watches.

metrics.jsonl stays the record of the run; a mirror gets every number of every record as it is
written: the tag is phase/type[/clientC]/field (a dict field adds /key: accuracy/math,
aggregation_error/q_proj, update_norms/3), the step is the record's round (`global_step` for the
per-step losses). So the per-client losses, the evaluation, the bytes, epsilon and the aggregation
error all appear without a list of names to keep in step with docs/metrics.md.
"""

from __future__ import annotations

import math
from pathlib import Path

from .errors import UserError

# fields that say where a record belongs (its tag and step), not what it measured
PLACE = frozenset({"type", "phase", "round", "client", "node", "step", "global_step", "time"})
PER_CLIENT = frozenset({"step", "client", "personal", "lost"})  # record types tagged by client


def scalars(record: dict) -> tuple[int, dict[str, float]]:
    """(step, {tag: value}) of one metrics.jsonl record."""
    kind, phase = record["type"], record.get("phase", "run")
    step = record.get("global_step") if kind == "step" else record.get("round")
    prefix = f"{phase}/{kind}" + (f"/client{record['client']}" if kind in PER_CLIENT and "client" in record else "")
    out: dict[str, float] = {}

    def add(name: str, value) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                add(f"{name}/{key}", inner)
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[f"{prefix}/{name}"] = float(value)

    for key, value in record.items():
        if key not in PLACE:
            add(key, value)
    return int(step or 0), out


class TensorBoard:
    """Event files in RUN/tensorboard (`tensorboard --logdir RUN/tensorboard`)."""

    def __init__(self, run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("log.tensorboard: the tensorboard package is not installed (pip install it)") from None
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), flush_secs=10)

    def write(self, record: dict) -> None:
        step, values = scalars(record)
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step, walltime=record.get("time"))

    def close(self) -> None:
        self.writer.close()


class MLflow:
    """One MLflow run per openfedllm run (experiment "openfedllm"), its config as parameters. A resumed
    run continues the same MLflow run (its id is kept in RUN/mlflow_run_id)."""

    def __init__(self, uri: str, run_dir: Path, config: dict):
        import logging

        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise UserError("log.mlflow: the mlflow package is not installed (pip install mlflow-skinny)") from None
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # its database set-up talks at INFO
        if uri == "local":  # no server: a SQLite store beside the run (MLflow 3's local default)
            uri = f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"
        self.client = MlflowClient(uri)
        kept = run_dir / "mlflow_run_id"
        if kept.is_file():
            self.run_id = kept.read_text().strip()
            self.client.update_run(self.run_id, status="RUNNING")
            return
        experiment = self.client.get_experiment_by_name("openfedllm")
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment("openfedllm")
        self.run_id = self.client.create_run(experiment_id, run_name=run_dir.name).info.run_id
        kept.write_text(self.run_id)
        from mlflow.entities import Param

        params = [Param(k, str(v)[:6000]) for k, v in flatten(config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=params[i : i + 100])

    def write(self, record: dict) -> None:
        from mlflow.entities import Metric

        step, values = scalars(record)
        stamp = int(1000 * record.get("time", 0))
        if values:
            self.client.log_batch(self.run_id, metrics=[Metric(k, v, stamp, step) for k, v in values.items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def flatten(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def mirrors(config, run_dir: Path) -> list:
    """The mirrors the `log:` section asks for (the run directory exists)."""
    from .config import to_dict

    out: list = []
    if config.log.tensorboard:
        out.append(TensorBoard(run_dir))
    if config.log.mlflow:
        out.append(MLflow(config.log.mlflow, run_dir, to_dict(config)))
    return out
