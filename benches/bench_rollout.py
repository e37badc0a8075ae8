"""Rollout speed of the generation backends on CPU: vLLM, rlhf_core's decode loop, HF generate.

The workload of issue 15's CPU comparison: the built-in ``small`` model (Llama-shaped: hidden
128, 4 layers, 4 heads of 32, tied embeddings; 0.8M parameters, float32), 4 prompts x 8
samples x 64 new tokens at temperature 1, fixed length (no EOS stop: 2,048 completion tokens
per call), the sampler's logprobs returned (what the rollout buffer will store beside the
trainer's). Every backend samples through :func:`rlhf_core.generation.generate`.

The backends run in rounds (one call of each per round, after one warm-up call each), so that
the load of a shared machine falls on all of them alike; the table gives the median and the
fastest call, and completion tokens/s at the median. The vLLM engine is colocated (in this
process) and started before the first round; its start time and one weight sync are reported.

Usage (vLLM needs its environment, ``make vllm-env``)::

    make bench-rollout
    # = VLLM_ENABLE_V1_MULTIPROCESSING=0 OMP_NUM_THREADS=1 .venv-vllm/bin/python benches/bench_rollout.py
    python benches/bench_rollout.py --backends hf,decode_loop   # without vLLM
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import torch  # noqa: E402

from rlhf_core import models as M  # noqa: E402
from rlhf_core.generation import generate, make_backend  # noqa: E402

PROMPTS = [
    "Question: what is 12 + 7? Answer:",
    "Write a short poem about the sea.",
    "The cat sat on the",
    "def fibonacci(n):",
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backends", default="vllm,decode_loop,hf")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--size", default="small", help="built-in model size (small: 0.8M params)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    names = [x.strip() for x in args.backends.split(",") if x.strip()]
    unknown = set(names) - {"vllm", "decode_loop", "hf"}
    if unknown:
        p.error(f"--backends: unknown {sorted(unknown)}")

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # before vLLM pins it
    tok = M.load_tokenizer()
    model = M.build_builtin_policy(tok, seed=0, size=args.size).eval()
    prompts = (PROMPTS * args.prompts)[: args.prompts]
    kw: dict[str, Any] = dict(
        num_samples=args.samples,
        max_new_tokens=args.new_tokens,
        temperature=1.0,
        stop_at_eos=False,
        return_logprobs=True,
    )
    tokens = args.prompts * args.samples * args.new_tokens
    res: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "threads": torch.get_num_threads(),
        "model": f"builtin:{args.size}, {sum(p.numel() for p in model.parameters()):,} params",
        "workload": f"{args.prompts} prompts x {args.samples} samples x {args.new_tokens} tokens",
        "load_avg_start": os.getloadavg()[0],
        "backends": {},
    }
    backends: dict[str, Any] = {}
    for name in names:
        if name != "vllm":
            backends[name] = name
            continue
        try:
            import vllm  # noqa: F401
        except ImportError as exc:
            print(f"vllm: skipped ({exc}); run in .venv-vllm (make vllm-env)")
            continue
        from rlhf_core.generation.vllm import VLLMConfig

        t0 = time.perf_counter()
        engine = make_backend("vllm", model, tok, vllm=VLLMConfig(max_model_len=256))
        res["vllm_start_s"] = time.perf_counter() - t0
        res["vllm_sync_s"] = min(engine.sync_weights(model) for _ in range(3))
        res["vllm_version"] = vllm.__version__
        backends[name] = engine
    times: dict[str, list[float]] = {n: [] for n in backends}
    for rnd in range(args.repeats + 1):  # round 0 warms up
        for name, backend in backends.items():
            t0 = time.perf_counter()
            c = generate(model, tok, prompts, seed=rnd, generation_backend=backend, **kw)
            dt = time.perf_counter() - t0
            assert int(c.response_lengths.sum()) == tokens, name
            if rnd:
                times[name].append(dt)
            else:
                res["backends"].setdefault(name, {})["first_call_s"] = dt
    for name, ts in times.items():
        med = statistics.median(ts)
        res["backends"][name].update(
            median_s=med, min_s=min(ts), tokens_per_s=tokens / med, calls=len(ts)
        )
    res["load_avg_end"] = os.getloadavg()[0]
    for b in backends.values():
        if not isinstance(b, str):
            b.close()

    print(f"{res['model']}; {res['workload']} = {tokens} completion tokens per call; "
          f"{res['threads']} torch thread(s); load average {res['load_avg_start']:.1f} -> "
          f"{res['load_avg_end']:.1f} on {res['machine']}")  # fmt: skip
    if "vllm_start_s" in res:
        print(f"vllm {res['vllm_version']}: engine start {res['vllm_start_s']:.1f} s "
              f"(policy written + engine), weight sync {res['vllm_sync_s'] * 1e3:.0f} ms")  # fmt: skip
    print("| backend | s per call (median) | fastest | completion tokens/s | first call |")
    print("|---|---|---|---|---|")
    for name, r in res["backends"].items():
        print(f"| {name} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['tokens_per_s']:,.0f} | "
              f"{r['first_call_s']:.2f} s |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
