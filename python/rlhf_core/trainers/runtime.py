"""Where a trainer runs: the device, the models' placement over processes, and the checks that
stop every rank together.

- :func:`resolve_device`: ``"auto"`` → CUDA when available.
- :func:`apply_lora`: LoRA adapters on a policy (peft), seeded.
- :func:`place_trained` / :func:`place_frozen`: a model on this rank's device, wrapped with
  DDP or sharded with FSDP2 under ``torchrun`` (``config.parallel``); unchanged for one process.
- :func:`clip_grad_norm`: the global gradient norm (FSDP2's ``DTensor`` read in full).
- :func:`check_finite_everywhere`: :func:`rlhf_core.monitor.check_finite`, with every rank
  raising when any of them found a non-finite value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlhf_core import distributed as D
from rlhf_core.trainers.config import TrainerConfig

__all__ = [
    "apply_lora",
    "check_finite_everywhere",
    "clip_grad_norm",
    "place_frozen",
    "place_trained",
    "resolve_device",
]


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; anything else -> ``torch.device(device)``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: CUDA is not available; use 'cpu' or 'auto'")
    return dev


def apply_lora(
    model: nn.Module, config: TrainerConfig, *, pad_token_id: int | None = None
) -> nn.Module:
    """``model`` with LoRA adapters when ``config.lora_r > 0``, else ``model`` itself: a
    causal LM through :func:`rlhf_core.models.apply_lora`, a reward model through
    :func:`rlhf_core.models.apply_reward_lora` (its score head trained in full;
    ``pad_token_id`` goes into its sequence-classification view). ``use_rslora``,
    ``use_dora`` and ``lora_modules_to_save`` pass through. The adapters' initialisation is
    seeded by ``config.seed`` (global RNG state is restored afterwards)."""
    from rlhf_core.models import apply_lora as _apply_lora
    from rlhf_core.models import apply_reward_lora, is_peft, seeded

    if config.lora_r <= 0:
        return model
    if is_peft(model):
        raise ValueError(
            f"lora_r={config.lora_r}: the policy already is a peft model; pass the base model, "
            "or set lora_r = 0 to train the adapters it has"
        )
    targets = config.lora_target_modules
    target: list[str] | str | None = (
        "all-linear" if targets == ["all-linear"] else (list(targets) if targets else None)
    )
    options: dict[str, Any] = dict(r=config.lora_r, alpha=config.lora_alpha, target_modules=target,
                   dropout=config.lora_dropout, use_rslora=config.use_rslora,
                   use_dora=config.use_dora, modules_to_save=config.lora_modules_to_save)  # fmt: skip
    with seeded(config.seed):
        if getattr(model, "kind", None) == "reward":
            return apply_reward_lora(model, pad_token_id=pad_token_id, **options)
        return _apply_lora(model, **options)


def place_trained(
    model: nn.Module, config: TrainerConfig, dist: D.DistContext, device: torch.device
) -> nn.Module:
    """A trained model on ``device`` (with activation checkpointing when
    ``config.gradient_checkpointing``), wrapped per ``config.parallel`` (DDP or FSDP2) when
    there are several processes; the model itself otherwise."""
    model = model.to(device)
    if config.gradient_checkpointing:
        from rlhf_core.models import enable_activation_checkpointing

        try:
            enable_activation_checkpointing(model)
        except ValueError as exc:
            raise ValueError(f"gradient_checkpointing=true, but {exc}") from None
    if not dist.is_distributed:
        return model
    return D.wrap_model(model, config.parallel, dist)


def place_frozen(
    model: nn.Module, config: TrainerConfig, dist: D.DistContext, device: torch.device
) -> nn.Module:
    """A frozen model (reference, reward model) on ``device``: with several processes made
    equal to rank 0's, and sharded too under FSDP2 (every rank then runs its forward passes
    in lockstep)."""
    from rlhf_core.models import ReferenceModel

    model = model.to(device)
    if not dist.is_distributed or isinstance(model, ReferenceModel):
        return model  # a ReferenceModel shares the (already wrapped) policy's weights
    strategy = "fsdp2" if config.parallel == "fsdp2" else "ddp"
    return D.wrap_model(model, strategy, dist)


def clip_grad_norm(params: Sequence[nn.Parameter], max_norm: float | None) -> torch.Tensor:
    """Clip the global gradient norm of ``params`` to ``max_norm`` (None = no clip); returns the
    norm before clipping as a plain tensor (FSDP2's ``DTensor`` read in full)."""
    norm = torch.nn.utils.clip_grad_norm_(
        params, max_norm if max_norm is not None else float("inf")
    )
    full = getattr(norm, "full_tensor", None)
    return full() if full is not None else norm


def check_finite_everywhere(
    metrics: Mapping[str, Any],
    batch: Mapping[str, Any] | None,
    dump_dir: Path,
    *,
    step: int,
    dist: D.DistContext,
    run_dir: Path,
) -> None:
    """:func:`rlhf_core.monitor.check_finite` of ``metrics`` (dumping ``batch`` to ``dump_dir``
    on failure); with several processes every rank raises when any of them found a non-finite
    value (the others would otherwise wait for it in the next collective)."""
    from rlhf_core.monitor import NonFiniteError, check_finite

    if not dist.is_distributed:
        check_finite(metrics, batch, dump_dir, step=step)
        return
    error: NonFiniteError | None = None
    try:
        check_finite(metrics, batch, dump_dir, step=step)
    except NonFiniteError as exc:
        error = exc
    bad = D.flagged_ranks(error is not None, dist)
    if error is not None:
        raise error
    if bad:
        raise NonFiniteError(
            f"non-finite values at step {step} on rank(s) {bad} (this is rank "
            f"{dist.rank}); their batches were saved under {run_dir / 'nonfinite'}",
            names=[],
            dump_path=None,
            step=step,
        )
