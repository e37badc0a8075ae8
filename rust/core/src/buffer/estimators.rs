//! The typed options of each advantage estimator that runs on a buffer
//! ([`super::advantages::compute`]): one struct per estimator, enums for every choice (each
//! parsed from its option string by `FromStr`), checked once.
//!
//! | estimator | options | defaults (the anchor matched) |
//! |---|---|---|
//! | `gae` | [`GaeAdvantages`] | γ = λ = 1, `skip`, no KL, token whitening (verl, OpenRLHF) |
//! | `reinforce++` | [`ReinforceAdvantages`] without baseline | γ = 1, `skip`, no KL, token whitening (OpenRLHF `reinforce`) |
//! | `reinforce++_baseline` | [`ReinforceAdvantages`] with a [`Grouping`] | group mean, no scaling, token whitening (OpenRLHF) |
//! | `grpo` | [`GroupAdvantages`] | group mean / group std, `eps` 1e-6, no whitening (verl) |
//! | `dr_grpo` | [`GroupAdvantages`] | group mean, no scaling (Dr. GRPO) |
//! | `rloo` | [`GroupAdvantages`] | leave-one-out mean, no scaling (verl, OpenRLHF) |
//!
//! [`AdvantageOptions::new`] builds the chosen estimator's options from the typed parts that
//! `RolloutBuffer.compute_advantages` accepts for every estimator, filling the per-estimator
//! defaults and checking every part, used or not.

use std::str::FromStr;

use crate::error::{CoreError, Result};
use crate::kernels::gae::{check_unit, GaeOptions, Masked};
use crate::kernels::group::{Baseline, GroupOptions, Scale, Singleton};
use crate::kernels::kl::{check_clamp, Estimator as KlEstimator};

/// Which estimator (the names `compute_advantages` takes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Estimator {
    Gae,
    ReinforcePP,
    ReinforcePPBaseline,
    Grpo,
    DrGrpo,
    Rloo,
}

impl FromStr for Estimator {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Estimator> {
        match s {
            "gae" => Ok(Estimator::Gae),
            "reinforce++" => Ok(Estimator::ReinforcePP),
            "grpo" => Ok(Estimator::Grpo),
            "dr_grpo" => Ok(Estimator::DrGrpo),
            "rloo" => Ok(Estimator::Rloo),
            "reinforce++_baseline" => Ok(Estimator::ReinforcePPBaseline),
            other => Err(CoreError::option(format!(
                "estimator must be one of 'gae', 'grpo', 'dr_grpo', 'rloo', 'reinforce++', \
                 'reinforce++_baseline', got {other:?}"
            ))),
        }
    }
}

impl Estimator {
    pub fn name(self) -> &'static str {
        match self {
            Estimator::Gae => "gae",
            Estimator::ReinforcePP => "reinforce++",
            Estimator::Grpo => "grpo",
            Estimator::DrGrpo => "dr_grpo",
            Estimator::Rloo => "rloo",
            Estimator::ReinforcePPBaseline => "reinforce++_baseline",
        }
    }

    /// Whether the estimator compares each score with its group.
    pub fn is_group(self) -> bool {
        !matches!(self, Estimator::Gae | Estimator::ReinforcePP)
    }

    /// The group baseline and the default scaling of a group estimator.
    fn group_defaults(self) -> (Baseline, Scale) {
        match self {
            Estimator::Grpo => (Baseline::Mean, Scale::Group),
            Estimator::Rloo => (Baseline::LeaveOneOut, Scale::None),
            _ => (Baseline::Mean, Scale::None),
        }
    }

    /// Token whitening for the token-level estimators, none for the GRPO family.
    fn default_whiten(self) -> Whiten {
        match self {
            Estimator::Gae | Estimator::ReinforcePP | Estimator::ReinforcePPBaseline => {
                Whiten::Token
            }
            _ => Whiten::None,
        }
    }
}

/// How advantages are whitened once estimated: `(x − μ)/sqrt(σ² + eps)` over the valid tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whiten {
    /// Leave them as estimated.
    None,
    /// Every valid token weighs the same (unbiased variance, verl's `masked_whiten`).
    Token,
    /// Every sequence weighs the same (each of its valid tokens weighs 1 / its count;
    /// population variance).
    Sequence,
}

impl FromStr for Whiten {
    type Err = CoreError;

    fn from_str(s: &str) -> Result<Whiten> {
        match s {
            "none" => Ok(Whiten::None),
            "token" => Ok(Whiten::Token),
            "sequence" => Ok(Whiten::Sequence),
            other => Err(CoreError::option(format!(
                "whiten must be 'none', 'token' or 'sequence', got {other:?}"
            ))),
        }
    }
}

/// A whitening mode and the `eps` inside its square root.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Whitening {
    pub mode: Whiten,
    pub eps: f64,
}

impl Whitening {
    pub fn check(&self) -> Result<()> {
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            return Err(CoreError::option(format!(
                "whiten_eps must be finite and >= 0, got {}",
                self.eps
            )));
        }
        Ok(())
    }
}

/// A KL penalty in the per-token rewards: `−coef·KL_t` on every valid token (needs the
/// `logprobs` and `ref_logprobs` fields when `coef ≠ 0`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KlPenalty {
    pub coef: f64,
    pub estimator: KlEstimator,
    pub clamp: Option<f64>,
}

impl KlPenalty {
    /// No penalty.
    pub const NONE: KlPenalty = KlPenalty {
        coef: 0.0,
        estimator: KlEstimator::K1,
        clamp: None,
    };

    pub fn check(&self) -> Result<()> {
        self.check_coef()?;
        check_clamp("kl_clamp", self.clamp)
    }

    fn check_coef(&self) -> Result<()> {
        if !self.coef.is_finite() {
            return Err(CoreError::option(format!(
                "kl_coef must be finite, got {}",
                self.coef
            )));
        }
        Ok(())
    }
}

/// How sequences are grouped and compared with their group: the group kernel's options, and
/// contiguous groups of `size` or (`None`) the buffer's `group_ids` field.
#[derive(Debug, Clone, Copy)]
pub struct Grouping {
    pub options: GroupOptions,
    pub size: Option<usize>,
}

impl Grouping {
    pub fn check(&self) -> Result<()> {
        let o = &self.options;
        GroupOptions::new(o.baseline, o.scale, o.ddof as i64, o.eps, o.singleton)?;
        if self.size == Some(0) {
            return Err(CoreError::option(
                "group_size must be a positive integer, got 0",
            ));
        }
        Ok(())
    }
}

/// `gae` (PPO): GAE over the `values` field.
#[derive(Debug, Clone, Copy)]
pub struct GaeAdvantages {
    pub gae: GaeOptions,
    pub kl: KlPenalty,
    pub whiten: Whitening,
}

/// `reinforce++` (no baseline) and `reinforce++_baseline` (the centred score): discounted
/// reward-to-go.
#[derive(Debug, Clone, Copy)]
pub struct ReinforceAdvantages {
    pub gamma: f64,
    pub masked: Masked,
    pub kl: KlPenalty,
    pub whiten: Whitening,
    pub baseline: Option<Grouping>,
}

/// `grpo`, `dr_grpo` and `rloo`: one advantage per sequence from its score and its group.
#[derive(Debug, Clone, Copy)]
pub struct GroupAdvantages {
    /// `Grpo`, `DrGrpo` or `Rloo` (the name stored with the results).
    pub estimator: Estimator,
    pub grouping: Grouping,
    pub whiten: Whitening,
}

/// The options of one estimator.
#[derive(Debug, Clone, Copy)]
pub enum AdvantageOptions {
    Gae(GaeAdvantages),
    Reinforce(ReinforceAdvantages),
    Group(GroupAdvantages),
}

/// What `compute_advantages` takes for groups whatever the estimator: `scale` (`None`: the
/// estimator's default), `ddof`, `eps`, `singleton`, and `size` (`None`: the `group_ids`
/// field).
#[derive(Debug, Clone, Copy)]
pub struct GroupArgs {
    pub scale: Option<Scale>,
    pub ddof: i64,
    pub eps: f64,
    pub singleton: Singleton,
    pub size: Option<i64>,
}

impl AdvantageOptions {
    /// The options of `estimator` from the parts `compute_advantages` takes for every
    /// estimator: the discount (`gamma`, `lam`, `masked`), the KL penalty, the grouping and the
    /// whitening (`whiten = None`: the estimator's default). Every part is checked, used or
    /// not; `scale` is refused for estimators without groups, a KL penalty for the GRPO family.
    pub fn new(
        estimator: Estimator,
        discount: GaeOptions,
        kl: KlPenalty,
        group: GroupArgs,
        whiten: Option<Whiten>,
        whiten_eps: f64,
    ) -> Result<AdvantageOptions> {
        if group.scale.is_some() && !estimator.is_group() {
            return Err(CoreError::option(format!(
                "scale applies to group estimators, not {:?}",
                estimator.name()
            )));
        }
        let (baseline, default_scale) = estimator.group_defaults();
        let options = GroupOptions::new(
            baseline,
            group.scale.unwrap_or(default_scale),
            group.ddof,
            group.eps,
            group.singleton,
        )?;
        let whiten = Whitening {
            mode: whiten.unwrap_or(estimator.default_whiten()),
            eps: whiten_eps,
        };
        whiten.check()?;
        kl.check_coef()?;
        let per_sequence = matches!(
            estimator,
            Estimator::Grpo | Estimator::DrGrpo | Estimator::Rloo
        );
        if kl.coef != 0.0 && per_sequence {
            return Err(CoreError::option(format!(
                "kl_coef puts a KL penalty into the rewards of gae / reinforce++ / reinforce++_baseline; {} \
                 uses scores only (put the KL term in the loss instead)",
                estimator.name()
            )));
        }
        check_unit("gamma", discount.gamma)?;
        check_unit("lam", discount.lam)?;
        check_clamp("kl_clamp", kl.clamp)?;
        let size = match group.size {
            None => None,
            Some(g) if g >= 1 => Some(g as usize),
            Some(g) => {
                return Err(CoreError::option(format!(
                    "group_size must be a positive integer, got {g}"
                )))
            }
        };
        let grouping = Grouping { options, size };
        Ok(match estimator {
            Estimator::Gae => AdvantageOptions::Gae(GaeAdvantages {
                gae: discount,
                kl,
                whiten,
            }),
            Estimator::ReinforcePP | Estimator::ReinforcePPBaseline => {
                AdvantageOptions::Reinforce(ReinforceAdvantages {
                    gamma: discount.gamma,
                    masked: discount.masked,
                    kl,
                    whiten,
                    baseline: (estimator == Estimator::ReinforcePPBaseline).then_some(grouping),
                })
            }
            Estimator::Grpo | Estimator::DrGrpo | Estimator::Rloo => {
                AdvantageOptions::Group(GroupAdvantages {
                    estimator,
                    grouping,
                    whiten,
                })
            }
        })
    }

    /// Which estimator these options are for.
    pub fn estimator(&self) -> Estimator {
        match self {
            AdvantageOptions::Gae(_) => Estimator::Gae,
            AdvantageOptions::Reinforce(r) if r.baseline.is_some() => {
                Estimator::ReinforcePPBaseline
            }
            AdvantageOptions::Reinforce(_) => Estimator::ReinforcePP,
            AdvantageOptions::Group(g) => g.estimator,
        }
    }

    /// The grouping of a group estimator or of `reinforce++_baseline`.
    pub fn grouping(&self) -> Option<&Grouping> {
        match self {
            AdvantageOptions::Gae(_) => None,
            AdvantageOptions::Reinforce(r) => r.baseline.as_ref(),
            AdvantageOptions::Group(g) => Some(&g.grouping),
        }
    }

    /// The KL penalty in the rewards (none for the GRPO family).
    pub fn kl(&self) -> KlPenalty {
        match self {
            AdvantageOptions::Gae(g) => g.kl,
            AdvantageOptions::Reinforce(r) => r.kl,
            AdvantageOptions::Group(_) => KlPenalty::NONE,
        }
    }

    pub fn whitening(&self) -> Whitening {
        match self {
            AdvantageOptions::Gae(g) => g.whiten,
            AdvantageOptions::Reinforce(r) => r.whiten,
            AdvantageOptions::Group(g) => g.whiten,
        }
    }

    /// Check options built field by field (what [`Self::new`] checks for the parts used).
    pub fn check(&self) -> Result<()> {
        self.whitening().check()?;
        self.kl().check()?;
        if let Some(g) = self.grouping() {
            g.check()?;
        }
        match self {
            AdvantageOptions::Gae(g) => {
                check_unit("gamma", g.gae.gamma)?;
                check_unit("lam", g.gae.lam)
            }
            AdvantageOptions::Reinforce(r) => check_unit("gamma", r.gamma),
            AdvantageOptions::Group(g) => match g.estimator {
                Estimator::Grpo | Estimator::DrGrpo | Estimator::Rloo => Ok(()),
                other => Err(CoreError::option(format!(
                    "GroupAdvantages is for grpo, dr_grpo or rloo, not {:?}",
                    other.name()
                ))),
            },
        }
    }
}
