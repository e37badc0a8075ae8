"""What a run reports while it trains, written by rank 0 only: ``metrics.jsonl`` every step,
the trackers of ``report_to`` every ``logging_steps`` (and at evaluations and the last step),
and, with ``log_completions``, the sampled completions (``samples.jsonl``, a ``completions``
table for the trackers, a few on the console)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields, is_dataclass
from typing import TYPE_CHECKING, Any

from rlhf_core import distributed as D
from rlhf_core._io import json_safe
from rlhf_core.monitor import MetricsLogger, SampleLogger, make_trackers, print_samples
from rlhf_core.monitor.samples import table_rows

if TYPE_CHECKING:
    from rlhf_core.trainers.loop import Trainer

__all__ = ["RunReporter", "flat_config", "COMPLETIONS_TABLE"]

#: The trackers' name of the sampled-completions table.
COMPLETIONS_TABLE = "completions"


def flat_config(config: Any) -> dict[str, Any]:
    """The fields of a config dataclass as JSON-safe values (lists stay lists), for the
    trackers' record of the run's config."""
    if not is_dataclass(config):
        return {}
    return {f.name: json_safe(getattr(config, f.name)) for f in fields(config)}


class RunReporter:
    """Opens the run's outputs on rank 0 (nothing on other ranks) for a ``train()`` call that
    starts at step ``start`` (later lines of the files are dropped, see
    :class:`~rlhf_core.monitor.MetricsLogger`)."""

    def __init__(self, trainer: Trainer, start: int) -> None:
        cfg = trainer.config
        self.config = cfg
        self.logger: MetricsLogger | None = None
        self.samples: SampleLogger | None = None
        #: whether the trainer's completions are logged (every rank gathers them)
        self.log_completions = bool(getattr(cfg, "log_completions", False))
        error: Exception | None = None
        if trainer.is_main_process:
            try:
                self._open(trainer, start)
            except Exception as exc:  # noqa: BLE001 - re-raised below, after telling the ranks
                error = exc
        if trainer.dist.is_distributed and D.flagged_ranks(error is not None, trainer.dist):
            # every rank stops when rank 0 could not open the outputs (a tracker not installed,
            # a login refused), instead of waiting for it in the first step's collectives
            if error is None:
                raise RuntimeError(
                    "rank 0 could not open the run's outputs (metrics, trackers); its error "
                    "says why"
                )
        if error is not None:
            raise error

    def _open(self, trainer: Trainer, start: int) -> None:
        cfg = self.config
        trainer.run_dir.mkdir(parents=True, exist_ok=True)
        run_name = cfg.run_name or trainer.run_dir.resolve().name
        trackers = make_trackers(cfg.report_to, run_dir=trainer.run_dir, run_name=run_name,
                                 config=flat_config(cfg))  # fmt: skip
        try:
            self.logger = MetricsLogger(
                trainer.run_dir,
                tensorboard=cfg.tensorboard and "none" not in cfg.report_to,
                resume_step=start,
                trackers=trackers,
            )
        except BaseException:
            for t in trackers:
                t.finish()
            raise
        if self.log_completions:
            self.samples = SampleLogger(trainer.run_dir, resume_step=start)

    def is_logging_step(self, step: int, *, evaluated: bool, last: bool) -> bool:
        """Whether ``step`` goes to the trackers (and fires ``on_log``)."""
        return step % self.config.logging_steps == 0 or evaluated or last

    def log(self, step: int, metrics: Mapping[str, Any], *, track: bool) -> None:
        """``metrics.jsonl`` always; the trackers when ``track``."""
        if self.logger is not None:
            self.logger.log(step, metrics, track=track)

    def log_samples(self, step: int, rows: Sequence[Mapping[str, Any]], bar: Any = None) -> None:
        """``rows`` to ``samples.jsonl`` and the trackers; the first ``num_completions_to_print``
        on the console (around the progress bar ``bar``)."""
        if self.samples is None or self.logger is None:
            return
        self.samples.log(step, rows)
        self.logger.log_table(COMPLETIONS_TABLE, table_rows(step, rows), step)
        n = getattr(self.config, "num_completions_to_print", None)
        shown = list(rows) if n is None else list(rows)[:n]
        if not shown:
            return
        if bar is not None:
            with bar.external_write_mode():
                print_samples(step, shown)
        else:
            print_samples(step, shown)

    def close(self) -> None:
        if self.logger is not None:
            self.logger.close()
