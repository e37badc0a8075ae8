"""``rlhf-core eval``: sample a policy, score the samples with every reward source, measure the
KL from a reference; write the means and every sample."""

from __future__ import annotations

import math
import pathlib
from collections.abc import Callable
from typing import Any

import numpy as np

from rlhf_core._io import write_jsonl
from rlhf_core.cli.loading import (
    device_for,
    load_model,
    load_prompt_table,
    load_reference,
    load_scorers,
    load_tokenizer_for,
)
from rlhf_core.cli.outputs import write_json
from rlhf_core.cli.run_configs import EvalConfig
from rlhf_core.evaluation import PolicyEval, evaluate_policy
from rlhf_core.generation import opened_backend
from rlhf_core.rewards import combine_rewards

__all__ = ["run_eval"]


def _scored(name: str, scores: np.ndarray) -> Callable[..., np.ndarray]:
    """A reward function that returns scores already computed (float64 (N,)), so that
    :func:`combine_rewards` weighs them without scoring the samples again."""

    def fn(prompts: list[str], completions: list[str], **columns: Any) -> np.ndarray:
        return scores

    fn.__name__ = name
    return fn


def combined_reward(ev: PolicyEval, weights: list[float] | None) -> float:
    """Mean over the samples of the weighted sum of the reward sources of ``ev`` (weights in
    the order of ``ev.scores``; None = all 1), combined by
    :func:`rlhf_core.rewards.combine_rewards` as training combines them; samples whose
    combined reward is not finite are left out (NaN when none is)."""
    fns = [_scored(n, s) for n, s in ev.scores.items()]
    total = combine_rewards(fns, weights, ev.prompts, ev.texts)
    assert isinstance(total, np.ndarray)
    ok = total[np.isfinite(total)]
    return float(ok.mean()) if ok.size else math.nan


def run_eval(cfg: EvalConfig) -> int:
    """Writes ``run_dir/eval.json`` (``reward/<source>``, ``reward/combined`` with several
    sources, ``kl``, lengths) and ``run_dir/samples.jsonl`` (every completion with its scores
    and KL), and prints the means."""
    device = device_for(cfg)
    run = pathlib.Path(cfg.run_dir)
    tok = load_tokenizer_for(cfg.model, cfg.tokenizer, cfg=cfg)
    policy = load_model(cfg.model, tok, seed=cfg.seed, cfg=cfg).to(device)
    prompts, columns = load_prompt_table(cfg, tok)
    fns, names = load_scorers(cfg, tok, device)
    ref = load_reference(cfg, tok)
    vllm = cfg.vllm_config(seed=cfg.seed) if cfg.generation_backend == "vllm" else None
    with opened_backend(cfg.generation_backend, policy, tok, vllm=vllm) as backend:
        ev = evaluate_policy(
            policy,
            tok,
            prompts,
            dict(zip(names, fns, strict=True)),
            reference=None if ref is None else ref.to(device),
            columns=columns,
            num_samples=cfg.num_samples,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
            seed=cfg.seed,
            batch_size=cfg.batch_size,
            generation_backend=backend,
        )
    summary = ev.summary()
    if len(names) > 1:
        summary["reward/combined"] = combined_reward(ev, cfg.reward_weights)
    rows = []
    for i in range(len(ev)):
        row: dict[str, Any] = {"prompt": ev.prompts[i], "completion": ev.texts[i]}
        row.update({f"reward/{n}": float(ev.scores[n][i]) for n in names})
        if ev.kl is not None:
            row["kl"] = float(ev.kl[i])
        row["length"] = int(ev.response_lengths[i])
        row.update({k: v[i] for k, v in ev.columns.items() if k not in row})
        rows.append(row)
    write_jsonl(run / "samples.jsonl", rows)
    out = {"model": cfg.model, "reference": cfg.reference, "num_prompts": len(prompts), **summary}
    write_json(run / "eval.json", out)
    width = max(len(k) for k in summary)
    print(f"eval: {cfg.model} on {len(prompts)} prompts x {cfg.num_samples} samples")
    for k, v in summary.items():
        print(f"  {k.ljust(width)}  {v:.4g}")
    print(f"eval: {run / 'eval.json'}, {run / 'samples.jsonl'}")
    return 0
