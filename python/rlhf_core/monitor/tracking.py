"""Experiment trackers: where a run's metrics and tables go besides ``metrics.jsonl``.

``report_to`` names the backends (``"tensorboard"``, ``"wandb"``, ``"trackio"``, ``"mlflow"``,
or ``"none"``); :func:`make_trackers` builds one small adapter per name behind the
:class:`Tracker` protocol. Each backend is an optional extra (``pip install
'rlhf-core[wandb]'``), imported only when it is chosen; a missing one is a
:class:`TrackerNotInstalledError` naming the extra. ``metrics.jsonl`` stays the source of truth:
:class:`~rlhf_core.monitor.MetricsLogger` writes it first and then hands the numbers to the
trackers.

Where each backend writes:

- ``tensorboard``: event files in ``run_dir/tensorboard`` (tables as markdown text).
- ``wandb``: a run named ``run_name`` in the project ``$WANDB_PROJECT`` (default
  ``rlhf-core``); its local files under ``run_dir/wandb``. ``WANDB_MODE=offline`` logs without
  a network; ``WANDB_RUN_ID`` / ``WANDB_RESUME`` continue an existing run.
- ``trackio``: the run ``run_name`` of the project ``$TRACKIO_PROJECT`` (default
  ``rlhf-core``) in trackio's local store (``$TRACKIO_DIR``, default under ``HF_HOME``);
  a resumed training continues the run of the same name.
- ``mlflow``: a run named ``run_name`` in the experiment ``$MLFLOW_EXPERIMENT_NAME`` (default
  ``rlhf-core``) of the tracking server ``$MLFLOW_TRACKING_URI``; metric names with ``.`` for
  ``/`` (:func:`mlflow_metric_name`); tables are JSON artifacts ``<name>/step_<step>.json`` in
  MLflow's ``{"columns": [...], "data": [[...]]}`` layout.
"""

from __future__ import annotations

import importlib
import os
import pathlib
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "REPORT_TO",
    "Tracker",
    "TrackerNotInstalledError",
    "TensorBoardTracker",
    "WandbTracker",
    "TrackioTracker",
    "MLflowTracker",
    "mlflow_metric_name",
    "make_trackers",
    "require_backends",
    "table_columns",
]

#: The names ``report_to`` accepts besides ``"none"``, each with the extra that installs it.
REPORT_TO = ("tensorboard", "wandb", "trackio", "mlflow")
DEFAULT_PROJECT = "rlhf-core"


class TrackerNotInstalledError(ImportError):
    """A backend named in ``report_to`` is not installed; the message names the extra."""


@runtime_checkable
class Tracker(Protocol):
    """What a tracking backend does for a run: numbers per step, tables, and a close."""

    name: str

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Record ``metrics`` (name -> float, NaN for a non-finite value) at ``step``."""

    def log_table(self, name: str, rows: Sequence[Mapping[str, Any]], step: int) -> None:
        """Record a table (one flat mapping per row, the same keys in every row) at ``step``."""

    def finish(self) -> None:
        """Flush and close the run."""


def _require(module: str, name: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise TrackerNotInstalledError(
            f"report_to={name!r} needs the {module} package, which is not installed: "
            f"pip install 'rlhf-core[{name}]' (or remove {name!r} from report_to)"
        ) from exc


def require_backends(report_to: Sequence[str]) -> None:
    """Import every backend of ``report_to`` now (a :class:`TrackerNotInstalledError` naming
    the extra for a missing one), so a command fails before it loads models, not after."""
    for name in report_to:
        if name in REPORT_TO:
            _require(name, name)


def table_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The keys of ``rows`` in the order they first appear."""
    cols: dict[str, None] = {}
    for r in rows:
        cols.update(dict.fromkeys(r))
    return list(cols)


def _table_data(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    cols = table_columns(rows)
    return cols, [[r.get(c) for c in cols] for r in rows]


class TensorBoardTracker:
    """Scalars through ``torch.utils.tensorboard.SummaryWriter`` into ``log_dir``; a table is
    one markdown text entry."""

    name = "tensorboard"

    def __init__(self, log_dir: str | os.PathLike[str]) -> None:
        _require("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(log_dir))

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        for k, v in metrics.items():
            self._writer.add_scalar(k, v, global_step=step)

    def log_table(self, name: str, rows: Sequence[Mapping[str, Any]], step: int) -> None:
        cols, data = _table_data(rows)

        def cell(v: Any) -> str:
            return str(v).replace("|", "\\|").replace("\n", " ")

        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in data]
        self._writer.add_text(name, "\n".join(lines), global_step=step)

    def flush(self) -> None:
        self._writer.flush()

    def finish(self) -> None:
        self._writer.close()


class WandbTracker:
    """A Weights & Biases run (files under ``run_dir/wandb``); tables as ``wandb.Table``."""

    name = "wandb"

    def __init__(self, run_dir: pathlib.Path, run_name: str, config: Mapping[str, Any]) -> None:
        self._wandb = _require("wandb", "wandb")
        self._run = self._wandb.init(
            project=os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT),
            name=run_name,
            dir=str(run_dir),
            config=dict(config),
        )

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self._run.log(dict(metrics), step=step)

    def log_table(self, name: str, rows: Sequence[Mapping[str, Any]], step: int) -> None:
        cols, data = _table_data(rows)
        self._run.log({name: self._wandb.Table(columns=cols, data=data)}, step=step)

    def finish(self) -> None:
        self._run.finish()


class TrackioTracker:
    """A trackio run in its local store (or the Space / server trackio is set up for)."""

    name = "trackio"

    def __init__(self, run_name: str, config: Mapping[str, Any]) -> None:
        self._trackio = _require("trackio", "trackio")
        self._run = self._trackio.init(
            project=os.environ.get("TRACKIO_PROJECT", DEFAULT_PROJECT),
            name=run_name,
            config=dict(config),
            resume="allow",  # a resumed training continues its run
            embed=False,
            auto_log_cpu=False,
            auto_log_gpu=False,
        )

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self._run.log(dict(metrics), step=step)

    def log_table(self, name: str, rows: Sequence[Mapping[str, Any]], step: int) -> None:
        cols, data = _table_data(rows)
        self._run.log({name: self._trackio.Table(columns=cols, data=data)}, step=step)

    def finish(self) -> None:
        self._run.finish()


def mlflow_metric_name(name: str) -> str:
    """The MLflow name of a metric: ``/`` becomes ``.`` (``reward/mean`` -> ``reward.mean``).
    MLflow's file store keeps each metric in a file at the path of its name, so ``kl`` and
    ``kl/k3_token_mean`` could not both exist there; the rule is the same for every store."""
    return name.replace("/", ".")


class MLflowTracker:
    """An MLflow run through ``MlflowClient`` (no global active run is touched): the config as
    parameters, metrics per step (names through :func:`mlflow_metric_name`), tables as JSON
    artifacts."""

    name = "mlflow"

    def __init__(self, run_name: str, config: Mapping[str, Any]) -> None:
        _require("mlflow", "mlflow")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self._client = MlflowClient()
        experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_PROJECT)
        found = self._client.get_experiment_by_name(experiment)
        exp_id = found.experiment_id if found else self._client.create_experiment(experiment)
        self._run_id = self._client.create_run(exp_id, run_name=run_name).info.run_id
        params = [Param(str(k)[:250], str(v)[:6000]) for k, v in config.items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self._client.log_batch(self._run_id, params=params[i : i + 100])

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        ms = int(time.time() * 1000)
        batch = [Metric(mlflow_metric_name(k), float(v), ms, step) for k, v in metrics.items()]
        for i in range(0, len(batch), 1000):  # MLflow takes at most 1000 metrics per batch
            self._client.log_batch(self._run_id, metrics=batch[i : i + 1000])

    def log_table(self, name: str, rows: Sequence[Mapping[str, Any]], step: int) -> None:
        cols, data = _table_data(rows)
        self._client.log_dict(
            self._run_id, {"columns": cols, "data": data}, f"{name}/step_{step:06d}.json"
        )

    def finish(self) -> None:
        self._client.set_terminated(self._run_id)


def make_trackers(
    report_to: Sequence[str],
    *,
    run_dir: str | os.PathLike[str],
    run_name: str,
    config: Mapping[str, Any] | None = None,
) -> list[Tracker]:
    """One tracker per name of ``report_to`` (``"none"`` alone: none). ``config`` (flat
    name -> value) is recorded with the run where the backend keeps one. A name outside
    :data:`REPORT_TO` is a ``ValueError``; a backend that is not installed a
    :class:`TrackerNotInstalledError` naming its extra. Trackers already made are closed
    when a later one fails."""
    run = pathlib.Path(run_dir)
    cfg = dict(config or {})
    out: list[Tracker] = []
    try:
        for name in report_to:
            if name == "none":
                continue
            if name == "tensorboard":
                out.append(TensorBoardTracker(run / "tensorboard"))
            elif name == "wandb":
                out.append(WandbTracker(run, run_name, cfg))
            elif name == "trackio":
                out.append(TrackioTracker(run_name, cfg))
            elif name == "mlflow":
                out.append(MLflowTracker(run_name, cfg))
            else:
                raise ValueError(
                    f"report_to: unknown tracker {name!r}; expected some of {REPORT_TO} or "
                    "'none'"
                )
    except BaseException:
        for t in out:
            t.finish()
        raise
    return out
