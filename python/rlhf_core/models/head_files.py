"""The folder formats of scalar-head models (reward and value models).

Written:

- a **reward model** as a standard ``AutoModelForSequenceClassification`` checkpoint with
  ``num_labels=1`` (``config.json`` naming e.g. ``Qwen2ForSequenceClassification``,
  ``model.safetensors`` holding the body under its usual prefix and the head as
  ``score.weight``): transformers, TRL and anything built on them load it as it is and score
  as :class:`~rlhf_core.rewards.RewardModelScorer` does (the last non-padding token; give
  ``pad_token_id`` so batched inputs find it). The head's bias, which those classes do not
  have, is written beside it in ``rlhf_core_score.json`` and read back by rlhf_core. The
  Bradley-Terry loss sees score differences only, so the bias gets no gradient and stays
  near 0 (Adam turns round-off into drift of about the learning rate per step) unless
  ``center_coef`` trains it; elsewhere every score is lower by the bias, which the save
  reports (a warning from :data:`BIAS_WARN` up).
- a **value model** (and a body whose family has no sequence-classification class) in
  rlhf_core's own format: the body's ``save_pretrained`` plus ``rlhf_core_head.safetensors``
  and ``rlhf_core_head.json``.

Read: both, and any ``AutoModelForSequenceClassification`` checkpoint with ``num_labels=1``,
from a local folder or a Hub id (through the Hugging Face cache).
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlhf_core._io import atomic_write_text
from rlhf_core.models.hub import optional_file, pretrained, split_revision

__all__ = [
    "HEAD_CONFIG",
    "HEAD_WEIGHTS",
    "SCORE_META",
    "load_parts",
    "save_head_format",
    "save_seqcls",
]

logger = logging.getLogger("rlhf_core.models")

HEAD_CONFIG = "rlhf_core_head.json"
HEAD_WEIGHTS = "rlhf_core_head.safetensors"
SCORE_META = "rlhf_core_score.json"
#: a reward-head bias at least this large is reported as a warning (smaller ones, the drift of
#: Bradley-Terry training, at INFO)
BIAS_WARN = 1e-3


def save_head_format(model: Any, out: Path) -> None:
    """rlhf_core's own format: the body's ``save_pretrained`` + the head's two files."""
    from safetensors.torch import save_file

    model.body.save_pretrained(str(out))
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.head.state_dict().items()}
    save_file(tensors, str(out / HEAD_WEIGHTS))
    meta = {
        "format": "rlhf_core.scalar_head",
        "version": 1,
        "kind": model.kind,
        "hidden_size": model.head.in_features,
        "bias": model.head.bias is not None,
    }
    atomic_write_text(out / HEAD_CONFIG, json.dumps(meta, indent=2) + "\n")


def save_seqcls(model: Any, out: Path, pad_token_id: int | None) -> bool:
    """Write ``model`` (body + ``d -> 1`` head) as an ``AutoModelForSequenceClassification``
    checkpoint with ``num_labels=1``, sharing its tensors (no copy). Returns False, writing
    nothing, when the body's family has no such class with a linear ``score`` layer."""
    from transformers import AutoModelForSequenceClassification

    body, head = model.body, model.head
    config = copy.deepcopy(body.config)
    config.num_labels = 1
    if pad_token_id is not None:
        config.pad_token_id = int(pad_token_id)
    try:
        with torch.device("meta"):
            seq = AutoModelForSequenceClassification.from_config(config)
    except (ValueError, KeyError) as exc:
        logger.info("%s has no sequence-classification class (%s)", type(body).__name__, exc)
        return False
    prefix = getattr(seq, "base_model_prefix", "")
    if not prefix or not isinstance(getattr(seq, "score", None), nn.Linear):
        return False
    setattr(seq, prefix, body)
    w = head.weight
    score = nn.Linear(w.shape[1], 1, bias=False, device=w.device, dtype=w.dtype)
    score.weight = w  # shared, not copied
    seq.score = score
    seq.save_pretrained(str(out))
    bias = None if head.bias is None else float(head.bias.detach().float().cpu().item())
    meta = {"format": "rlhf_core.score", "version": 1, "kind": model.kind, "bias": bias}
    atomic_write_text(out / SCORE_META, json.dumps(meta, indent=2) + "\n")
    if bias:
        # Bradley-Terry sees score differences only: the bias gets no gradient, but Adam turns
        # the round-off of +g - g into steps of about the learning rate, so it drifts a little
        level = logging.WARNING if abs(bias) >= BIAS_WARN else logging.INFO
        logger.log(
            level,
            "reward head bias %.6g saved in %s: %s (as transformers and TRL load it) has no "
            "bias, so its scores are %.6g lower than rlhf_core's (preferences are the same)",
            bias,
            SCORE_META,
            type(seq).__name__,
            bias,
        )
    return True


def _read_meta(path: Path, expected: str) -> dict[str, Any]:
    meta = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(meta, dict) or meta.get("format") != expected:
        raise ValueError(f"{path} is not an rlhf_core {expected!r} file: {meta}")
    return meta


def load_parts(
    path: str | os.PathLike[str],
    kwargs: dict[str, Any],
    *,
    what: str,
    revision: str | None = None,
) -> tuple[nn.Module, nn.Linear]:
    """(body, head) of a scalar-head model folder or Hub id in any readable format;
    ``kwargs`` go to ``from_pretrained`` (dtype, attn_implementation, trust_remote_code)."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    name, rev = split_revision(str(path))
    rev = rev or revision
    head_meta = optional_file(name, HEAD_CONFIG, rev)
    if head_meta is not None:
        meta = _read_meta(head_meta, "rlhf_core.scalar_head")
        body = pretrained(AutoModel.from_pretrained, name, what=what, revision=rev, **kwargs)
        weights = optional_file(name, HEAD_WEIGHTS, rev)
        if weights is None:
            raise FileNotFoundError(f"{what} {name!r}: {HEAD_CONFIG} without {HEAD_WEIGHTS}")
        head = nn.Linear(int(meta["hidden_size"]), 1, bias=bool(meta["bias"]))
        head.load_state_dict(load_file(str(weights)))
        w = next(body.parameters())
        return body, head.to(device=w.device, dtype=w.dtype)
    config = pretrained(
        AutoConfig.from_pretrained,
        name,
        what=what,
        revision=rev,
        **({"trust_remote_code": True} if kwargs.get("trust_remote_code") else {}),
    )
    archs = list(getattr(config, "architectures", None) or [])
    if not any(a.endswith("ForSequenceClassification") for a in archs):
        raise ValueError(
            f"{name} holds neither an rlhf_core reward/value model ({HEAD_CONFIG} missing) nor "
            f"an AutoModelForSequenceClassification checkpoint (architectures={archs})"
        )
    num_labels = getattr(config, "num_labels", None)
    if num_labels != 1:
        raise ValueError(
            f"{name}: a sequence-classification model must have num_labels=1 to be used "
            f"as a scalar model, got num_labels={num_labels}"
        )
    seq = pretrained(
        AutoModelForSequenceClassification.from_pretrained, name, what=what, revision=rev, **kwargs
    )
    body = seq.base_model
    found = getattr(seq, "score", None)
    if found is None:
        found = getattr(seq, "classifier", None)
    if not isinstance(found, nn.Linear):
        raise ValueError(
            f"{name}: cannot find a linear score head on {type(seq).__name__} "
            "(expected attribute 'score' or 'classifier' of type nn.Linear)"
        )
    score_meta = optional_file(name, SCORE_META, rev)
    if score_meta is not None:
        bias = _read_meta(score_meta, "rlhf_core.score").get("bias")
        if bias is not None:  # rebuild the head rlhf_core trained: weight and bias
            head = nn.Linear(found.in_features, 1, bias=True)
            with torch.no_grad():
                head.weight.copy_(found.weight)
                head.bias.fill_(float(bias))
            found = head.to(device=found.weight.device, dtype=found.weight.dtype)
    return body, found
