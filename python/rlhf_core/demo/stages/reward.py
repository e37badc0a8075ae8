"""Stage 3, the proxy reward model: a :class:`~rlhf_core.models.RewardModel` on the SFT
body learns the training pairs' labels (Bradley-Terry loss). Saves ``reward/reward_model/``;
its results are the held-out accuracy (next to the noise ceiling), the training accuracy of
the last 10% of steps, the held-out accuracy curve, and how often the model orders held-out
pairs like the noise-free gold reward."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from rlhf_core.demo.pipeline import Run

__all__ = ["train_reward_model"]


def train_reward_model(
    run: Run, policy: Any, train: list[dict], held: list[dict], prefs: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """Train (or load, when done) the proxy on ``train``, measured on ``held``; ``prefs`` are
    the preference stage's results. Returns the reward model and the stage's results."""
    from rlhf_core.models import RewardModel
    from rlhf_core.monitor import read_metrics
    from rlhf_core.rewards import RewardModelScorer
    from rlhf_core.trainers.reward import RewardConfig, RewardTrainer

    c = run.cfg.reward
    run.header(f"proxy reward model: Bradley-Terry on the SFT body ({c.steps} steps)")
    rm_dir = run.root / "reward" / "reward_model"
    data = run.done("reward")
    if data is not None and rm_dir.is_dir():
        run.say(f"  done before: held-out accuracy {data['accuracy']:.3f}")
        return RewardModel.from_pretrained(rm_dir).to(run.device()), data
    t0 = time.time()
    rm = RewardModel.from_policy(policy, seed=run.cfg.seed)
    fields = run.trainer_fields("reward")
    fields["progress_bar"] = run.cfg.progress_bar
    trainer = RewardTrainer(
        RewardConfig(
            **fields,
            total_steps=c.steps,
            batch_size=c.batch_size,
            learning_rate=c.learning_rate,
            lr_scheduler="cosine",
            warmup_steps=min(10, c.steps - 1),
            eval_every=c.eval_every,
            save_every=max(1, c.steps // 4),
        ),
        rm,
        run.tok,
        train,
        eval_pairs=held,
    )
    trainer.train()
    rows = read_metrics(run.root / "reward")
    curve = [(int(r["step"]), float(r["eval/accuracy"])) for r in rows if "eval/accuracy" in r]
    accs = [float(r["accuracy"]) for r in rows if "accuracy" in r]
    train_acc = float(np.mean(accs[-max(1, len(accs) // 10) :])) if accs else None
    final = trainer.evaluate()
    # agreement with the noise-free gold order (what the labels only sample)
    scorer = RewardModelScorer(rm, run.tok, batch_size=64)
    prompts = [r["prompt"] for r in held]
    pc = np.array(scorer(prompts, [r["chosen"] for r in held]))
    pr = np.array(scorer(prompts, [r["rejected"] for r in held]))
    g = np.array([r["chosen_gold"] - r["rejected_gold"] for r in held])
    ok = g != 0
    gold_order = float(np.mean(np.sign(pc - pr)[ok] == np.sign(g)[ok])) if ok.any() else None
    run.save_model(rm, rm_dir)
    data = run.finish(
        "reward",
        {
            "accuracy": final["accuracy"],
            "margin": final["margin"],
            "num_pairs": len(held),
            "ceiling": prefs["ceiling"],
            "train_accuracy": train_acc,
            "gold_order_accuracy": gold_order,
            "curve": curve,
        },
        t0,
    )
    shown = gold_order if gold_order is not None else float("nan")
    run.say(
        f"  held-out accuracy {final['accuracy']:.3f} (noise ceiling {prefs['ceiling']:.3f}, "
        f"chance 0.5); agrees with the noise-free gold order on {shown:.3f} of pairs"
    )
    return rm, data
