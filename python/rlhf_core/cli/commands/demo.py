"""``rlhf-core demo``: the built-in end-to-end demo (:mod:`rlhf_core.demo`)."""

from __future__ import annotations

import logging

from rlhf_core.demo import DemoConfig, run_demo

__all__ = ["DemoConfig", "run_demo_command"]


def run_demo_command(cfg: DemoConfig) -> int:
    """Run the demo of ``cfg`` in ``cfg.run_dir``; it prints its own progress and report."""
    # the demo prints its own progress; the trainers' per-slice notes would repeat it
    logging.getLogger("rlhf_core.trainers").setLevel(logging.WARNING)
    run_demo(cfg)
    return 0
