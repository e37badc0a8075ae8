"""Stage 2, preferences: the SFT model samples two completions of each of ``num_pairs``
prompts; the hidden gold reward labels each pair with Bradley-Terry noise,
``P(a > b) = sigmoid(beta * (gold(a) - gold(b)))``. Pairs of two identical completions are
dropped; the first ``heldout_pairs`` are held out. Writes ``preferences/train.jsonl`` and
``heldout.jsonl`` (``prompt``, ``chosen``, ``rejected``, ``p_chosen``, ``chosen_gold``,
``rejected_gold``); its results include the *noise ceiling* of the held-out pairs, the best
accuracy any model can expect on them under that noise."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from rlhf_core._io import read_jsonl, write_jsonl
from rlhf_core.demo.pipeline import Run

__all__ = ["label_preferences"]


def label_preferences(run: Run, policy: Any) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """Sample and label the pairs (or read them, when done); returns the training pairs, the
    held-out pairs and the stage's results."""
    from rlhf_core import tasks
    from rlhf_core.generation import generate
    from rlhf_core.rewards import label_pairs

    cfg, c = run.cfg, run.cfg.preferences
    run.header(
        f"preferences: the hidden gold reward labels {c.num_pairs} pairs of SFT samples "
        f"(Bradley-Terry noise, beta={c.beta:g})"
    )
    folder = run.root / "preferences"
    data = run.done("preferences")
    if data is not None:
        train = read_jsonl(folder / "train.jsonl", null_as_nan=True)
        held = read_jsonl(folder / "heldout.jsonl", null_as_nan=True)
        if train and held:
            run.say(f"  done before: {len(train)} training and {len(held)} held-out pairs")
            return train, held, data
    t0 = time.time()
    prompts = tasks.prompt_set(c.num_pairs, seed=cfg.seed + 1)
    comp = generate(
        policy,
        run.tok,
        prompts,
        num_samples=2,
        max_new_tokens=cfg.max_new_tokens,
        seed=cfg.seed + 2,
        batch_size=256,
    )
    a, b = comp.texts[0::2], comp.texts[1::2]
    labelled = label_pairs(
        prompts, a, b, tasks.gold_reward, sample=True, beta=c.beta, seed=cfg.seed + 3
    )
    same = sum(r["chosen"] == r["rejected"] for r in labelled)
    rows = [
        {
            "prompt": r["prompt"],
            "chosen": r["chosen"],
            "rejected": r["rejected"],
            "p_chosen": r["p_chosen"],
            "chosen_gold": r["chosen_score"],
            "rejected_gold": r["rejected_score"],
        }
        for r in labelled
        if r["chosen"] != r["rejected"]
    ]
    if len(rows) <= c.heldout_pairs:
        raise RuntimeError(
            f"only {len(rows)} usable pairs (of {c.num_pairs}; {same} had two identical "
            f"completions): raise preferences.num_pairs above heldout_pairs + some"
        )
    held, train = rows[: c.heldout_pairs], rows[c.heldout_pairs :]
    ga = np.array([r["chosen_gold"] for r in held])
    gb = np.array([r["rejected_gold"] for r in held])
    ceiling = tasks.bradley_terry_ceiling(ga, gb, beta=c.beta)
    write_jsonl(folder / "train.jsonl", train)
    write_jsonl(folder / "heldout.jsonl", held)
    gold_sft = np.asarray(tasks.gold_reward(comp.prompts, comp.texts), dtype=np.float64)
    data = run.finish(
        "preferences",
        {
            "num_train": len(train),
            "num_heldout": len(held),
            "identical_dropped": int(same),
            "ceiling": ceiling,
            "label_gold_agreement": float(np.mean(ga > gb) + 0.5 * np.mean(ga == gb)),
            "gold_mean_sft": float(np.nanmean(gold_sft)),
        },
        t0,
    )
    run.say(
        f"  {len(train)} training / {len(held)} held-out pairs ({same} identical pairs "
        f"dropped); noise ceiling on the held-out pairs {ceiling:.3f}"
    )
    return train, held, data
