#!/usr/bin/env python
"""Time every rlhf_core kernel against plain numpy and against memory bandwidth.

For each size B×T (padded float32, response lengths uniform in [T/4, T], bool mask) the
script times the kernel (through ``rlhf_core.ops``, numpy in and out, default thread count),
a plain numpy implementation of the same computation (a reverse loop over T vectorised over
B for GAE and returns; reshape-based group statistics; boolean indexing then mean and sum of
squares for ``RunningMoments.update``), and ``np.copyto`` of as many bytes
as the kernel reads plus writes (half read, half written: the same memory traffic). It
prints one table of ratios, a per-call overhead table on an 8×16 batch, and rows for the
anchors' own functions (verl, OpenRLHF, torchrl, rlox) when those packages are importable.

Targets (see issue 2): GAE at 1024×2048 at least 25× faster than the numpy loop; group
advantages (materialised per token), KL, whitening and shaped rewards at least 50% of
``np.copyto`` speed at 1024×2048 and above; per-call overhead a few microseconds.

Usage: ``python benches/bench_kernels.py [--quick] [--json out.json]`` (a release build of
the extension is required: ``make build``). Threads: ``RAYON_NUM_THREADS`` (default: one per
core).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from rlhf_core import _core, ops

SIZES = [(64, 512), (256, 1024), (1024, 2048), (4096, 1024)]
QUICK_SIZES = [(64, 512), (1024, 2048)]
GAMMA, LAM, BETA, EPS = 1.0, 0.95, 0.05, 1e-6


def refuse_debug_build() -> None:
    if _core.BUILD_PROFILE != "release":
        sys.exit(
            "bench_kernels: rlhf_core._core is a debug build; timings would be meaningless. "
            "Build in release mode first: `make build` (maturin develop --release)."
        )


def best_time(fn: Callable[[], Any], min_time: float, min_reps: int = 3,
              max_reps: int = 1000) -> float:
    """Best wall time of ``fn`` in seconds over repeated calls (one warm-up call first)."""
    fn()
    best = float("inf")
    start = time.perf_counter()
    reps = 0
    while reps < max_reps and (reps < min_reps or time.perf_counter() - start < min_time):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        reps += 1
    return best


# ---------------------------------------------------------------------------------------------
# Inputs and numpy baselines
# ---------------------------------------------------------------------------------------------


def make_batch(b: int, t: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(t // 4, t + 1, size=b)
    mask = np.arange(t)[None, :] < lengths[:, None]  # (B, T) bool, right-padded
    f = np.float32
    return {
        "lengths": lengths,
        "mask": mask,
        "rewards": rng.standard_normal((b, t)).astype(f),
        "values": rng.standard_normal((b, t)).astype(f),
        "logp": (-rng.exponential(2.0, (b, t))).astype(f),
        "ref_logp": (-rng.exponential(2.0, (b, t))).astype(f),
        "scores": rng.standard_normal(b).astype(f),
    }


def np_gae(r: np.ndarray, v: np.ndarray, mask: np.ndarray, gamma: float, lam: float):
    """Reverse loop over T vectorised over B, carrying state across masked tokens (the
    structure of verl's compute_gae_advantage_return, in numpy)."""
    b, t = r.shape
    adv = np.zeros_like(r)
    v_next = np.zeros(b, r.dtype)
    a_next = np.zeros(b, r.dtype)
    gl = r.dtype.type(gamma * lam)
    g = r.dtype.type(gamma)
    for j in range(t - 1, -1, -1):
        m = mask[:, j]
        delta = r[:, j] + g * v_next - v[:, j]
        a = delta + gl * a_next
        v_next = np.where(m, v[:, j], v_next)
        a_next = np.where(m, a, a_next)
        adv[:, j] = np.where(m, a_next, 0)
    return adv, np.where(mask, adv + v, 0)


def np_returns(r: np.ndarray, mask: np.ndarray, gamma: float):
    b, t = r.shape
    out = np.zeros_like(r)
    g = np.zeros(b, r.dtype)
    gm = r.dtype.type(gamma)
    for j in range(t - 1, -1, -1):
        m = mask[:, j]
        g = np.where(m, r[:, j] + gm * g, g)
        out[:, j] = np.where(m, g, 0)
    return out


def np_group(scores: np.ndarray, g: int) -> np.ndarray:
    s = scores.reshape(-1, g)
    mean = s.mean(axis=1, keepdims=True)
    std = s.std(axis=1, ddof=1, keepdims=True)
    return ((s - mean) / (std + EPS)).reshape(-1)


def np_group_tokens(scores: np.ndarray, g: int, mask: np.ndarray) -> np.ndarray:
    return np_group(scores, g)[:, None] * mask  # (B, T), as verl/OpenRLHF materialise it


def np_kl_k3(lp: np.ndarray, ref: np.ndarray) -> np.ndarray:
    d = np.clip(lp - ref, -11.0, 11.0)
    return np.clip(np.exp(-d) + d - 1.0, -10.0, 10.0)


def np_whiten(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    n = mask.sum()
    mean = (x * mask).sum() / n
    var = (((x - mean) ** 2) * mask).sum() / (n - 1)
    return (x - mean) / np.sqrt(var + 1e-8) * mask


def np_shaped(scores, lp, ref, mask, lengths, beta):
    out = -beta * (lp - ref) * mask
    out[np.arange(len(lengths)), lengths - 1] += scores
    return out


def np_masked_mean(x: np.ndarray, mask: np.ndarray) -> float:
    return float((x * mask).sum() / mask.sum())


def np_masked_var(x: np.ndarray, mask: np.ndarray) -> float:
    n = mask.sum()
    mean = (x * mask).sum() / n
    return float((((x - mean) ** 2) * mask).sum() / (n - 1))


def np_reduce_sum(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return (x * mask).sum(axis=1)


def np_moments(x: np.ndarray, mask: np.ndarray) -> tuple[int, float, float]:
    """The batch statistics RunningMoments.update folds in: count, mean, sum of squares."""
    v = x[mask].astype(np.float64)
    mean = v.mean()
    return v.size, float(mean), float(((v - mean) ** 2).sum())


# ---------------------------------------------------------------------------------------------
# Optional anchors (only when importable; none is a dependency)
# ---------------------------------------------------------------------------------------------


def anchor_rows(b: int, t: int, batch: dict[str, np.ndarray], ours: dict[str, float],
                min_time: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def add(name: str, kernel: str, fn: Callable[[], Any]) -> None:
        try:
            sec = best_time(fn, min_time, min_reps=1)
        except Exception as e:  # an anchor's API moved: report, do not fail the bench
            print(f"  [skip] {name}: {type(e).__name__}: {e}", file=sys.stderr)
            return
        rows.append({"kernel": f"{kernel} (anchor: {name})", "size": f"{b}x{t}", "sec": sec,
                     "vs_ours": sec / ours[kernel]})

    try:
        import torch
    except ImportError:
        return rows
    tr = {k: torch.from_numpy(v) for k, v in batch.items() if k != "lengths"}
    mask_f = tr["mask"].float()
    try:
        from verl.trainer.ppo import core_algos  # type: ignore[import-not-found]

        add("verl compute_gae_advantage_return", "gae", lambda: core_algos.compute_gae_advantage_return(
            tr["rewards"], tr["values"], mask_f, GAMMA, LAM))
        idx = np.repeat(np.arange(b // 8), 8).astype(object)
        add("verl compute_grpo_outcome_advantage", "group_advantages->tokens",
            lambda: core_algos.compute_grpo_outcome_advantage(tr["rewards"] * 0 + mask_f, mask_f, idx))
    except ImportError:
        pass
    try:
        from torchrl.objectives.value.functional import (  # type: ignore[import-not-found]
            vec_generalized_advantage_estimate,
        )

        lengths = torch.from_numpy(batch["lengths"])
        done = torch.zeros(b, t, 1, dtype=torch.bool)
        done[torch.arange(b), lengths - 1, 0] = True
        v3 = tr["values"].unsqueeze(-1)
        nv = torch.cat([v3[:, 1:], torch.zeros(b, 1, 1)], dim=1)
        add("torchrl vec_generalized_advantage_estimate", "gae",
            lambda: vec_generalized_advantage_estimate(GAMMA, LAM, v3, nv,
                                                       tr["rewards"].unsqueeze(-1), done))
    except ImportError:
        pass
    try:
        from openrlhf.models.utils import compute_approx_kl  # type: ignore[import-not-found]

        add("openrlhf compute_approx_kl", "kl k3",
            lambda: compute_approx_kl(tr["logp"], tr["ref_logp"], kl_estimator="k3"))
    except ImportError:
        pass
    try:
        import rlox  # type: ignore[import-not-found]

        if hasattr(rlox, "compute_batch_group_advantages"):
            s64 = batch["scores"].astype(np.float64)
            add("rlox compute_batch_group_advantages", "group_advantages (B,)",
                lambda: rlox.compute_batch_group_advantages(s64, 8))
    except ImportError:
        pass
    return rows


# ---------------------------------------------------------------------------------------------
# Main table
# ---------------------------------------------------------------------------------------------


def copy_time(nbytes: int, min_time: float) -> float:
    """np.copyto of nbytes/2 bytes: nbytes of memory traffic (read + write)."""
    half = max(nbytes // 2, 1)
    src = np.ones(half, np.uint8)
    dst = np.empty_like(src)
    return best_time(lambda: np.copyto(dst, src), min_time)


def bench_size(b: int, t: int, group_sizes: list[int], min_time: float) -> list[dict[str, Any]]:
    x = make_batch(b, t)
    r, v, m, lp, ref, s, lengths = (x["rewards"], x["values"], x["mask"], x["logp"],
                                    x["ref_logp"], x["scores"], x["lengths"])
    n = b * t
    rows: list[dict[str, Any]] = []

    def row(kernel: str, ours: Callable[[], Any], base: Callable[[], Any] | None,
            traffic: int | None, target: str = "") -> None:
        t_ours = best_time(ours, min_time)
        t_np = best_time(base, min_time, min_reps=1) if base is not None else None
        t_copy = copy_time(traffic, min_time) if traffic else None
        rows.append({"kernel": kernel, "size": f"{b}x{t}", "ours": t_ours, "numpy": t_np,
                     "copy": t_copy, "bytes": traffic, "target": target})

    big = n >= 1024 * 1024
    row("gae", lambda: ops.gae(r, v, m, gamma=GAMMA, lam=LAM), lambda: np_gae(r, v, m, GAMMA, LAM),
        17 * n, ">=25x numpy" if (b, t) == (1024, 2048) else "")
    row("discounted_returns", lambda: ops.discounted_returns(r, m, gamma=GAMMA),
        lambda: np_returns(r, m, GAMMA), 9 * n)
    for g in group_sizes:
        row(f"group_advantages (B,) g={g}", lambda g=g: ops.group_advantages(s, group_size=g),
            lambda g=g: np_group(s, g), None)
        row(f"group_advantages->tokens g={g}",
            lambda g=g: ops.broadcast_to_tokens(ops.group_advantages(s, group_size=g), m),
            lambda g=g: np_group_tokens(s, g, m), 5 * n + 8 * b, ">=50% copy" if big else "")
    row("kl k3", lambda: ops.kl(lp, ref), lambda: np_kl_k3(lp, ref), 12 * n,
        ">=50% copy" if big else "")
    row("masked_whiten", lambda: ops.masked_whiten(r, m), lambda: np_whiten(r, m), 9 * n,
        ">=50% copy" if big else "")
    row("shaped_rewards k1", lambda: ops.shaped_rewards(s, lp, ref, m, beta=BETA),
        lambda: np_shaped(s, lp, ref, m, lengths, BETA), 13 * n + 4 * b,
        ">=50% copy" if big else "")
    row("masked_mean", lambda: ops.masked_mean(r, m), lambda: np_masked_mean(r, m), 5 * n)
    row("masked_var", lambda: ops.masked_var(r, m), lambda: np_masked_var(r, m), 5 * n)
    row("reduce_tokens sum", lambda: ops.reduce_tokens(r, m), lambda: np_reduce_sum(r, m),
        5 * n + 4 * b)
    row("broadcast_to_tokens", lambda: ops.broadcast_to_tokens(s, m), lambda: s[:, None] * m,
        5 * n + 4 * b)
    rm = ops.RunningMoments()
    row("RunningMoments.update", lambda: rm.update(r, m), lambda: np_moments(r, m), 5 * n)
    return rows


def verdict(rw: dict[str, Any]) -> str:
    tgt = rw["target"]
    if not tgt:
        return ""
    if tgt.endswith("numpy"):
        ok = rw["numpy"] / rw["ours"] >= 25
    else:
        ok = rw["copy"] / rw["ours"] >= 0.5
    return f"{tgt}: {'PASS' if ok else 'MISS'}"


def fmt_ms(sec: float | None) -> str:
    return "-" if sec is None else f"{sec * 1e3:.3f}"


def print_table(rows: list[dict[str, Any]]) -> None:
    head = ("| kernel | B×T | rlhf_core ms | numpy ms | × vs numpy | copyto ms (same bytes) "
            "| % of copyto speed | target |")
    print(head)
    print("|" + "---|" * 8)
    for rw in rows:
        vs = "-" if rw["numpy"] is None else f"{rw['numpy'] / rw['ours']:.1f}×"
        pct = "-" if rw["copy"] is None else f"{100 * rw['copy'] / rw['ours']:.0f}%"
        print(f"| {rw['kernel']} | {rw['size']} | {fmt_ms(rw['ours'])} | {fmt_ms(rw['numpy'])} "
              f"| {vs} | {fmt_ms(rw['copy'])} | {pct} | {verdict(rw)} |")


def overhead_rows(min_time: float) -> list[dict[str, Any]]:
    """Per-call cost on an 8×16 batch: the wrapper (ops), the raw binding (_core), numpy."""
    x = make_batch(8, 16, seed=1)
    r, v, m, lp, ref, s = (x["rewards"], x["values"], x["mask"], x["logp"], x["ref_logp"],
                           x["scores"])
    cases = [
        ("gae", lambda: ops.gae(r, v, m), lambda: _core.gae(r, v, m),
         lambda: np_gae(r, v, m, GAMMA, LAM)),
        ("group_advantages g=4", lambda: ops.group_advantages(s, group_size=4),
         lambda: _core.group_advantages(s, None, 4), lambda: np_group(s, 4)),
        ("kl k3", lambda: ops.kl(lp, ref), lambda: _core.kl(lp, ref), lambda: np_kl_k3(lp, ref)),
        ("masked_whiten", lambda: ops.masked_whiten(r, m), lambda: _core.masked_whiten(r, m),
         lambda: np_whiten(r, m)),
        ("shaped_rewards", lambda: ops.shaped_rewards(s, lp, ref, m, beta=BETA),
         lambda: _core.shaped_rewards(s, lp, ref, m, None, BETA),
         lambda: np_shaped(s, lp, ref, m, x["lengths"], BETA)),
        ("broadcast_to_tokens", lambda: ops.broadcast_to_tokens(s, m),
         lambda: _core.broadcast_to_tokens(s, m), lambda: s[:, None] * m),
    ]
    out = []
    for name, wrapped, raw, base in cases:
        out.append({"kernel": name, "ops_us": best_time(wrapped, min_time, max_reps=20000) * 1e6,
                    "core_us": best_time(raw, min_time, max_reps=20000) * 1e6,
                    "numpy_us": best_time(base, min_time, max_reps=20000) * 1e6})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="two sizes (64x512, 1024x2048), group size 8, shorter timing")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)
    refuse_debug_build()

    sizes = QUICK_SIZES if args.quick else SIZES
    group_sizes = [8] if args.quick else [8, 16]
    min_time = 0.05 if args.quick else 0.25
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"# rlhf_core {_core.__version__} ({_core.BUILD_PROFILE}), numpy {np.__version__}, "
          f"{platform.machine()}, {os.cpu_count()} CPUs, RAYON_NUM_THREADS="
          f"{os.environ.get('RAYON_NUM_THREADS', 'default')}, load average {load[0]:.2f}")
    print("# padded float32, lengths uniform in [T/4, T]; times are best of repeated calls\n")

    rows: list[dict[str, Any]] = []
    anchors: list[dict[str, Any]] = []
    for b, t in sizes:
        size_rows = bench_size(b, t, group_sizes, min_time)
        rows.extend(size_rows)
        ours = {rw["kernel"]: rw["ours"] for rw in size_rows}
        ours["group_advantages (B,)"] = ours.get("group_advantages (B,) g=8", float("nan"))
        ours["group_advantages->tokens"] = ours.get("group_advantages->tokens g=8", float("nan"))
        anchors.extend(anchor_rows(b, t, make_batch(b, t), ours, min_time))
    print_table(rows)

    print("\n# per-call overhead, 8×16 batch (µs per call)\n")
    print("| kernel | rlhf_core.ops | rlhf_core._core | numpy |")
    print("|---|---|---|---|")
    over = overhead_rows(0.05 if args.quick else 0.2)
    for o in over:
        print(f"| {o['kernel']} | {o['ops_us']:.1f} | {o['core_us']:.1f} | {o['numpy_us']:.1f} |")

    if anchors:
        print("\n# anchors' own functions on the same inputs\n")
        print("| function | B×T | ms | × slower than rlhf_core |")
        print("|---|---|---|---|")
        for a in anchors:
            print(f"| {a['kernel']} | {a['size']} | {a['sec'] * 1e3:.3f} | {a['vs_ours']:.1f}× |")
    else:
        print("\n# anchors: none of verl, openrlhf, torchrl, rlox is importable; no anchor rows")

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "overhead": over, "anchors": anchors}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
