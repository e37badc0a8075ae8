"""Short fixed-seed runs of every trainer on the built-in model, reduced to what they compute.

Each run trains a few steps through the public Python API and records, per logged step, every
metric except timings, plus a SHA-256 of the final trainable weights. Two checkouts that
compute the same maths give the same file byte for byte; ``tests/test_behaviour.py`` compares
a fresh run with the snapshot kept in ``tests/data/behaviour.json``.

    python tools/behaviour_snapshot.py                 # print the snapshot as JSON
    python tools/behaviour_snapshot.py --write PATH    # write it (and the versions it ran on)
    python tools/behaviour_snapshot.py --compare PATH  # compare with a saved one, exit 1 if different

The snapshot is only comparable on the same torch / transformers / numpy versions (sampling
and kernels may change between releases), and bit for bit only on the same CPU (float32 sums
run in another order elsewhere); the file records both, and on another CPU the metrics are
compared to a tolerance instead.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

PROMPTS = ["Q:", "A:", "x=", "y=", "ab", "1+"]


def digit_reward(prompts: list[str], completions: list[str], **_: Any) -> list[float | None]:
    """Fraction of digits: dense, so groups have variance."""
    return [sum(c.isdigit() for c in t) / max(len(t), 1) for t in completions]


def sometimes_none(prompts: list[str], completions: list[str], **_: Any) -> list[float | None]:
    """A watched (weight 0) source that cannot score some completions."""
    return [None if len(t) % 3 == 0 else float(len(t)) for t in completions]


def _pairs(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    rng = random.Random(seed)
    out: list[tuple[str, str, str]] = []
    while len(out) < n:
        x = "".join(rng.choice("ab") for _ in range(8))
        y = "".join(rng.choice("ab") for _ in range(8))
        if x.count("ab") != y.count("ab"):
            c, r = (x, y) if x.count("ab") > y.count("ab") else (y, x)
            out.append(("Q:", c, r))
    return out


FAST = dict(progress_bar=False, tensorboard=False, device="cpu")
RL = dict(learning_rate=1e-3, max_new_tokens=6, weight_decay=0.0, total_steps=3, **FAST)


def _tok() -> Any:
    from rlhf_core.models import load_tokenizer

    return load_tokenizer()


def _policy(seed: int = 0) -> Any:
    from rlhf_core.models import build_builtin_policy

    return build_builtin_policy(_tok(), seed=seed)


def run_sft(run: str) -> Any:
    from rlhf_core.trainers import SFTConfig, SFTTrainer

    data = [("1+1=", "2"), ("2+2=", "4"), ("3+3=", "6"), {"text": "hello world"}] * 4
    cfg = SFTConfig(run_dir=run, learning_rate=1e-3, batch_size=4, total_steps=3, **FAST)
    return SFTTrainer(cfg, _policy(), _tok(), data)


def run_reward(run: str) -> Any:
    from rlhf_core.models import RewardModel
    from rlhf_core.trainers import RewardConfig, RewardTrainer

    cfg = RewardConfig(
        run_dir=run, learning_rate=1e-3, batch_size=4, total_steps=3, micro_batch_size=2,
        eval_fraction=0.2, eval_every=2, **FAST,
    )
    return RewardTrainer(cfg, RewardModel.from_policy(_policy()), _tok(), _pairs(40))


def run_dpo(run: str) -> Any:
    from rlhf_core.trainers import DPOConfig, DPOTrainer

    cfg = DPOConfig(run_dir=run, learning_rate=1e-3, batch_size=4, total_steps=3, **FAST)
    return DPOTrainer(cfg, _policy(), _tok(), _pairs(16))


def run_ppo(run: str) -> Any:
    from rlhf_core.models import RewardModel
    from rlhf_core.trainers import PPOConfig, PPOTrainer

    cfg = PPOConfig(
        run_dir=run, rollout_batch_size=6, minibatch_size=3, micro_batch_size=2, ppo_epochs=2,
        value_clip=0.2, kl_target=0.1, reward_weights=[1.0, 0.5], **RL,
    )
    rm = RewardModel.from_policy(_policy(1))
    return PPOTrainer(cfg, _policy(), _tok(), PROMPTS, [rm, digit_reward])


def run_ppo_kl_loss(run: str) -> Any:
    from rlhf_core.trainers import PPOConfig, PPOTrainer

    cfg = PPOConfig(
        run_dir=run, rollout_batch_size=6, kl_in_reward=False, kl_estimator="k3",
        whiten_advantages=False, value_init="policy", **RL,
    )
    return PPOTrainer(cfg, _policy(), _tok(), PROMPTS, digit_reward)


def run_grpo(run: str) -> Any:
    from rlhf_core.trainers import GRPOConfig, GRPOTrainer

    cfg = GRPOConfig(
        run_dir=run, rollout_batch_size=12, num_samples=4, kl_coef=0.05, ppo_epochs=2,
        minibatch_size=6, micro_batch_size=4, reward_weights=[1.0, 0.0], mask_truncated=True,
        **RL,
    )
    return GRPOTrainer(cfg, _policy(), _tok(), PROMPTS, [digit_reward, sometimes_none])


def run_dr_grpo(run: str) -> Any:
    from rlhf_core.trainers import GRPOConfig, GRPOTrainer

    cfg = GRPOConfig(
        run_dir=run, rollout_batch_size=8, num_samples=4, loss_type="dr_grpo", clip_high=0.28,
        dual_clip=3.0, scale_rewards="batch", kl_coef=0.02, kl_in_reward=True, **RL,
    )
    return GRPOTrainer(cfg, _policy(), _tok(), PROMPTS, digit_reward)


def run_rloo(run: str) -> Any:
    from rlhf_core.trainers import RLOOConfig, RLOOTrainer

    cfg = RLOOConfig(run_dir=run, rollout_batch_size=8, num_samples=4, **RL)
    return RLOOTrainer(cfg, _policy(), _tok(), PROMPTS, digit_reward)


def run_reinforce_pp(run: str) -> Any:
    from rlhf_core.trainers import ReinforcePPConfig, ReinforcePPTrainer

    cfg = ReinforcePPConfig(
        run_dir=run, rollout_batch_size=6, num_samples=1, kl_coef=0.05, **RL,
    )
    return ReinforcePPTrainer(cfg, _policy(), _tok(), PROMPTS, digit_reward)


def run_best_of_n(run: str) -> Any:
    from rlhf_core.trainers import BestOfNConfig, BestOfNTrainer

    cfg = BestOfNConfig(run_dir=run, rollout_batch_size=8, num_samples=4, **RL)
    return BestOfNTrainer(cfg, _policy(), _tok(), PROMPTS, digit_reward)


RUNS: dict[str, Callable[[str], Any]] = {
    "sft": run_sft,
    "reward": run_reward,
    "dpo": run_dpo,
    "ppo": run_ppo,
    "ppo_kl_loss": run_ppo_kl_loss,
    "grpo": run_grpo,
    "dr_grpo": run_dr_grpo,
    "rloo": run_rloo,
    "reinforce_pp": run_reinforce_pp,
    "best_of_n": run_best_of_n,
}


def _plain(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return repr(v)
    return v


def _weights_digest(trainer: Any) -> str:
    try:
        from rlhf_core.parallel import unwrap_model
    except ImportError:  # before the parallel layer existed
        from rlhf_core.distributed import unwrap_model

    h = hashlib.sha256()
    for attr in ("policy", "value_model", "model"):
        m = getattr(trainer, attr, None)
        if isinstance(m, torch.nn.Module):
            for name, p in unwrap_model(m).named_parameters():
                if p.requires_grad:
                    h.update(name.encode())
                    h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def run_one(name: str) -> dict[str, Any]:
    from rlhf_core.monitor import read_metrics

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as run:
        trainer = RUNS[name](run)
        trainer.train()
        rows = read_metrics(Path(run) / "metrics.jsonl")
        steps = [
            {k: _plain(v) for k, v in sorted(r.items())
             if not k.startswith("time/") and k != "wall_time"}
            for r in rows
        ]
        return {"metrics": steps, "weights_sha256": _weights_digest(trainer)}


def versions() -> dict[str, str]:
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "numpy": np.__version__}


def machine() -> str:
    """The CPU the float32 results depend on: torch's vector instruction set (the kernels it
    dispatches to) and the processor's model name. Two machines that differ here sum in other
    orders, and results differ in the last bits (relative 1e-4 after a few steps, measured
    between an AVX512 AMD EPYC and the machine the first snapshot came from)."""
    name = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{torch.backends.cpu.get_cpu_capability()} {name}"


def snapshot(names: list[str] | None = None) -> dict[str, Any]:
    return {"versions": versions(), "machine": machine(),
            "runs": {n: run_one(n) for n in (names or list(RUNS))}}


#: tolerances across machines (:func:`differences` with ``exact=False``): float32 sums in
#: another order differ by up to ~1e-4 relative after a few steps, and values that are zero up
#: to rounding (a mean advantage of 1e-8) by ~1e-8 absolute
RTOL, ATOL = 1e-3, 1e-6


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        return abs(a - b) <= ATOL + RTOL * abs(a)
    return a == b


def differences(old: dict[str, Any], new: dict[str, Any], *, exact: bool = True) -> list[str]:
    """Human-readable differences between two snapshots' runs (empty when identical). With
    ``exact=False`` (another machine) metrics need only agree to :data:`RTOL` / :data:`ATOL`
    and the final weights, which follow the same rounding, are not compared."""
    out: list[str] = []
    for name in sorted(set(old["runs"]) | set(new["runs"])):
        a, b = old["runs"].get(name), new["runs"].get(name)
        if a is None or b is None:
            out.append(f"{name}: only in {'new' if a is None else 'old'}")
            continue
        if exact and a["weights_sha256"] != b["weights_sha256"]:
            out.append(f"{name}: final weights differ")
        if len(a["metrics"]) != len(b["metrics"]):
            out.append(f"{name}: {len(a['metrics'])} logged rows vs {len(b['metrics'])}")
        for i, (ra, rb) in enumerate(zip(a["metrics"], b["metrics"], strict=False)):
            for k in sorted(set(ra) | set(rb)):
                x, y = ra.get(k, "<missing>"), rb.get(k, "<missing>")
                if (x != y) if exact else not _close(x, y):
                    out.append(f"{name} row {i} {k}: {ra.get(k, '<missing>')} -> "
                               f"{rb.get(k, '<missing>')}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--write", help="write the snapshot to this JSON file")
    p.add_argument("--compare", help="compare with this saved snapshot")
    p.add_argument("--only", nargs="*", choices=list(RUNS), help="runs to make (default: all)")
    args = p.parse_args(argv)
    snap = snapshot(args.only)
    if args.write:
        Path(args.write).write_text(json.dumps(snap, indent=1, sort_keys=True) + "\n")
    if args.compare:
        old = json.loads(Path(args.compare).read_text())
        if old["versions"] != snap["versions"]:
            print(f"note: versions differ: saved {old['versions']}, here {snap['versions']}")
        exact = old.get("machine") == snap["machine"]
        if not exact:
            print(f"note: another machine ({old.get('machine')} -> {snap['machine']}): "
                  f"metrics compared to rtol {RTOL}, atol {ATOL}; weights not compared")
        if args.only:
            old["runs"] = {k: v for k, v in old["runs"].items() if k in args.only}
        diff = differences(old, snap, exact=exact)
        print("\n".join(diff) if diff else "identical: every metric and the final weights")
        return 1 if diff else 0
    if not args.write:
        json.dump(snap, sys.stdout, indent=1, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
