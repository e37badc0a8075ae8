"""The gold-free stopping rule (rlhf_core.monitor.GoldFreeStop) on synthetic metric curves: it
stops where a signal takes off and keeps the right evaluation, not on noise, a single spike
needs patience, smoothing, the KL budget, NaN inputs, resume, bad arguments; and the trainer
callback (rlhf_core.trainers.callbacks.GoldFreeEarlyStop) on tiny GRPO runs."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rlhf_core.models import RewardEnsemble, RewardModel
from rlhf_core.monitor import GoldFreeStop
from rlhf_core.rewards import RewardModelScorer
from rlhf_core.testing.trainers import FAST, policy, tokenizer
from rlhf_core.trainers import GRPOConfig, GRPOTrainer
from rlhf_core.trainers.callbacks import GoldFreeEarlyStop


def test_stops_where_the_disagreement_takes_off() -> None:
    """Disagreement flat (with noise) for 10 evaluations, then +20% per evaluation: it first
    exceeds 1.5x its start at evaluation 13; with patience 2 the run stops at 14 and keeps 12,
    the last evaluation before the alarms."""
    rng = np.random.default_rng(0)
    stop = GoldFreeStop(max_check_gap=None, max_check_drop=None)
    for i in range(30):
        d = 1.0 + 0.03 * rng.standard_normal() if i <= 10 else 1.0 + 0.2 * (i - 10)
        if i == 0:
            d = 1.0
        stop.update(i * 5, proxy=0.1 * i, disagreement=0.05 * d)
    assert stop.stop_step == 14 * 5 and stop.best_step == 12 * 5
    assert stop.reasons == ["disagreement"]
    ratios = [p.signals["disagreement"] for p in stop.history]
    assert ratios[0] == 1.0 and ratios[13] == pytest.approx(1.6)
    assert [p.step for p in stop.history if p.over][:2] == [65, 70]


def test_keeps_the_check_peak_and_stops_on_its_drop() -> None:
    """The check model's reward rises to evaluation 6 and falls after; the proxy keeps rising.
    The drop exceeds 0.25 starting spreads from evaluation 9 on: stop at 10, keep 6."""
    stop = GoldFreeStop(max_disagreement_ratio=None, max_check_gap=None)
    for i in range(20):
        check = -0.5 + 0.1 * min(i, 6) - 0.1 * max(0, i - 6)
        stop.update(i, proxy=0.2 * i, check=check, proxy_scale=0.5, check_scale=1.0)
    assert stop.best_step == 6 and stop.stop_step == 10 and stop.reasons == ["check_drop"]
    drops = [round(p.signals["check_drop"], 6) for p in stop.history[:11]]
    assert drops == [0, 0, 0, 0, 0, 0, 0, 0.1, 0.2, 0.3, 0.4]


def test_check_gap_is_in_starting_spreads() -> None:
    """Proxy +0.5 per evaluation in spreads of 0.5 (= +1), check +0.25 per evaluation in
    spreads of 1 (= +0.25): the gap grows by 0.75 per evaluation and exceeds 1 at the 2nd."""
    stop = GoldFreeStop(max_disagreement_ratio=None, max_check_drop=None, patience=1)
    for i in range(4):
        stop.update(i, proxy=0.5 * i, check=0.25 * i, proxy_scale=0.5, check_scale=1.0)
    gaps = [p.signals["check_gap"] for p in stop.history]
    np.testing.assert_allclose(gaps[:3], [0.0, 0.75, 1.5])
    assert stop.stop_step == 2 and stop.best_step == 1  # the check peak before the alarm


def _curve(overoptimises: bool, n: int = 24) -> list[dict[str, float]]:
    """Synthetic evaluations of an RL run: the proxy rises steadily. Healthy: the check model
    rises with it and the members keep agreeing. Over-optimising: from
    evaluation 8 on the check model falls and the members' disagreement grows 10% per
    evaluation, as when the policy leaves the preference data."""
    rng = np.random.default_rng(3)
    out = []
    for i in range(n):
        late = max(0, i - 8) if overoptimises else 0
        out.append(
            {
                "proxy": 0.15 * i + 0.02 * rng.standard_normal(),
                "check": 0.15 * min(i, 8)
                + (0.15 * (i - 8) if i > 8 and not overoptimises else 0)
                - 0.12 * late
                + 0.02 * rng.standard_normal(),
                "disagreement": 0.2 * (1 + 0.1 * late) * (1 + 0.02 * rng.standard_normal()),
                "kl": 0.3 * i,
            }
        )
    return out


@pytest.mark.parametrize("overoptimises", [False, True])
def test_fires_on_overoptimisation_and_not_on_a_healthy_run(overoptimises: bool) -> None:
    """The default rule on the two synthetic curves: no stop on the healthy one; on the
    over-optimising one a stop two evaluations after the check model turned, keeping the
    check peak (evaluation 8)."""
    stop = GoldFreeStop()
    for i, r in enumerate(_curve(overoptimises)):
        stop.update(i * 5, r["proxy"], disagreement=r["disagreement"], check=r["check"],
                    kl=r["kl"], proxy_scale=0.5, check_scale=0.5)  # fmt: skip
    s = stop.summary()
    if not overoptimises:
        assert s["stop_step"] is None and s["best_step"] is None and not stop.should_stop
        return
    assert stop.should_stop and 9 * 5 <= s["stop_step"] <= 12 * 5
    assert s["best_step"] == 8 * 5 and "check_drop" in s["reasons"]
    assert s["num_updates"] == 24  # updates after the stop are still recorded


def test_the_candidate_is_known_as_the_run_goes() -> None:
    """``candidate_step`` / ``improved`` follow the calm update with the best check reward; an
    update with a signal over its threshold (a forgiven spike with a high check reward) is
    never a candidate, and the stop keeps the candidate of that moment."""
    stop = GoldFreeStop(max_check_gap=None, max_check_drop=None, patience=2)
    seen = []
    rows = [(1.0, 0.0), (1.0, 0.3), (2.0, 0.9), (1.0, 0.2), (1.0, 0.4), (2.0, 0.5), (2.0, 0.6)]
    for i, (d, check) in enumerate(rows):
        stop.update(i, proxy=float(i), disagreement=d, check=check)
        seen.append((stop.candidate_step, stop.improved))
    assert seen == [(0, True), (1, True), (1, False), (1, False), (4, True), (4, False),
                    (4, False)]  # fmt: skip
    assert stop.stop_step == 6 and stop.best_step == 4


def test_last_safe_keeps_the_last_calm_update() -> None:
    stop = GoldFreeStop(max_check_gap=None, max_check_drop=None, keep="last_safe")
    for i, d in enumerate([1.0, 1.0, 1.0, 2.0, 1.0, 2.0, 2.0]):
        stop.update(i, proxy=0.0, disagreement=d, check=1.0 - 0.1 * i)
    assert stop.stop_step == 6 and stop.best_step == 4


def test_noise_does_not_stop() -> None:
    """200 evaluations of pure noise around flat signals (disagreement +-5%, check +-0.05
    spreads, smoothed): no stop."""
    rng = np.random.default_rng(1)
    stop = GoldFreeStop(smoothing=0.5)
    for i in range(200):
        stop.update(
            i,
            proxy=0.02 * rng.standard_normal(),
            disagreement=0.1 * (1 + 0.05 * rng.standard_normal()),
            check=0.05 * rng.standard_normal(),
            proxy_scale=1.0,
            check_scale=1.0,
        )
    assert not stop.should_stop and stop.stop_step is None and stop.best_step is None
    assert max(p.signals["disagreement"] for p in stop.history) < 1.5


def test_a_single_spike_needs_patience() -> None:
    stop = GoldFreeStop(max_check_gap=None, max_check_drop=None, patience=2)
    for i, d in enumerate([1.0, 1.0, 2.0, 1.0, 1.0, 2.0, 2.0, 1.0]):
        stop.update(i, proxy=i, disagreement=d)
    assert stop.stop_step == 6 and stop.best_step == 4  # the spike at 2 was forgiven
    assert stop.history[-1].over == []  # recorded after the stop, which stays final
    assert stop.should_stop


def test_smoothing_filters_a_spike() -> None:
    """With smoothing 0.8 a one-evaluation spike to 3x moves the smoothed ratio to 1.4 only."""
    stop = GoldFreeStop(max_check_gap=None, max_check_drop=None, patience=1, smoothing=0.8)
    for i, d in enumerate([1.0, 1.0, 3.0, 1.0]):
        stop.update(i, proxy=0.0, disagreement=d)
    assert not stop.should_stop
    assert stop.history[2].signals["disagreement"] == pytest.approx(1.4)


def test_kl_budget() -> None:
    stop = GoldFreeStop(
        max_disagreement_ratio=None, max_check_gap=None, max_check_drop=None, max_sqrt_kl=2.0,
        patience=1,
    )  # fmt: skip
    for i, kl in enumerate([0.0, 1.0, 3.9, 4.4, 9.0]):
        stop.update(i * 10, proxy=float(i), kl=kl)
    assert stop.stop_step == 30 and stop.best_step == 20 and stop.reasons == ["sqrt_kl"]
    assert stop.history[3].signals["sqrt_kl"] == pytest.approx(math.sqrt(4.4))


def test_kl_growth_against_the_first_positive_kl() -> None:
    """The reference is the first update with a KL above the floor (step 0's exact 0 and a
    1e-9 rounding are skipped): sqrt(1.0) = 1 at step 10. The growth then trips at 2.25 (1.5 x
    that) and, with patience 2, stops at step 40 keeping step 20 (the last calm update)."""
    stop = GoldFreeStop(
        max_disagreement_ratio=None, max_check_gap=None, max_check_drop=None,
        max_kl_growth=1.4, patience=2, keep="last_safe",
    )  # fmt: skip
    for i, kl in enumerate([0.0, 1e-9, 1.0, 1.9, 2.25, 4.0, 9.0]):
        stop.update(i * 10 - 10 if i else 0, proxy=float(i), kl=kl)
    steps = [p.step for p in stop.history]
    assert steps == [0, 0, 10, 20, 30, 40, 50]
    assert "kl_growth" not in stop.history[1].signals
    growth = [p.signals.get("kl_growth") for p in stop.history]
    assert growth[2:] == pytest.approx([1.0, math.sqrt(1.9), 1.5, 2.0, 3.0])
    assert stop.stop_step == 40 and stop.best_step == 20 and stop.reasons == ["kl_growth"]


def test_kl_growth_reference_step_and_level_kl() -> None:
    """kl_reference_step moves the yardstick: at every step the first KLs are tiny, and taking
    step 5's distance as the reference keeps a run whose KL levels off (a KL penalty) from
    tripping, while one whose KL keeps growing trips."""
    level = GoldFreeStop(max_disagreement_ratio=None, max_check_gap=None, max_check_drop=None,
                         max_kl_growth=2.0, kl_reference_step=5)  # fmt: skip
    growing = GoldFreeStop(max_disagreement_ratio=None, max_check_gap=None, max_check_drop=None,
                           max_kl_growth=2.0, kl_reference_step=5)  # fmt: skip
    for t in range(1, 41):
        level.update(t, proxy=0.0, kl=4.0 * (1 - math.exp(-t / 3)))
        growing.update(t, proxy=0.0, kl=0.2 * t * t)
    assert "kl_growth" not in level.history[3].signals  # step 5 is the reference
    assert level.history[4].signals["kl_growth"] == 1.0
    assert level.history[5].signals["kl_growth"] == pytest.approx(
        math.sqrt((1 - math.exp(-6 / 3)) / (1 - math.exp(-5 / 3)))
    )
    assert not level.should_stop and max(p.signals["kl_growth"] for p in level.history[4:]) < 1.2
    # sqrt(KL) = sqrt(0.2) t: twice step 5's at t = 10, over it from 11, stopped at 12
    assert growing.stop_step == 12 and growing.reasons == ["kl_growth"]
    assert growing.best_step == 10


def test_kl_growth_survives_a_resume() -> None:
    whole = GoldFreeStop(max_kl_growth=2.0)
    first = GoldFreeStop(max_kl_growth=2.0)
    kls = [0.0, 0.5, 0.8, 1.5, 2.1, 3.0]
    for i, kl in enumerate(kls):
        whole.update(i, proxy=0.0, kl=kl)
        if i < 3:
            first.update(i, proxy=0.0, kl=kl)
    second = GoldFreeStop(max_kl_growth=2.0)
    second.load_state_dict(json.loads(json.dumps(first.state_dict())))
    for i, kl in enumerate(kls[3:], start=3):
        second.update(i, proxy=0.0, kl=kl)
    assert [p.signals for p in second.history] == [p.signals for p in whole.history]
    assert second.summary() == whole.summary() and whole.stop_step == 5


def test_missing_and_nan_inputs() -> None:
    stop = GoldFreeStop(patience=1)
    stop.update(0, proxy=0.0, disagreement=float("nan"), check=None, kl=float("inf"))
    assert stop.history[0].signals == {}
    stop.update(1, proxy=0.1, disagreement=0.2)  # the first finite value is the reference
    stop.update(2, proxy=0.2, disagreement=0.5)
    assert stop.history[2].signals["disagreement"] == pytest.approx(2.5)
    assert stop.stop_step == 2 and stop.best_step == 1


def test_resume_equals_an_uninterrupted_run() -> None:
    def feed(s: GoldFreeStop, steps: range) -> None:
        for i in steps:
            s.update(i, proxy=0.1 * i, disagreement=1 + 0.1 * i, check=0.05 * min(i, 4),
                     kl=0.5 * i, proxy_scale=0.3, check_scale=0.2, )  # fmt: skip

    whole = GoldFreeStop(smoothing=0.3)
    feed(whole, range(12))
    first = GoldFreeStop(smoothing=0.3)
    feed(first, range(5))
    second = GoldFreeStop(smoothing=0.3)
    second.load_state_dict(first.state_dict())
    feed(second, range(5, 12))
    assert second.summary() == whole.summary()
    assert [p.signals for p in second.history] == [p.signals for p in whole.history]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"patience": 0}, "patience"),
        ({"smoothing": 1.0}, "smoothing"),
        ({"max_disagreement_ratio": -1.0}, "max_disagreement_ratio"),
        ({"max_sqrt_kl": float("inf")}, "max_sqrt_kl"),
        ({"max_kl_growth": 0.0}, "max_kl_growth"),
        ({"kl_reference_step": -1}, "kl_reference_step"),
        ({"keep": "best"}, "keep"),
    ],
)
def test_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        GoldFreeStop(**kwargs)


# --------------------------------------------------------------------------------------------
# the trainer callback


def _grpo(tmp_path: Path, callback: Any, steps: int = 6, **kw: Any) -> tuple[Any, Any]:
    """A tiny GRPO run optimising a 3-member ensemble with a check model of weight 0."""
    ens = RewardEnsemble.from_policy(policy(1), 3, seed=1)
    check = RewardModelScorer(RewardModel.from_policy(policy(2)), tokenizer(), name="check_model")
    cfg = GRPOConfig(
        run_dir=str(tmp_path), total_steps=steps, rollout_batch_size=8, num_samples=4,
        learning_rate=3e-3, max_new_tokens=6, reward_weights=[1.0, 0.0], save_every=1, **FAST,
        **kw,
    )  # fmt: skip
    t = GRPOTrainer(cfg, policy(), tokenizer(), ["Q:", "A:"], [ens, check], callbacks=[callback])
    return t, t.train()


def test_callback_stops_a_run_and_keeps_the_candidate(tmp_path: Path) -> None:
    """A sqrt(KL) budget of 1e-6 trips at the first rollout of a policy that moved from the
    reference (patience 1): the run stops there, before its 6 steps, reports it, keeps the
    calm update with the best check reward on disk and writes the rule's summary. The
    ensemble and check inputs are read from the rollout metrics."""
    cb = GoldFreeEarlyStop(on="step", max_disagreement_ratio=None, max_check_gap=None,
                           max_check_drop=None, max_sqrt_kl=1e-6, patience=1)  # fmt: skip
    t, res = _grpo(tmp_path, cb)
    hist = cb.rule.history
    moved = next(p.step for p in hist if p.kl is not None and p.kl > 1e-12)
    calm = [p for p in hist if p.step < moved]
    assert calm and all(p.kl is not None and p.kl <= 1e-12 for p in calm)  # k1 can be < 0
    assert res.stopped_early and res.step == moved == t.global_step == cb.rule.stop_step < 6
    best = max(calm, key=lambda p: p.check).step  # type: ignore[arg-type,return-value]
    assert cb.rule.best_step == best
    assert f"at step {moved}); kept step {best}" in res.stop_reason
    assert "gold-free stop (sqrt_kl" in res.stop_reason
    assert cb.source == "reward_ensemble"
    first = hist[0]
    assert first.disagreement is not None and first.disagreement > 0 and first.check is not None
    assert cb._scales is not None and cb._scales["proxy_scale"] > 0  # noqa: SLF001
    summary = json.loads((tmp_path / "gold_free.json").read_text())
    assert summary["stop_step"] == moved and summary["best_step"] == best
    assert summary["reasons"] == ["sqrt_kl"]
    kept = json.loads((tmp_path / "gold_free_best" / "gold_free_step.json").read_text())
    assert kept == {"step": best}


def test_callback_with_the_kl_growth_alone(tmp_path: Path) -> None:
    """The KL growth is a usable signal on its own (its input is the logged kl): the rule's
    reference is the first step whose KL passes the floor, and every later update reports the
    growth over it."""
    cb = GoldFreeEarlyStop(on="step", max_disagreement_ratio=None, max_check_gap=None,
                           max_check_drop=None, max_kl_growth=1e6)  # fmt: skip
    _, res = _grpo(tmp_path, cb, steps=4)
    assert not res.stopped_early and len(cb.rule.history) == 4
    hist = cb.rule.history
    ref = next(p for p in hist if p.kl is not None and p.kl > 1e-6)
    assert ref.signals["kl_growth"] == 1.0
    later = hist[hist.index(ref) + 1 :]
    assert later, "the policy moved only at the last step"
    for p in later:
        assert p.kl is not None
        assert p.signals["kl_growth"] == pytest.approx(
            math.sqrt(max(p.kl, 0.0)) / math.sqrt(ref.kl)  # type: ignore[arg-type]
        )


def test_callback_saves_each_candidate_and_resumes(tmp_path: Path) -> None:
    """Thresholds no run reaches: no stop; every calm update with a better check reward is
    saved to gold_free_best (its step recorded); the rule's state is in the checkpoints, so a
    resumed run continues the same history."""
    rule = dict(max_disagreement_ratio=1e6, max_check_gap=None, max_check_drop=None)
    cb = GoldFreeEarlyStop(on="step", **rule)
    _, res = _grpo(tmp_path, cb, steps=3)
    assert not res.stopped_early and len(cb.rule.history) == 3
    kept = json.loads((tmp_path / "gold_free_best" / "gold_free_step.json").read_text())
    assert kept["step"] == cb.rule.candidate_step
    assert (tmp_path / "gold_free_best" / "config.json").is_file()
    again = GoldFreeEarlyStop(on="step", **rule)
    _grpo(tmp_path, again, steps=4, resume=True)
    assert [p.step for p in again.rule.history] == [1, 2, 3, 4]
    assert [p.proxy for p in again.rule.history[:3]] == [p.proxy for p in cb.rule.history]


def test_callback_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="on='later'"):
        GoldFreeEarlyStop(on="later")
    with pytest.raises(ValueError, match="patience"):
        GoldFreeEarlyStop(patience=0)
    with pytest.raises(ValueError, match="eval_dataset"):
        _grpo(tmp_path / "a", GoldFreeEarlyStop())  # on="eval" without evaluations
    # only the disagreement has a threshold, but the reward source is no ensemble
    cb = GoldFreeEarlyStop(on="step", source="check_model", max_check_gap=None,
                           max_check_drop=None)  # fmt: skip
    with pytest.raises(ValueError, match="reward/check_model/std"):
        _grpo(tmp_path / "b", cb)
    with pytest.raises(KeyError, match="reward/nothing"):
        _grpo(tmp_path / "c", GoldFreeEarlyStop(on="step", source="nothing"))
