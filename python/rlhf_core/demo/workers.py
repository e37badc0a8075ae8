"""The stages after the baseline, side by side in worker processes.

Best-of-N, PPO, GRPO, DPO and the arithmetic part depend only on what the first four stages
saved (the SFT model, the preference pairs, the reward model, the baseline record), not on
each other. With ``workers`` > 1 (:func:`resolve_workers`), :func:`run_in_workers` runs each of
them that has not finished in a fresh process (``spawn``), at most ``workers`` at a time, the
longest first. A worker runs the demo's own code path (:func:`rlhf_core.demo.runner._run`) for
one stage: the earlier stages are read back from the run folder as on a resume, the stage
writes its ``stage.json`` as always, and the worker stops before the report. The main process
then reads every result back as on a resume and writes the report.

The results are the same as in one process: every stage seeds its own sampling and training,
and a worker sets the thread count the main process uses (``threads``; 0 there means
CPU count // workers here, as torch's default would oversubscribe the cores). Each worker's
console goes to ``<run_dir>/logs/<stage>.log``.

A failing worker stops the others and raises :class:`DemoStageError` naming the stage and
the end of its log; Ctrl-C (or any error in the main process) stops the workers before it
propagates; a worker whose main process died exits by itself. Finished stages are kept, so
rerunning the command resumes.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import sys
import threading
import time
from dataclasses import replace
from typing import Any

from rlhf_core.demo.config import DemoConfig
from rlhf_core.demo.pipeline import Run

__all__ = [
    "BESIDE_JOBS",
    "Beside",
    "DemoStageError",
    "resolve_workers",
    "run_in_workers",
    "spare_cores",
    "start_beside",
]

#: The stages a worker may run, the longest first (a better packing onto the workers).
PARALLEL_STAGES = ("ppo", "grpo", "dpo", "best_of_n", "arithmetic")

#: Jobs that can run in a worker process *beside* the main one while it does the first stages
#: (:func:`start_beside`): the arithmetic part, which depends on nothing, and the check model,
#: which depends only on the SFT model and the preference pairs.
BESIDE_JOBS = ("arithmetic", "reward/check")

#: Lines of a failed worker's log quoted in its error.
_LOG_TAIL = 25


class DemoStageError(RuntimeError):
    """A demo stage failed in its worker process."""


def resolve_workers(cfg: DemoConfig) -> int:
    """The number of worker processes of ``cfg``: ``workers`` when set, otherwise
    ``min(2, CPU count)`` on the CPU and 1 (one process) on a GPU, or on a CPU without a core
    to spare (:func:`spare_cores` under 0.5: more processes would only share the same cores,
    each paying its start)."""
    return _choose_workers(cfg)[0]


def _choose_workers(cfg: DemoConfig) -> tuple[int, float | None]:
    """:func:`resolve_workers` and the :func:`spare_cores` it measured (None: not needed)."""
    if cfg.workers > 0:
        return int(cfg.workers), None
    from rlhf_core.trainers.runtime import resolve_device

    if resolve_device(cfg.device).type != "cpu":
        return 1, None
    n = max(1, min(2, os.cpu_count() or 1))
    if n == 1:
        return 1, None
    spare = spare_cores()
    return (n if spare >= 0.5 else 1), spare


def spare_cores(interval: float = 0.3) -> float:
    """Cores free for one more busy process beside the demo's own: the CPU count times the
    share of CPU time spent idle over the next ``interval`` seconds (``/proc/stat``; the
    demo's main process sleeps while it measures), minus one for that process; about 1 on an
    idle 2-core machine. Measured now rather than read from the 1-minute load average, which
    still counts a build that has just ended (``make demo`` compiles the Rust core right
    before). Where ``/proc/stat`` is missing: CPU count minus the load average (which counts
    the demo's own process); the CPU count where neither is known."""
    cpus = float(os.cpu_count() or 1)
    first = _cpu_times()
    if first is not None:
        time.sleep(interval)
        second = _cpu_times()
        if second is not None and second[1] > first[1]:
            idle = (second[0] - first[0]) / (second[1] - first[1])
            return cpus * idle - 1.0
    try:
        return cpus - os.getloadavg()[0]
    except (AttributeError, OSError):  # pragma: no cover - no load average (Windows)
        return cpus


def _cpu_times() -> tuple[int, int] | None:
    """(idle, total) jiffies of all CPUs from ``/proc/stat``; None where it cannot be read."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    if len(fields) < 5:
        return None
    return fields[3] + fields[4], sum(fields[:8])  # idle + iowait; user .. steal


def worker_threads(cfg: DemoConfig, workers: int) -> int:
    """Torch threads of each worker: ``threads``, or (0) the CPU count shared out."""
    if cfg.threads > 0:
        return int(cfg.threads)
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def run_in_workers(run: Run) -> None:
    """Run the stages of :data:`PARALLEL_STAGES` that ``run`` still has to do in worker
    processes (nothing when there is one worker or at most one such stage: the caller then
    runs them in order itself). Returns once each has written its ``stage.json``."""
    cfg = run.cfg
    todo = set(run.expected_stages())
    pending = [s for s in PARALLEL_STAGES if s in todo and not run.stage_file(s).is_file()]
    if len(pending) < 2:
        return
    n, spare = _choose_workers(cfg)
    if n <= 1:
        if spare is not None:  # one worker because no core was spare (not by choice)
            run.say(
                f"\n  the next stages run one after another: no core to spare ({spare:.1f} of "
                f"{os.cpu_count() or 1} cores idle beside this process; --workers 2 runs them "
                "side by side anyway)"
            )
        return
    import multiprocessing as mp
    from multiprocessing.connection import wait

    ctx = mp.get_context("spawn")
    logs = run.root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    threads = worker_threads(cfg, n)
    run.say(
        f"\n  {', '.join(pending)}: in {min(n, len(pending))} worker processes side by side "
        f"({threads} thread(s) each; their output: {logs}/<stage>.log); results below"
    )
    t_start = time.time()
    running: dict[Any, tuple[str, Any]] = {}
    try:
        while pending or running:
            while pending and len(running) < n:
                stage = pending.pop(0)
                proc = ctx.Process(
                    target=_worker_main,
                    args=(cfg, stage, threads, str(logs / f"{stage}.log"), os.getpid()),
                    name=f"rlhf-core-demo-{stage}",
                )
                proc.start()
                running[proc.sentinel] = (stage, proc)
                run.say(f"  {stage}: started (process {proc.pid})")
            for sentinel in wait(list(running)):
                stage, proc = running.pop(sentinel)
                proc.join()
                log = logs / f"{stage}.log"
                if proc.exitcode != 0 or not run.stage_file(stage).is_file():
                    raise _failed(f"demo stage {stage!r}", proc.exitcode, log)
                data = json.loads(run.stage_file(stage).read_text(encoding="utf-8"))
                run.ran.append(stage)
                run.say(f"  {stage}: done in {float(data.get('seconds', 0.0)):.0f} s")
    finally:
        _stop([proc for _, proc in running.values()])
    run.say(f"  (the stages above took {time.time() - t_start:.0f} s of wall time together)")


class Beside:
    """A job of :data:`BESIDE_JOBS` running in a worker process beside the main one
    (:func:`start_beside`). :meth:`join` waits for it; :meth:`stop` ends it (idempotent)."""

    def __init__(self, run: Run, job: str, proc: Any, log: pathlib.Path) -> None:
        self.run, self.job, self.proc, self.log = run, job, proc, log

    def join(self) -> None:
        """Wait for the job; raises :class:`DemoStageError` (naming it and quoting the end of
        its log) when it failed."""
        self.proc.join()
        if self.proc.exitcode != 0:
            raise _failed(f"demo job {self.job!r}", self.proc.exitcode, self.log)
        self.run.say(f"  {self.job} (beside): done")

    def stop(self) -> None:
        _stop([self.proc])


def start_beside(run: Run, job: str) -> Beside | None:
    """Start ``job`` (one of :data:`BESIDE_JOBS`) in a worker process beside the main one when
    the demo runs workers (:func:`resolve_workers` > 1); None otherwise, and the caller does
    the job itself. The job computes what it would compute in the main process (its own
    seeds, the models read back from the run folder, the same thread count), so the results
    are the same to the last bit; its console goes to ``<run_dir>/logs/<job>.log``."""
    if job not in BESIDE_JOBS:
        raise ValueError(f"job={job!r}: expected one of {BESIDE_JOBS}")
    cfg = run.cfg
    n = resolve_workers(cfg)
    if n <= 1:
        return None
    import multiprocessing as mp

    logs = run.root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{job.replace('/', '_')}.log"
    proc = mp.get_context("spawn").Process(
        target=_beside_main,
        args=(cfg, job, worker_threads(cfg, n), str(log), os.getpid()),
        name=f"rlhf-core-demo-{job.replace('/', '-')}",
    )
    proc.start()
    run.say(f"  {job}: started beside (process {proc.pid}; its output: {log})")
    return Beside(run, job, proc, log)


def _beside_main(cfg: DemoConfig, job: str, threads: int, log: str, parent: int) -> None:
    """A worker process running the job ``job`` of :data:`BESIDE_JOBS`."""
    _worker_setup(threads, log, parent)
    from rlhf_core.demo.runner import _quiet_transformers

    stage = "arithmetic" if job == "arithmetic" else "reward"
    run = _WorkerRun(worker_config(cfg, stage), out=sys.stdout)
    with _quiet_transformers():
        if job == "arithmetic":
            from rlhf_core.demo.stages.arithmetic import arithmetic

            arithmetic(run)
        else:
            from rlhf_core.demo.stages.reward import train_check_model

            train_check_model(run)
    sys.stdout.flush()


def _failed(what: str, exitcode: int | None, log: pathlib.Path) -> DemoStageError:
    """The error of a worker process that failed, quoting the end of its log."""
    return DemoStageError(
        f"{what} failed in its worker process (exit code {exitcode}); the end of its log "
        f"{log}:\n{_tail(log)}\nthe stages that finished are kept: rerun the same command to "
        "resume"
    )


def _stop(procs: list[Any]) -> None:
    """End the worker processes still running (SIGTERM, then SIGKILL) and reap them."""
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    for proc in procs:
        proc.join(timeout=10)
        if proc.is_alive():  # pragma: no cover - a worker that ignores SIGTERM
            proc.kill()
            proc.join()


def _tail(log: pathlib.Path) -> str:
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "  (no log)"
    return "\n".join("  | " + line for line in lines[-_LOG_TAIL:])


class _StageDone(Exception):
    """Raised in a worker when its stage is done (at :meth:`Run.stages_done`)."""


class _WorkerRun(Run):
    """The run of a worker process: the folder was checked by the main process (and its
    ``config.toml`` is the main config's, not rewritten here); it stops before the report."""

    def check_run_dir(self) -> None:
        pass

    def stages_done(self) -> None:
        raise _StageDone


def worker_config(cfg: DemoConfig, stage: str) -> DemoConfig:
    """The config a worker runs for ``stage``: only that stage after the baseline, resume
    on (the earlier stages are read back), no progress bars, one process. None of these
    fields changes what a stage computes or saves."""
    return replace(
        cfg,
        methods=[stage] if stage in cfg.methods else [],
        arithmetic=replace(cfg.arithmetic, enabled=stage == "arithmetic"),
        resume=True,
        progress_bar=False,
        workers=1,
    )


def _worker_setup(threads: int, log: str, parent: int) -> None:
    """What every worker process does first: Ctrl-C left to the main process (which stops the
    workers), exit with the main process, console to ``log``, ``threads`` torch threads."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent(parent)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    import torch

    torch.set_num_threads(threads)


def _worker_main(cfg: DemoConfig, stage: str, threads: int, log: str, parent: int) -> None:
    """A worker process: run ``stage`` of the demo ``cfg``; console to ``log``."""
    _worker_setup(threads, log, parent)
    from rlhf_core.demo.runner import _quiet_transformers, _run

    run = _WorkerRun(worker_config(cfg, stage), out=sys.stdout)
    try:
        with _quiet_transformers():
            _run(run)
    except _StageDone:
        pass
    sys.stdout.flush()


def _exit_with_parent(parent: int) -> None:
    """End this process when its parent (the demo's main process) is gone."""

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os._exit(3)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
