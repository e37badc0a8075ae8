"""``python -m rlhf_core.checkpoint upgrade CHECKPOINT_FOLDER...``: convert format-1 (pickled)
checkpoints you trust to format 2; ``verify CHECKPOINT_FOLDER...``: check every file of a
checkpoint against its recorded SHA-256."""

from __future__ import annotations

import sys

from rlhf_core.checkpoint import CheckpointError, upgrade_legacy_checkpoint, verify_checkpoint

_USAGE = "usage: python -m rlhf_core.checkpoint {upgrade,verify} CHECKPOINT_FOLDER..."


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("upgrade", "verify"):
        print(_USAGE, file=sys.stderr)
        return 2
    status = 0
    for path in argv[1:]:
        try:
            if argv[0] == "upgrade":
                print(f"upgraded {upgrade_legacy_checkpoint(path)} to format 2")
            else:
                meta = verify_checkpoint(path)
                print(f"{path}: intact (step {meta['step']}, {len(meta['files'])} files)")
        except (CheckpointError, OSError) as exc:
            print(f"{path}: {exc}", file=sys.stderr)
            status = 1
    return status


raise SystemExit(main(sys.argv[1:]))
