"""RLConfig: the policy-gradient fields (see :mod:`rlhf_core.trainers.config`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from rlhf_core import losses as L
from rlhf_core.errors import check_field
from rlhf_core.losses import correction as LC
from rlhf_core.trainers.config.rollout import RolloutConfig

__all__ = ["RLConfig"]


@dataclass
class RLConfig(RolloutConfig):
    """Fields shared by the policy-gradient trainers (PPO, GRPO, RLOO, REINFORCE++)."""

    ppo_epochs: int = field(
        default=1,
        metadata={"help": "passes over each rollout batch (μ, 'num_iterations' in GRPO)"},
    )
    minibatch_size: int | None = field(
        default=None,
        metadata={"help": "sequences per optimizer step; none = rollout_batch_size"},
    )
    clip_low: float = field(default=0.2, metadata={"help": "PPO clip ε_low"})
    clip_high: float | None = field(
        default=None, metadata={"help": "PPO clip ε_high (DAPO clip-higher); none = clip_low"}
    )
    dual_clip: float | None = field(
        default=None,
        metadata={"help": "dual-clip bound c > 1 for negative advantages (e.g. 3); none = off"},
    )
    log_ratio_clamp: float | None = field(
        default=20.0, metadata={"help": "clamp log π/π_old to ±this before exp; none = off"}
    )
    aggregation: str = field(
        default="token-mean",
        metadata={"help": f"loss aggregation, one of {', '.join(L.AGGREGATIONS)}"},
    )
    kl_coef: float = field(
        default=0.0, metadata={"help": "β, weight of the KL to the reference (>= 0)"}
    )
    kl_estimator: str = field(
        default="k3", metadata={"help": f"KL estimator, one of {', '.join(L.KL_ESTIMATORS)}"}
    )
    kl_in_reward: bool = field(
        default=False,
        metadata={"help": "KL as a per-token reward penalty (true) or a loss term (false)"},
    )
    kl_clamp: float | None = field(
        default=10.0,
        metadata={"help": "clamp each per-token KL estimate to ±this (OpenRLHF: 10); none = off"},
    )
    entropy_coef: float = field(
        default=0.0, metadata={"help": "entropy bonus coefficient (>= 0; entropy is logged)"}
    )
    mask_truncated: bool = field(
        default=False,
        metadata={"help": "leave completions without EOS out of the loss (DAPO overlong mask)"},
    )
    importance_sampling_level: str = field(
        default="token",
        metadata={
            "help": "ratio of the policy loss: 'token' (PPO), 'sequence' (GSPO: the "
            "length-normalised sequence ratio; GSPO clips it with clip_low=3e-4, "
            "clip_high=4e-4) or 'sequence_token' (GSPO-token: per-token gradients); TRL's name"
        },
    )
    sapo_temperature_pos: float = field(
        default=1.0,
        metadata={"help": "SAPO gate temperature τ for positive advantages (loss_type='sapo')"},
    )
    sapo_temperature_neg: float = field(
        default=1.05,
        metadata={"help": "SAPO gate temperature τ for other advantages (loss_type='sapo')"},
    )
    cispo_ratio_max: float | None = field(
        default=None,
        metadata={
            "help": "CISPO (loss_type='cispo') weight cap as an absolute ratio, with no lower "
            "bound: TRL's epsilon_high for cispo (ScaleRL: 5.0); none = verl's bounds "
            "[1 - clip_low, 1 + clip_high] (clip_low >= 1: no lower bound)"
        },
    )
    top_entropy_quantile: float = field(
        default=1.0,
        metadata={
            "help": "train the policy loss only on this fraction of each minibatch's tokens, "
            "those of highest entropy (TRL; the paper uses 0.2; 1 = every token); the "
            "normaliser still counts every token"
        },
    )
    clip_cov_ratio: float = field(
        default=0.0,
        metadata={
            "help": "Clip-Cov (verl loss_mode=clip_cov, 2e-4 there): take this fraction of "
            "tokens, drawn among those with clip_cov_lb < cov < clip_cov_ub, out of the "
            "gradient; 0 = off"
        },
    )
    clip_cov_lb: float = field(
        default=1.0, metadata={"help": "Clip-Cov: lower bound of the covariance (verl: 1)"}
    )
    clip_cov_ub: float = field(
        default=5.0, metadata={"help": "Clip-Cov: upper bound of the covariance (verl: 5)"}
    )
    kl_cov_ratio: float = field(
        default=0.0,
        metadata={
            "help": "KL-Cov (verl loss_mode=kl_cov, 2e-4 there): unclipped policy gradient "
            "plus ppo_kl_coef·|log r| on this fraction of tokens, those of largest "
            "covariance; 0 = off"
        },
    )
    ppo_kl_coef: float = field(
        default=1.0, metadata={"help": "KL-Cov's coefficient of |log r| (verl code: 1.0)"}
    )
    dynamic_sampling: bool = field(
        default=False,
        metadata={
            "help": "DAPO dynamic sampling: drop groups whose rewards are all equal (std <= "
            "dynamic_sampling_min_std; groups of one are kept) and sample more rounds of "
            "prompts until rollout_batch_size completions of informative groups are held"
        },
    )
    max_num_gen_batches: int = field(
        default=10,
        metadata={
            "help": "dynamic sampling: most generation rounds per step (verl's name; 0 = no "
            "limit); when they run out the batch is completed with dropped groups"
        },
    )
    dynamic_sampling_min_std: float = field(
        default=0.0,
        metadata={"help": "dynamic sampling: keep a group when its reward std is above this"},
    )
    teacher_kl_coef: float = field(
        default=1.0,
        metadata={
            "help": "on-policy distillation (with a teacher model): λ of the per-token "
            "advantage −λ·(log π − log π_teacher) added to the task advantage (slime: 1.0)"
        },
    )
    teacher_kl_clamp: float | None = field(
        default=10.0,
        metadata={
            "help": "on-policy distillation: clamp log π − log π_teacher to ±this (verl: 10); "
            "none = off"
        },
    )

    @property
    def policy_objective(self) -> str:
        """The objective on the ratio: ``"ppo"`` (clipped surrogate; Clip-Cov and KL-Cov are
        its covariance variants), ``"cispo"`` or ``"sapo"`` (set by ``loss_type`` in the
        GRPO family)."""
        return "ppo"

    def cispo_bounds(self) -> tuple[float | None, float]:
        """(ratio_min, ratio_max) of CISPO's weight: ``(None, cispo_ratio_max)`` (TRL's
        spelling) or ``(1 − clip_low, 1 + clip_high)`` (verl's)."""
        if self.cispo_ratio_max is not None:
            return None, self.cispo_ratio_max
        high = self.clip_low if self.clip_high is None else self.clip_high
        return L.cispo_bounds(self.clip_low, high)

    vllm_importance_sampling_correction: bool = field(
        default=True,
        metadata={
            "help": "when the rollout comes from an engine (generation_backend 'vllm'), weight "
            "the clipped per-token loss by the detached ratio trainer / engine logprob, "
            "truncated or masked by vllm_importance_sampling_mode (TRL's default: on; the "
            "mismatch metrics are logged either way). No effect with the local backends"
        },
    )
    vllm_importance_sampling_mode: str = field(
        default="sequence_mask",
        metadata={
            "help": f"one of {', '.join(LC.CORRECTION_MODES)}: token_truncate = TIS, token_mask "
            "= IcePop (with both bounds), sequence_truncate / sequence_mask = the product ratio "
            "of the sequence truncated / masked (MIS; TRL's default), geometric_mask = token "
            "ratios of sequences whose geometric-mean ratio is within the bounds"
        },
    )
    vllm_importance_sampling_clip_max: float | None = field(
        default=3.0, metadata={"help": "C_max of the weights (TRL: 3.0); none = no upper bound"}
    )
    vllm_importance_sampling_clip_min: float | None = field(
        default=None, metadata={"help": "C_min of the weights (TRL: none = no lower bound)"}
    )
    vllm_importance_sampling_denominator: str = field(
        default="original",
        metadata={
            "help": "tokens whose weight a mask mode set to 0: still counted in the loss's "
            "token / sequence counts ('original', AReaL and slime) or left out of them "
            "('kept', as verl's rejection sampling)"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_field(
            self.vllm_importance_sampling_mode in LC.CORRECTION_MODES,
            "vllm_importance_sampling_mode",
            self.vllm_importance_sampling_mode,
            f"expected one of {LC.CORRECTION_MODES}",
        )
        check_field(
            self.vllm_importance_sampling_denominator in LC.DENOMINATORS,
            "vllm_importance_sampling_denominator",
            self.vllm_importance_sampling_denominator,
            f"expected one of {LC.DENOMINATORS}",
        )
        hi, lo = self.vllm_importance_sampling_clip_max, self.vllm_importance_sampling_clip_min
        for name, v in (("vllm_importance_sampling_clip_max", hi),
                        ("vllm_importance_sampling_clip_min", lo)):  # fmt: skip
            check_field(v is None or (math.isfinite(v) and v >= 0), name, v,
                        "expected a finite ratio >= 0, or none (no bound)")  # fmt: skip
        check_field(
            hi is not None or lo is not None,
            "vllm_importance_sampling_clip_max",
            hi,
            "give at least one bound (clip_max, e.g. TRL's 3.0, and/or clip_min)",
        )
        check_field(
            hi is None or lo is None or lo <= hi,
            "vllm_importance_sampling_clip_min",
            lo,
            f"expected <= vllm_importance_sampling_clip_max={hi}",
        )
        check_field(self.ppo_epochs >= 1, "ppo_epochs", self.ppo_epochs, "expected >= 1")
        if self.minibatch_size is not None:
            check_field(
                self.minibatch_size >= 1 and self.rollout_batch_size % self.minibatch_size == 0,
                "minibatch_size",
                self.minibatch_size,
                f"expected a divisor of rollout_batch_size={self.rollout_batch_size} "
                "(every optimizer step sees the same number of sequences)",
            )
        check_field(self.clip_low >= 0, "clip_low", self.clip_low, "expected >= 0 (e.g. 0.2)")
        check_field(
            self.clip_high is None or self.clip_high >= 0,
            "clip_high",
            self.clip_high,
            "expected >= 0 (e.g. 0.28) or none",
        )
        check_field(
            self.dual_clip is None or self.dual_clip > 1,
            "dual_clip",
            self.dual_clip,
            "expected > 1 (e.g. 3.0) or none",
        )
        check_field(
            self.log_ratio_clamp is None or self.log_ratio_clamp > 0,
            "log_ratio_clamp",
            self.log_ratio_clamp,
            "expected > 0 (e.g. 20) or none",
        )
        check_field(
            self.aggregation in L.AGGREGATIONS,
            "aggregation",
            self.aggregation,
            f"unknown loss aggregation; expected one of {L.AGGREGATIONS}",
        )
        check_field(
            self.kl_coef >= 0,
            "kl_coef",
            self.kl_coef,
            "the KL coefficient beta must be >= 0 (0 disables the KL term)",
        )
        check_field(
            self.kl_estimator in L.KL_ESTIMATORS,
            "kl_estimator",
            self.kl_estimator,
            f"expected one of {L.KL_ESTIMATORS}",
        )
        check_field(
            self.kl_clamp is None or self.kl_clamp > 0,
            "kl_clamp",
            self.kl_clamp,
            "expected > 0 (e.g. 10) or none",
        )
        check_field(self.entropy_coef >= 0, "entropy_coef", self.entropy_coef, "expected >= 0")
        self._check_policy_loss_fields()
        check_field(
            self.max_num_gen_batches >= 0,
            "max_num_gen_batches",
            self.max_num_gen_batches,
            "expected >= 0 (0 = no limit; the DAPO recipe uses 10)",
        )
        check_field(
            math.isfinite(self.dynamic_sampling_min_std) and self.dynamic_sampling_min_std >= 0,
            "dynamic_sampling_min_std",
            self.dynamic_sampling_min_std,
            "expected a finite value >= 0 (0 = drop groups whose rewards are all equal)",
        )
        check_field(
            math.isfinite(self.teacher_kl_coef) and self.teacher_kl_coef >= 0,
            "teacher_kl_coef",
            self.teacher_kl_coef,
            "expected a finite value >= 0 (slime: 1.0)",
        )
        check_field(
            self.teacher_kl_clamp is None or self.teacher_kl_clamp > 0,
            "teacher_kl_clamp",
            self.teacher_kl_clamp,
            "expected > 0 (e.g. 10) or none",
        )
        if self.dynamic_sampling:
            check_field(
                self.num_samples >= 2,
                "num_samples",
                self.num_samples,
                "dynamic_sampling drops groups whose rewards are all equal; with one sample per "
                "prompt every group is kept: use num_samples >= 2",
            )

    def _check_policy_loss_fields(self) -> None:
        check_field(
            self.importance_sampling_level in L.IMPORTANCE_SAMPLING_LEVELS,
            "importance_sampling_level",
            self.importance_sampling_level,
            f"expected one of {L.IMPORTANCE_SAMPLING_LEVELS}",
        )
        for name in ("sapo_temperature_pos", "sapo_temperature_neg"):
            v = getattr(self, name)
            check_field(v > 0, name, v, "expected > 0 (TRL: 1.0 and 1.05)")
        check_field(
            self.cispo_ratio_max is None or self.cispo_ratio_max > 0,
            "cispo_ratio_max",
            self.cispo_ratio_max,
            "expected > 0 (e.g. 5.0) or none",
        )
        check_field(
            0 <= self.top_entropy_quantile <= 1,
            "top_entropy_quantile",
            self.top_entropy_quantile,
            "expected in [0, 1] (1 = every token; the paper uses 0.2)",
        )
        for name in ("clip_cov_ratio", "kl_cov_ratio"):
            v = getattr(self, name)
            check_field(0 <= v <= 1, name, v, "expected in [0, 1] (0 = off; verl: 2e-4)")
        check_field(
            self.clip_cov_lb < self.clip_cov_ub,
            "clip_cov_lb",
            self.clip_cov_lb,
            f"expected below clip_cov_ub={self.clip_cov_ub} (verl: 1 and 5)",
        )
        check_field(self.ppo_kl_coef >= 0, "ppo_kl_coef", self.ppo_kl_coef, "expected >= 0")
        covariance = [n for n in ("clip_cov_ratio", "kl_cov_ratio") if getattr(self, n) > 0]
        check_field(
            len(covariance) < 2,
            "kl_cov_ratio",
            self.kl_cov_ratio,
            "Clip-Cov and KL-Cov are two different losses: set one of clip_cov_ratio and "
            "kl_cov_ratio, the other 0",
        )
        if covariance:
            check_field(
                self.policy_objective == "ppo" and self.importance_sampling_level == "token",
                covariance[0],
                getattr(self, covariance[0]),
                "Clip-Cov and KL-Cov are token-level variants of the clipped surrogate: use "
                "them with importance_sampling_level='token' and a PPO-clip loss_type",
            )
        if self.policy_objective != "ppo":
            check_field(
                self.dual_clip is None,
                "dual_clip",
                self.dual_clip,
                f"the dual clip bounds the clipped surrogate; loss '{self.policy_objective}' "
                "has none (verl applies it to neither CISPO nor SAPO): set dual_clip to none",
            )

    @property
    def needs_reference(self) -> bool:
        """The reference is built when the KL is optimised (``kl_coef`` > 0) or logged
        (``track_kl``)."""
        return self.kl_coef > 0 or self.track_kl
