"""The stage protocol of a demo run: what a stage writes when it finishes, how a rerun skips
it, and how a trainer is driven from evaluation point to evaluation point.

A stage ``name`` keeps everything in ``<run_dir>/<name>/`` and ends by writing
``<name>/stage.json`` (:meth:`Run.finish`: its results plus ``seconds``). On a rerun with
``resume`` on, :meth:`Run.done` returns those results and the stage does no work. A stage that
trains goes through :meth:`Run.train_with_evals`: the trainer runs in slices of ``every`` steps
(each slice ends with a checkpoint) and each evaluation record is appended to
``<name>/evals.jsonl``, so an interrupted stage continues from its last checkpoint and keeps the
evaluations it already made.

:meth:`Run.check_run_dir` decides whether a run folder may be used: a new or empty folder, or
one holding a demo of the same config (``resume`` on).
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any

from rlhf_core._io import append_jsonl, atomic_write_text, json_safe, read_jsonl, write_jsonl
from rlhf_core.demo.config import DemoConfig, flatten

__all__ = ["Run", "latest_step"]

#: Config fields that may differ between a run and its resumption (they change nothing saved).
_FREE_FIELDS = {
    "run_dir", "resume", "progress_bar", "tensorboard", "device", "threads", "workers"
}  # fmt: skip
#: Tables whose fields may differ too: the gold-free stop is applied to the saved evaluations
#: when the report is written, so a finished run can be reported again with other settings.
_FREE_TABLES = ("gold_free.",)


def latest_step(run_dir: pathlib.Path) -> int:
    """The step of the newest checkpoint in a trainer's ``run_dir`` (0 when there is none)."""
    from rlhf_core.checkpoint import list_checkpoints

    found = list_checkpoints(run_dir)
    return found[-1][0] if found else 0


class Run:
    """One demo run: its config, folder, tokenizer and console, and the stage bookkeeping.

    ``timings`` maps each stage (in the order they ran or were found done) to its seconds;
    ``ran`` lists the stages that did their work in this call.
    """

    def __init__(self, config: DemoConfig, *, out: Any = None) -> None:
        from rlhf_core.models import load_tokenizer

        self.cfg = config
        self.root = pathlib.Path(config.run_dir)
        self.out = out if out is not None else sys.stdout
        self.tok = load_tokenizer()
        self.timings: dict[str, float] = {}
        self.ran: list[str] = []
        self._stage_no = 0
        self._num_stages = len(self.expected_stages()) + 1  # + the report

    @property
    def eval_seed(self) -> int:
        """The base seed of every evaluation's sampling (``seed + 1000``: apart from the
        seeds training uses)."""
        return self.cfg.seed + 1000

    def expected_stages(self) -> list[str]:
        """The stages this config runs, in order (the report aside)."""
        out = ["sft", "preferences", "reward", "baseline", *self.cfg.methods]
        if self.cfg.arithmetic.enabled:
            out.append("arithmetic")
        return out

    def finished_before(self) -> bool:
        """Whether every stage and the report were already written (a rerun trains nothing)."""
        stages = all(self.stage_file(s).is_file() for s in self.expected_stages())
        return stages and (self.root / "report.json").is_file()

    def stages_done(self) -> None:
        """Called once every stage has run, before the report (a worker process's run of
        :mod:`rlhf_core.demo.workers` stops here)."""

    # ---- console ------------------------------------------------------------------------------
    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def header(self, title: str) -> None:
        """Announce the next stage as ``[k/n] title``."""
        self._stage_no += 1
        self.say(f"\n[{self._stage_no}/{self._num_stages}] {title}")

    def bar(self, total: int, initial: int, desc: str) -> Any:
        from tqdm.auto import tqdm

        return tqdm(
            total=total,
            initial=initial,
            desc=desc,
            disable=not self.cfg.progress_bar,
            dynamic_ncols=True,
            leave=True,
        )

    # ---- the stage protocol -------------------------------------------------------------------
    def stage_file(self, name: str) -> pathlib.Path:
        return self.root / name / "stage.json"

    def done(self, name: str) -> dict[str, Any] | None:
        """The results stage ``name`` saved when it finished (None: it has not, or ``resume``
        is off); records its seconds in ``timings``."""
        p = self.stage_file(name)
        # a stage a worker process finished in this call counts as done with resume off too
        if (self.cfg.resume or name in self.ran) and p.is_file():
            data = json.loads(p.read_text(encoding="utf-8"))
            self.timings[name] = float(data.get("seconds", 0.0))
            return dict(data)
        return None

    def finish(self, name: str, data: dict[str, Any], t0: float) -> dict[str, Any]:
        """Save stage ``name``'s results (plus ``seconds`` since ``t0``) as its
        ``stage.json``; returns them."""
        data = dict(data)
        data["seconds"] = round(time.time() - t0, 2)
        self.timings[name] = data["seconds"]
        self.ran.append(name)
        text = json.dumps(json_safe(data), indent=1, allow_nan=False)
        atomic_write_text(self.stage_file(name), text)
        return data

    def trainer_fields(self, name: str) -> dict[str, Any]:
        """The :class:`~rlhf_core.trainers.config.TrainerConfig` fields every stage's trainer
        shares: its folder ``<run_dir>/<name>``, the seed, device and logging, resume on."""
        cfg = self.cfg
        return {
            "run_dir": str(self.root / name),
            "seed": cfg.seed,
            "progress_bar": False,
            "tensorboard": cfg.tensorboard,
            "device": cfg.device,
            "resume": True,
        }

    def device(self) -> Any:
        from rlhf_core.trainers.runtime import resolve_device

        return resolve_device(self.cfg.device)

    def save_model(self, model: Any, path: pathlib.Path) -> None:
        """Save ``model`` and the tokenizer to the folder ``path`` (replaced whole: written
        beside it, then renamed)."""
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(str(tmp))
        self.tok.save_pretrained(str(tmp))
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)

    def train_with_evals(
        self,
        trainer: Any,
        name: str,
        every: int,
        evaluate: Callable[[int], dict[str, Any]],
        first: dict[str, Any] | None,
    ) -> list[dict[str, Any]]:
        """Train ``trainer`` to its ``total_steps`` in slices of ``every`` steps (each slice
        ends with a checkpoint), calling ``evaluate(step)`` after each; returns the evaluation
        records in step order, step 0 first.

        Records go to ``<trainer run_dir>/evals.jsonl`` as they are made; on a rerun the ones
        up to the latest checkpoint are kept, and a slice already trained is not trained again.
        ``first`` is the record of step 0 (the starting policy), when known; otherwise step 0
        is evaluated too. ``name`` labels the progress bar.
        """
        trainer.claim_run_dir()  # the folder is this trainer's before evals.jsonl goes in
        run_dir = pathlib.Path(trainer.config.run_dir)
        total = int(trainer.config.total_steps)
        done = latest_step(run_dir)
        path = run_dir / "evals.jsonl"
        rows = read_jsonl(path, null_as_nan=True)  # NaN was written as null
        records = {int(r["step"]): r for r in rows if int(r["step"]) <= done}
        if first is not None:
            records.setdefault(0, dict(first, step=0))
        elif 0 not in records:
            records[0] = evaluate(0)
        write_jsonl(path, [records[k] for k in sorted(records)])
        targets = sorted(set(range(every, total, every)) | {total})
        bar = self.bar(total, done, name)
        try:
            for t in targets:
                if t < done:
                    continue
                if t > done:
                    trainer.train(stop_at_step=t)
                    bar.update(t - done)
                    done = t
                if t not in records:
                    if trainer.global_step != t:  # resumed exactly at t: load its weights
                        trainer.load(run_dir)
                    records[t] = evaluate(t)
                    append_jsonl(path, [records[t]])
                r = records[t]
                shown = ("proxy", "gold", "kl", "accuracy")
                bar.set_postfix({k: f"{r[k]:.3g}" for k in shown if k in r}, refresh=True)
        finally:
            bar.close()
        return [records[k] for k in sorted(records)]

    # ---- the run folder -----------------------------------------------------------------------
    def check_run_dir(self) -> None:
        """Refuse a folder that holds something else than a demo of this config (or any demo
        when ``resume`` is off); then save the resolved config as ``config.toml``."""
        from rlhf_core.config import ConfigError, config_to_dict, dump_config, load_config
        from rlhf_core.run_dir import LOCK_FILE

        saved = self.root / "config.toml"
        if saved.is_file():
            if not self.cfg.resume:
                raise FileExistsError(
                    f"{self.root} already holds a demo run; pass --resume true to continue it, "
                    "or choose another --run-dir"
                )
            try:
                old = flatten(config_to_dict(load_config(DemoConfig, saved)))
            except ConfigError as exc:
                raise FileExistsError(
                    f"{self.root} holds a demo config that does not load ({exc}); choose another "
                    "--run-dir"
                ) from exc
            new = flatten(config_to_dict(self.cfg))
            keys = sorted(set(old) | set(new))
            diff = [
                k for k in keys
                if k not in _FREE_FIELDS and not k.startswith(_FREE_TABLES)
                and old.get(k) != new.get(k)
            ]  # fmt: skip
            if diff:
                shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff[:6])
                raise FileExistsError(
                    f"{self.root} holds a demo run with a different config ({shown}); choose "
                    "another --run-dir (or delete that folder) to run this config"
                )
        elif self.root.is_dir() and any(p.name != LOCK_FILE for p in self.root.iterdir()):
            # (the CLI locks the folder first: its run.lock alone is no other content)
            raise FileExistsError(
                f"{self.root} exists and is not empty but holds no demo config.toml; choose "
                "another --run-dir"
            )
        dump_config(self.cfg, saved, header="rlhf-core demo: the resolved config of this run")
