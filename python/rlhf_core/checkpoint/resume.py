"""Whether a run starts fresh or continues, from which checkpoint, and what a damaged latest
checkpoint does."""

from __future__ import annotations

import logging
import os
import pathlib
from dataclasses import dataclass, field
from typing import Any

from rlhf_core.checkpoint.store import (
    CheckpointError,
    DamagedCheckpointError,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    verify_checkpoint,
)

__all__ = ["ResumeInfo", "resume_or_start", "LAST_GOOD_OPTION"]

logger = logging.getLogger("rlhf_core.checkpoint")

#: how the message of a damaged checkpoint names the option that takes the previous one
LAST_GOOD_OPTION = "resume_last_good = true (--resume_last_good)"


@dataclass
class ResumeInfo:
    """What :func:`resume_or_start` decided.

    ``checkpoint``: the folder to load (None = start from scratch); ``step``: the step to start
    from; ``finished``: the run already reached ``total_steps`` (nothing left to do);
    ``message``: one sentence for the user saying which of these happened; ``damaged``: newer
    checkpoints passed over because their files are damaged (``last_good``), which
    :meth:`set_aside_damaged` renames so that later resumes do not meet them again.
    """

    checkpoint: pathlib.Path | None
    step: int
    finished: bool
    message: str
    damaged: list[pathlib.Path] = field(default_factory=list)

    def load(self, **kwargs: Any) -> tuple[int, dict[str, Any]]:
        """:func:`load_checkpoint` of :attr:`checkpoint` (same keyword arguments; its files
        were verified when it was chosen)."""
        if self.checkpoint is None:
            raise CheckpointError("there is no checkpoint to load: the run starts from step 0")
        kwargs.setdefault("verify", False)
        return load_checkpoint(self.checkpoint, **kwargs)

    def set_aside_damaged(self) -> list[pathlib.Path]:
        """Rename each damaged checkpoint ``step_N`` to ``damaged_step_N`` (kept for a look,
        no longer a checkpoint); returns the new paths. One process calls it."""
        out = []
        for path in self.damaged:
            if not path.exists():
                continue
            target = path.with_name(f"damaged_{path.name}")
            k = 0
            while target.exists():
                k += 1
                target = path.with_name(f"damaged_{path.name}_{k}")
            os.replace(path, target)
            logger.warning("moved the damaged checkpoint %s aside to %s", path, target)
            out.append(target)
        return out


def _intact_before(
    run: pathlib.Path, bad: pathlib.Path
) -> tuple[pathlib.Path | None, list[pathlib.Path]]:
    """The newest checkpoint other than ``bad`` whose files verify, and the damaged ones newer
    than it (``bad`` included)."""
    damaged = [bad]
    for _, path in reversed(list_checkpoints(run)):
        if path == bad:
            continue
        try:
            verify_checkpoint(path)
        except DamagedCheckpointError:
            damaged.append(path)
            continue
        return path, damaged
    return None, damaged


def resume_or_start(
    run_dir: str | os.PathLike[str],
    resume: bool,
    total_steps: int | None = None,
    *,
    last_good: bool = False,
) -> ResumeInfo:
    """Decide whether a run starts fresh or continues, and say so.

    - ``resume=False`` and the folder already holds checkpoints: :class:`CheckpointError`
      (continuing or overwriting silently would both be surprises): pass ``resume=True`` or
      choose another folder.
    - ``resume=True`` with no checkpoint: start from step 0 (logged as a warning, so a typo in
      the folder name is visible).
    - The latest checkpoint's files are verified against their SHA-256. A damaged one is a
      :class:`DamagedCheckpointError` naming the file and what is wrong, and saying whether an
      earlier checkpoint is intact; with ``last_good`` that earlier one is taken instead (a
      warning names both) and the damaged ones are listed in :attr:`ResumeInfo.damaged`.
    - ``resume=True`` with a checkpoint at step ``s >= total_steps``: ``finished=True`` and a
      message saying the run is complete; the caller should report it and exit instead of
      training zero steps in silence. The message is also logged as a warning.
    """
    run = pathlib.Path(run_dir)
    latest = latest_checkpoint(run)
    if not resume:
        if latest is not None:
            raise CheckpointError(
                f"{run} already holds checkpoints (latest: {latest.name}); pass --resume to "
                "continue that run, or choose a new run folder"
            )
        return ResumeInfo(None, 0, False, f"starting a new run in {run}")
    if latest is None:
        msg = f"--resume given but {run} holds no checkpoint; starting from step 0"
        logger.warning(msg)
        return ResumeInfo(None, 0, False, msg)
    chosen, damaged = latest, list[pathlib.Path]()
    try:
        meta = verify_checkpoint(latest)
    except DamagedCheckpointError as exc:
        previous, damaged = _intact_before(run, latest)
        if previous is None:
            raise DamagedCheckpointError(
                f"{exc}. No earlier intact checkpoint remains in {run / 'checkpoints'}; start a "
                "new run (another run folder)", exc.checkpoint, exc.file,
            ) from None  # fmt: skip
        if not last_good:
            raise DamagedCheckpointError(
                f"{exc}. The previous checkpoint {previous.name} is intact: set "
                f"{LAST_GOOD_OPTION} to continue from it (the damaged one is then moved aside "
                "as damaged_<name>)", exc.checkpoint, exc.file,
            ) from None  # fmt: skip
        logger.warning("%s; resuming from the intact checkpoint %s instead", exc, previous.name)
        chosen = previous
        meta = verify_checkpoint(previous)
    step = int(meta["step"])
    if total_steps is not None and step >= total_steps:
        msg = (
            f"the run in {run} is already finished: its latest checkpoint is at step {step} "
            f"of {total_steps}; nothing to do (raise the total number of steps to train longer, "
            "or choose a new run folder)"
        )
        logger.warning(msg)
        return ResumeInfo(chosen, step, True, msg, damaged)
    total = f" of {total_steps}" if total_steps is not None else ""
    return ResumeInfo(
        chosen, step, False, f"resuming {run} from step {step}{total} ({chosen})", damaged
    )
