"""Wall time of the built-in demo, per stage: what the README's and docs/demo.md's time claims
("``--quick`` in about a minute on 2 cores") rest on.

Runs :func:`rlhf_core.demo.run_demo` in this process (``--quick`` scale by default, ``--full``
for the full demo) in a fresh run folder, then runs it again on the finished folder (the
"already finished" path, which trains nothing). Reports each stage's seconds (the stage's own
``stage.json`` measurement), the whole run's wall and CPU seconds, the rerun's wall seconds,
and the machine's load average before and after: on a shared machine the wall times grow with
the load, so quote them with it. ``--json PATH`` writes the numbers.

Usage::

    python benches/bench_demo.py                      # quick demo
    python benches/bench_demo.py --full --json out.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rlhf_core.demo import load_demo_config, run_demo


def _commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() or None


def bench(run_dir: Path, *, quick: bool, threads: int, seed: int) -> dict[str, Any]:
    """Run the demo in ``run_dir`` (which must not hold another demo) and rerun it; return
    the measurements."""
    import torch

    overrides = {"run_dir": str(run_dir), "progress_bar": False, "threads": threads, "seed": seed}
    cfg = load_demo_config(quick=quick, overrides=overrides)
    load_before = os.getloadavg()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    first = run_demo(cfg, out=io.StringIO())
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    if first.already_finished:
        raise SystemExit(f"{run_dir} held a finished demo: choose an empty --run-dir")
    load_after = os.getloadavg()
    t0 = time.perf_counter()
    again = run_demo(cfg, out=io.StringIO())
    rerun = time.perf_counter() - t0
    if not again.already_finished:
        raise RuntimeError("the rerun of a finished demo trained again")
    return {
        "scale": "quick" if quick else "full",
        "seed": seed,
        "threads": threads,
        "stages": dict(first.report.timings),
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "rerun_wall_s": round(rerun, 2),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "cpus": os.cpu_count(),
        "commit": _commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.machine(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="the full demo (default: --quick)")
    ap.add_argument("--run-dir", type=Path, help="run folder (default: a temporary one)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (demo default 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the numbers to this file")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_demo_") as tmp:
        run_dir = args.run_dir if args.run_dir is not None else Path(tmp) / "demo"
        res = bench(run_dir, quick=not args.full, threads=args.threads, seed=args.seed)
    width = max(len(k) for k in res["stages"])
    print(f"rlhf-core demo ({res['scale']}, seed {res['seed']}, {res['threads']} thread(s))")
    for name, seconds in res["stages"].items():
        print(f"  {name:<{width}}  {seconds:8.2f} s")
    print(f"  {'total':<{width}}  {res['wall_s']:8.2f} s wall, {res['cpu_s']:.2f} s CPU")
    print(f"  rerun of the finished demo: {res['rerun_wall_s']:.2f} s")
    before, after = res["loadavg_before"], res["loadavg_after"]
    print(f"  load average (1, 5, 15 min): before {before}, after {after}; {res['cpus']} CPUs")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
