"""Stage 3, the proxy reward model and the check model. The training pairs are split
(:func:`~rlhf_core.trainers.reward.split_check_pairs`, ``check_fraction``): the proxy, an
ensemble of ``ensemble`` reward heads on the SFT body (:class:`~rlhf_core.models.
RewardEnsemble`, each head on its own bootstrap resample of the proxy's part), learns one part;
an independent check model (one reward model on its own copy of the SFT body) learns the other.
Both are measured on the same held-out pairs. Saves ``reward/reward_model/`` (the ensemble) and
``reward/check_model/``; the results are the proxy's held-out accuracy (its members' mean score)
next to the noise ceiling, the members' mean accuracy and disagreement, the training accuracy
of the last 10% of steps, the held-out accuracy curve, how often the proxy orders held-out pairs
like the noise-free gold reward, and the check model's accuracy."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from rlhf_core.demo.pipeline import Run, latest_step
from rlhf_core.demo.workers import Beside, start_beside

__all__ = ["train_check_model", "train_reward_model"]


def train_reward_model(
    run: Run, policy: Any, train: list[dict], held: list[dict], prefs: dict[str, Any]
) -> tuple[Any, Any, dict[str, Any]]:
    """Train (or load, when done) the proxy and the check model on ``train``, measured on
    ``held``; ``prefs`` are the preference stage's results. Returns the proxy (a
    ``RewardEnsemble``, or a ``RewardModel`` when ``ensemble`` is 1), the check model (None
    when ``check_fraction`` is 0) and the stage's results."""
    from rlhf_core.models import load_reward_model
    from rlhf_core.monitor import read_metrics
    from rlhf_core.rewards import RewardModelScorer
    from rlhf_core.rewards.ensemble import RewardEnsembleScorer
    from rlhf_core.trainers.reward import split_check_pairs

    c = run.cfg.reward
    what = f"an ensemble of {c.ensemble} heads" if c.ensemble > 1 else "one reward model"
    check_note = (
        f" + a check model on {c.check_fraction:.0%} of the pairs" if c.check_fraction else ""
    )
    run.header(f"proxy reward model: {what} on the SFT body{check_note} ({c.steps} steps)")
    folder = run.root / "reward"
    rm_dir, check_dir = folder / "reward_model", folder / "check_model"
    data = run.done("reward")
    if data is not None and rm_dir.is_dir() and (check_dir.is_dir() or not c.check_fraction):
        run.say(f"  done before: held-out accuracy {data['accuracy']:.3f}")
        check = load_reward_model(check_dir).to(run.device()) if c.check_fraction else None
        return load_reward_model(rm_dir).to(run.device()), check, data
    t0 = time.time()
    proxy_pairs, check_pairs = (
        split_check_pairs(train, c.check_fraction, run.cfg.seed)
        if c.check_fraction
        else (train, [])
    )
    # the check model trains in a worker process beside the proxy when the demo has workers
    # (started once the proxy's trainer holds reward/, which the check model's folder is in)
    side: list[Beside] = []

    def start_check() -> None:
        if check_pairs and latest_step(run.root / "reward" / "check") < c.steps:
            job = start_beside(run, "reward/check")
            side.extend([job] if job is not None else [])

    try:
        rm, final = _train(
            run, policy, "reward", proxy_pairs, held, c.ensemble, before_train=start_check
        )
        for job in side:
            job.join()
    finally:
        for job in side:
            job.stop()
    check_acc = None
    check = None
    if check_pairs:  # trained beside: this reads its final checkpoint back, as on a resume
        check, check_final = _train(run, policy, "reward/check", check_pairs, held, 1, 1)
        check_acc = check_final["accuracy"]
        run.save_model(check, check_dir)
    rows = read_metrics(folder)
    curve = [(int(r["step"]), float(r["eval/accuracy"])) for r in rows if "eval/accuracy" in r]
    accs = [float(r["accuracy"]) for r in rows if "accuracy" in r]
    train_acc = float(np.mean(accs[-max(1, len(accs) // 10) :])) if accs else None
    # agreement with the noise-free gold order (what the labels only sample)
    scorer: Any = (
        RewardEnsembleScorer(rm, run.tok, batch_size=64)
        if c.ensemble > 1
        else RewardModelScorer(rm, run.tok, batch_size=64)
    )
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
            "num_train_proxy": len(proxy_pairs),
            "num_train_check": len(check_pairs),
            "ensemble": c.ensemble,
            "member_accuracy": final.get("member_accuracy"),
            "margin_std": final.get("margin_std"),
            "check_accuracy": check_acc,
            "ceiling": prefs["ceiling"],
            "train_accuracy": train_acc,
            "gold_order_accuracy": gold_order,
            "curve": curve,
        },
        t0,
    )
    shown = gold_order if gold_order is not None else float("nan")
    members = (
        f"; its {c.ensemble} members {final['member_accuracy']:.3f} on average"
        if "member_accuracy" in final
        else ""
    )
    run.say(
        f"  held-out accuracy {final['accuracy']:.3f}{members} (noise ceiling "
        f"{prefs['ceiling']:.3f}, chance 0.5); agrees with the noise-free gold order on "
        f"{shown:.3f} of pairs"
        + (f"; check model {check_acc:.3f}" if check_acc is not None else "")
    )
    return rm, check, data


def train_check_model(run: Run) -> None:
    """Train the check model to its last step (its checkpoints in ``<run_dir>/reward/check``),
    from the SFT model and the preference pairs the run folder holds: the job a worker process
    does beside the proxy's training (:func:`rlhf_core.demo.workers.start_beside`).
    :func:`train_reward_model` then reads the final checkpoint back and saves the model."""
    from rlhf_core.demo.stages.preferences import label_preferences
    from rlhf_core.demo.stages.sft import train_sft
    from rlhf_core.trainers.reward import split_check_pairs

    c = run.cfg.reward
    policy = train_sft(run)
    train, held, _ = label_preferences(run, policy)
    _, check_pairs = split_check_pairs(train, c.check_fraction, run.cfg.seed)
    _train(run, policy, "reward/check", check_pairs, held, 1, 1, evaluate=False)


def _train(
    run: Run,
    policy: Any,
    name: str,
    pairs: list[Any],
    held: list[dict],
    members: int,
    head_seed: int = 0,
    *,
    evaluate: bool = True,
    before_train: Callable[[], None] | None = None,
) -> tuple[Any, dict[str, float]]:
    """Train a reward model (``members`` > 1: an ensemble) on the SFT ``policy``'s body in the
    folder ``<run_dir>/<name>``; returns it and its final held-out metrics (with ``evaluate``;
    ``{}`` without). A trainer that had finished before (the stage was interrupted after it,
    or a worker trained it) gets its final checkpoint back. ``before_train`` is called once
    the trainer holds its folder, before it trains."""
    from rlhf_core.checkpoint import latest_checkpoint
    from rlhf_core.models import RewardEnsemble, RewardModel
    from rlhf_core.trainers.reward import RewardConfig, RewardTrainer

    c = run.cfg.reward
    seed = run.cfg.seed + head_seed
    model: Any = (
        RewardEnsemble.from_policy(policy, members, seed=seed)
        if members > 1
        else RewardModel.from_policy(policy, seed=seed)
    )
    fields = run.trainer_fields(name)
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
        model,
        run.tok,
        pairs,
        eval_pairs=held,
    )
    trainer.claim_run_dir()
    if before_train is not None:
        before_train()
    if trainer.train().already_finished:
        found = latest_checkpoint(run.root / name)
        if found is not None:
            trainer.load(found)
    if not evaluate:
        return model, {}
    return model, _final_eval(run.root / name, c.steps) or trainer.evaluate()


def _final_eval(folder: Any, step: int) -> dict[str, float]:
    """The held-out metrics the trainer in ``folder`` logged after its last step ``step`` (it
    always evaluates there: the same numbers :meth:`RewardTrainer.evaluate` gives on the
    final weights, without a second pass); ``{}`` when that record is missing."""
    from rlhf_core.monitor import read_metrics

    try:
        logged = read_metrics(folder)
    except FileNotFoundError:
        return {}
    rows = [r for r in logged if r.get("step") == step and "eval/accuracy" in r]
    if not rows:
        return {}
    return {k[len("eval/") :]: float(v) for k, v in rows[-1].items() if k.startswith("eval/")}
