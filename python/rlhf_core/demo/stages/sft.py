"""Stage 1, SFT: the built-in model (``model_size``) learns the synthetic language of
:mod:`rlhf_core.tasks` from a fixed seed. Saves ``sft/model/``; its results are the mean loss
of the last 10% of steps and the step count."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from rlhf_core.demo.pipeline import Run

__all__ = ["train_sft"]


def train_sft(run: Run) -> Any:
    """Train (or load, when done) the SFT policy; returns it."""
    from rlhf_core import tasks
    from rlhf_core.models import build_builtin_policy, load_policy
    from rlhf_core.monitor import read_metrics
    from rlhf_core.trainers.sft import SFTConfig, SFTTrainer

    cfg, c = run.cfg, run.cfg.sft
    run.header(
        f"SFT: the built-in {cfg.model_size} model learns the synthetic language ({c.steps} steps)"
    )
    model_dir = run.root / "sft" / "model"
    data = run.done("sft")
    if data is not None and model_dir.is_dir():
        run.say(f"  done before: loss {data['loss']:.3f}")
        return load_policy(model_dir, device=run.device())
    t0 = time.time()
    policy = build_builtin_policy(run.tok, seed=cfg.seed, size=cfg.model_size)
    corpus = tasks.sft_corpus(c.corpus_size, seed=cfg.seed)
    fields = run.trainer_fields("sft")
    fields["progress_bar"] = cfg.progress_bar
    trainer = SFTTrainer(
        SFTConfig(
            **fields,
            total_steps=c.steps,
            batch_size=c.batch_size,
            learning_rate=c.learning_rate,
            lr_scheduler="cosine",
            warmup_steps=min(c.warmup_steps, c.steps - 1),
            save_every=max(1, c.steps // 4),
        ),
        policy,
        run.tok,
        corpus,
    )
    res = trainer.train()
    rows = [r for r in read_metrics(run.root / "sft") if "loss" in r]
    tail = rows[-max(1, len(rows) // 10) :]
    loss = float(np.mean([r["loss"] for r in tail])) if tail else float("nan")
    run.save_model(policy, model_dir)
    run.finish("sft", {"loss": loss, "steps": res.step}, t0)
    run.say(f"  SFT loss {loss:.3f} (last 10% of steps)")
    return policy
