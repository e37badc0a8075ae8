"""Sampling speed of the generation paths on the end-to-end GRPO workload (GPU).

The same random-init Qwen2-0.5B-shaped bf16 model and prompts as ``benches/e2e_grpo.py``
(8 prompts x 8 samples x 256 new tokens, EOS suppressed so every completion is full length),
sampled at temperature 1 by:

- ``hf-dynamic``: HF ``generate`` with its default dynamic KV cache (what ``fast=False`` runs);
- ``hf-static``: HF ``generate`` with ``cache_implementation="static"`` (HF compiles the decode
  step itself);
- ``rlhf_core``: rlhf_core's decode loop (``generate(fast=True)``: static cache, decode step
  compiled with ``mode="reduce-overhead"``, no host sync per token).

Each path runs ``--warmup`` uncounted calls (compilation) and then ``--repeats`` timed ones;
the report gives the median seconds per call, completion tokens/s and the speed-up over
``hf-dynamic``. ``--json PATH`` writes the numbers.

Usage::

    python benches/bench_generation.py              # on a GPU
    python benches/bench_generation.py --tiny       # CPU-sized smoke run (no compilation)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import e2e_grpo as E  # noqa: E402 - the shared workload of the two benches

from rlhf_core import generation as G  # noqa: E402
from rlhf_core.models import load_policy  # noqa: E402


def _hf_call(model: Any, tok: Any, prompts: list[str], work: Any, static: bool) -> None:
    """One HF generate call through rlhf_core's generate: HF's dynamic cache, or (``static``)
    HF's own static-cache path (the HF backend with ``fast=True``), never rlhf_core's loop."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        G.generate(
            model, tok, prompts, num_samples=work.num_samples,
            max_new_tokens=work.max_new_tokens, temperature=1.0, seed=0, fast=static,
            generation_backend="hf",
        )  # fmt: skip


def _profile(model: Any, tok: Any, prompts: list[str], work: Any, device: torch.device) -> None:
    """One rlhf_core generate call under torch.profiler: wall time, the device's busy time,
    and the ops with the most self CPU and self device time."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    E._sync(device)
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        G.generate(
            model, tok, prompts, num_samples=work.num_samples,
            max_new_tokens=work.max_new_tokens, temperature=1.0, seed=0, fast=True,
        )  # fmt: skip
        E._sync(device)
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    busy = sum(getattr(e, "self_device_time_total", 0.0) for e in events) / 1e6
    print(f"profile: one call {wall:.3f} s wall (profiled), device busy {busy:.3f} s")
    for key in ("self_cpu_time_total", "self_device_time_total"):
        try:
            print(events.table(sort_by=key, row_limit=12, max_name_column_width=60))
        except Exception as exc:  # noqa: BLE001 - a profiler without that column
            print(f"profile table by {key}: {exc}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--paths", default="hf-dynamic,rlhf_core,hf-static")
    p.add_argument(
        "--profile",
        action="store_true",
        help="after timing, profile one rlhf_core call (torch.profiler) and print the top ops",
    )
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    work = E.tiny_workload() if args.tiny else E.Workload()
    if device.type == "cpu":
        work.dtype = "float32"
    paths = [x.strip() for x in args.paths.split(",") if x.strip()]
    unknown = set(paths) - {"hf-dynamic", "hf-static", "rlhf_core"}
    if unknown:
        p.error(f"--paths: unknown {sorted(unknown)}")
    res: dict[str, Any] = {"device": torch.cuda.get_device_name() if device.type == "cuda"
                           else "cpu", "paths": {}}  # fmt: skip
    tokens = work.completion_tokens_per_step
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        tok, _ = E.build_model_folder(work, folder, device)
        model = load_policy(str(folder), dtype=work.dtype, device=device).eval()
        prompts = E.make_prompts(work, work.prompts_per_step, seed=1)
        for name in paths:
            times = []
            before = G.BACKENDS_USED.copy()
            for _ in range(args.warmup + args.repeats):
                E._sync(device)
                t0 = time.perf_counter()
                if name == "rlhf_core":
                    G.generate(
                        model, tok, prompts, num_samples=work.num_samples,
                        max_new_tokens=work.max_new_tokens, temperature=1.0, seed=0, fast=True,
                    )  # fmt: skip
                else:
                    _hf_call(model, tok, prompts, work, static=name == "hf-static")
                    G._FAST_FAILED.discard(id(model))  # the refusal above is not a failure
                E._sync(device)
                times.append(time.perf_counter() - t0)
            med = statistics.median(times[args.warmup :])
            res["paths"][name] = {
                "first_call_s": times[0],
                "median_s": med,
                "tokens_per_s": tokens / med,
                "served_by": dict(G.BACKENDS_USED - before),
            }
            print(f"{name:<12} first call {times[0]:8.2f} s  median {med:8.3f} s  "
                  f"{tokens / med:10.0f} tok/s  served by {res['paths'][name]['served_by']}",
                  flush=True)  # fmt: skip
        if args.profile:
            _profile(model, tok, prompts, work, device)
    base = res["paths"].get("hf-dynamic")
    if base:
        for name, r in res["paths"].items():
            r["speedup_vs_hf_dynamic"] = base["median_s"] / r["median_s"]
            print(f"{name:<12} {r['speedup_vs_hf_dynamic']:6.2f}x hf-dynamic")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
