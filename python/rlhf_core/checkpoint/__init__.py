"""Checkpoints a run resumes from exactly, written without pickles and checked on load.

Layout of a run folder (format 2)::

    run_dir/checkpoints/
        step_000123/
            meta.json              step, format version, each model's file, the size and
                                   SHA-256 of every file, and a checksum of itself
            models/<name>.safetensors    (or <name>.pt, a state dict read with weights_only)
            optimizers/<name>.json + <name>.safetensors     structure in JSON, tensors apart
            schedulers/<name>.json
            rng.json + rng.safetensors   python `random`, numpy global, torch CPU (+ CUDA)
            extra_state.json (+ .safetensors)   buffer state, sampler position, counters, ...
        latest                     text file naming the newest complete checkpoint folder

A checkpoint is written into a hidden temporary folder next to its final place and renamed
into place with :func:`os.replace`, then ``latest`` is rewritten the same way, so a crash at any
moment leaves either the previous checkpoint or the new one, never half of one.

Loading never unpickles (:mod:`~rlhf_core.checkpoint.state_files`: JSON and safetensors hold
data only), and checks every file against the SHA-256 recorded when it was written: a
truncated or changed file is a :class:`DamagedCheckpointError` naming the file, and
:func:`resume_or_start` says whether the previous checkpoint is intact (and, with
``last_good``, takes it). Model file names in ``meta.json`` are checked on load as on save.
Format-1 checkpoints (pickled) are refused with the command that converts a trusted one
(:func:`upgrade_legacy_checkpoint`).

What is *not* captured: random generators the trainer owns (``numpy.random.Generator``,
``torch.Generator``). Put their states in ``extra_state`` (``gen.bit_generator.state`` /
``gen.get_state()``).

Modules: ``store`` (one checkpoint folder: save, verify, load), ``resume`` (which checkpoint a
run continues from), ``state_files`` (JSON + safetensors states, SHA-256), ``legacy``
(format 1).
"""

from __future__ import annotations

from rlhf_core.checkpoint.legacy import upgrade_legacy_checkpoint
from rlhf_core.checkpoint.resume import LAST_GOOD_OPTION, ResumeInfo, resume_or_start
from rlhf_core.checkpoint.state_files import StateFileError, load_state, save_state
from rlhf_core.checkpoint.store import (
    FORMAT_VERSION,
    CheckpointError,
    DamagedCheckpointError,
    capture_rng_state,
    checkpoint_dir,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_meta,
    restore_rng_state,
    save_checkpoint,
    verify_checkpoint,
)

__all__ = [
    "FORMAT_VERSION",
    "LAST_GOOD_OPTION",
    "CheckpointError",
    "DamagedCheckpointError",
    "ResumeInfo",
    "StateFileError",
    "capture_rng_state",
    "checkpoint_dir",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_state",
    "read_meta",
    "restore_rng_state",
    "resume_or_start",
    "save_checkpoint",
    "save_state",
    "upgrade_legacy_checkpoint",
    "verify_checkpoint",
]
