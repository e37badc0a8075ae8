"""The `.pyi` stub of `rlhf_core._core` is a contract: `mypy.stubtest` checks it against the
compiled module (names, signatures, defaults, classes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ALLOWLIST = Path(__file__).with_name("stubtest_allowlist.txt")


def test_core_stub_matches_the_extension():
    # mypy is a development dependency: without it this test fails (it does not skip)
    proc = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "rlhf_core._core", "--allowlist", str(ALLOWLIST)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
