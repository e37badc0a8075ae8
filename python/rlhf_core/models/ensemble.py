"""Reward-model ensembles: K scalar reward heads on one shared transformer body.

:class:`RewardEnsemble` reads the hidden state of the last non-padding token once and maps it
through K linear heads, so scoring K members costs one forward of the body. Trained with
:class:`~rlhf_core.trainers.RewardTrainer` (each head on its own bootstrap resample of the
pairs, all heads jointly), its members disagree where the preference data says little, which
is where a policy that over-optimises one reward model goes (Coste et al. 2023, "Reward Model
Ensembles Help Mitigate Overoptimization"; Eisenstein et al. 2023, "Helping or Herding?").

A saved ensemble is a folder: the body as its ``save_pretrained`` writes it, the K heads in
``rlhf_core_ensemble.safetensors`` (``weight`` (K, d), ``bias`` (K,), ``offsets`` (K,)) and
``rlhf_core_ensemble.json`` (format, number of members, hidden size). With
``save_pretrained(..., members=True)`` each member is also written as a plain reward-model
folder ``members/member_<k>/`` (:meth:`RewardModel.save_pretrained`) that any consumer of a
single reward model loads. :func:`load_reward_model` opens either kind of folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rlhf_core._io import atomic_write_text
from rlhf_core.models.common import last_token_index
from rlhf_core.models.heads import RewardModel, _hidden_size, _init_head, body_hidden_states
from rlhf_core.models.loading import resolve_dtype

__all__ = ["RewardEnsemble", "is_reward_ensemble", "load_reward_model"]

_ENSEMBLE_CONFIG = "rlhf_core_ensemble.json"
_ENSEMBLE_WEIGHTS = "rlhf_core_ensemble.safetensors"
_FORMAT = "rlhf_core.reward_ensemble"


class RewardEnsemble(nn.Module):
    """K reward models sharing one transformer body: ``forward(input_ids, attention_mask)``
    -> float32 (B, K), column k the score of member k, read at the last non-padding token
    (right or left padding) like :class:`~rlhf_core.models.RewardModel`.

    Args:
        body: a transformer body (``last_hidden_state`` of shape (B, T, d)).
        heads: a ``nn.Linear(d, K)``; default: K fresh heads, member k initialised as
            :meth:`RewardModel.from_policy` initialises a head with seed ``seed + k`` (normal,
            std ``1/sqrt(d+1)``, zero bias), so member 0 of a fresh ensemble starts as the
            single reward model of the same seed.
        num_members: K, when ``heads`` is not given (>= 1).
        hidden_size: d, when the body's config does not say.
        seed: base seed of the heads' initialisation.
    """

    kind = "reward_ensemble"
    offsets: torch.Tensor

    def __init__(
        self,
        body: nn.Module,
        heads: nn.Linear | None = None,
        *,
        num_members: int | None = None,
        hidden_size: int | None = None,
        seed: int | None = 0,
    ) -> None:
        super().__init__()
        self.body = body
        if heads is None:
            if num_members is None or int(num_members) < 1:
                raise ValueError(f"num_members must be >= 1 when heads is None, got {num_members}")
            d = hidden_size if hidden_size is not None else _hidden_size(body)
            heads = nn.Linear(d, int(num_members), bias=True)
            with torch.no_grad():
                for k in range(int(num_members)):
                    one = nn.Linear(d, 1, bias=True)
                    _init_head(one, d, None if seed is None else int(seed) + k)
                    heads.weight[k].copy_(one.weight[0])
                    heads.bias[k].zero_()
            p = next(body.parameters(), None)
            if p is not None:
                heads = heads.to(device=p.device, dtype=p.dtype)
        elif num_members is not None and heads.out_features != num_members:
            raise ValueError(
                f"heads has {heads.out_features} outputs but num_members={num_members}"
            )
        self.heads = heads
        #: (K,) subtracted from the members' scores: a Bradley–Terry reward is fixed only up
        #: to a constant, so each member is centred on the data it learned from (set by
        #: :meth:`RewardTrainer.center_members <rlhf_core.trainers.RewardTrainer.center_members>`
        #: at the end of training); otherwise the members' spread would be those constants
        self.register_buffer(
            "offsets",
            torch.zeros(heads.out_features, dtype=torch.float32, device=heads.weight.device),
        )

    @property
    def num_members(self) -> int:
        """K, the number of members."""
        return int(self.heads.out_features)

    @property
    def config(self) -> Any:
        return getattr(self.body, "config", None)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = body_hidden_states(self.body, input_ids, attention_mask, position_ids)
        idx = last_token_index(attention_mask)  # (B,)
        last = hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]  # (B, d)
        return self.heads(last).float() - self.offsets  # (B, K)

    def member(self, k: int) -> RewardModel:
        """Member ``k`` as a :class:`~rlhf_core.models.RewardModel` that shares this body (no
        copy of the body; the head is a copy of row ``k``)."""
        if not 0 <= k < self.num_members:
            raise IndexError(f"member {k} out of range for an ensemble of {self.num_members}")
        d = self.heads.in_features
        head = nn.Linear(d, 1, bias=self.heads.bias is not None)
        head = head.to(device=self.heads.weight.device, dtype=self.heads.weight.dtype)
        with torch.no_grad():
            head.weight.copy_(self.heads.weight[k : k + 1])
            if self.heads.bias is not None:
                head.bias.copy_(self.heads.bias[k : k + 1] - self.offsets[k : k + 1])
        return RewardModel(self.body, head)

    @classmethod
    def from_policy(
        cls, policy: nn.Module, num_members: int, *, seed: int | None = 0
    ) -> RewardEnsemble:
        """A new ensemble whose body is a copy of the policy's transformer body (LoRA
        adapters merged, as :meth:`RewardModel.from_policy` does) with ``num_members`` fresh
        heads."""
        single = RewardModel.from_policy(policy, seed=seed)
        return cls(single.body, num_members=num_members, seed=seed)

    # ---- files ---------------------------------------------------------------------------------
    def save_pretrained(
        self, save_directory: str | os.PathLike[str], *, members: bool = False
    ) -> None:
        """Save the body (its own ``save_pretrained``), the heads and the ensemble config to a
        folder; with ``members`` also each member as a plain reward-model folder
        ``members/member_<k>/`` (the body is then written K more times)."""
        from safetensors.torch import save_file

        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        self.body.save_pretrained(str(out))  # type: ignore[operator]
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.heads.state_dict().items()}
        tensors["offsets"] = self.offsets.detach().contiguous().cpu()
        save_file(tensors, str(out / _ENSEMBLE_WEIGHTS))
        meta = {
            "format": _FORMAT,
            "version": 1,
            "num_members": self.num_members,
            "hidden_size": self.heads.in_features,
            "bias": self.heads.bias is not None,
            "members_saved": bool(members),
        }
        atomic_write_text(out / _ENSEMBLE_CONFIG, json.dumps(meta, indent=2) + "\n")
        if members:
            for k in range(self.num_members):
                self.member(k).save_pretrained(out / "members" / f"member_{k}")

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike[str], *, dtype: str | torch.dtype | None = None
    ) -> RewardEnsemble:
        """Load an ensemble saved by :meth:`save_pretrained`."""
        from safetensors.torch import load_file
        from transformers import AutoModel

        p = Path(path)
        meta_file = p / _ENSEMBLE_CONFIG
        if not meta_file.is_file():
            raise ValueError(
                f"{p} holds no reward ensemble ({_ENSEMBLE_CONFIG} missing); a single reward "
                "model loads with RewardModel.from_pretrained (or load_reward_model for either)"
            )
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        if meta.get("format") != _FORMAT:
            raise ValueError(f"{meta_file} is not an rlhf_core ensemble config: {meta}")
        resolved = resolve_dtype(dtype)
        kwargs: dict[str, Any] = {"dtype": resolved} if resolved is not None else {}
        body = AutoModel.from_pretrained(str(p), **kwargs)
        k, d = int(meta["num_members"]), int(meta["hidden_size"])
        heads = nn.Linear(d, k, bias=bool(meta["bias"]))
        tensors = load_file(str(p / _ENSEMBLE_WEIGHTS))
        offsets = tensors.pop("offsets", None)
        heads.load_state_dict(tensors)
        w = next(body.parameters())
        out = cls(body, heads.to(device=w.device, dtype=w.dtype))
        if offsets is not None:
            out.offsets.copy_(offsets)
        return out


def is_reward_ensemble(path: str | os.PathLike[str]) -> bool:
    """Whether the folder ``path`` holds a :class:`RewardEnsemble`."""
    return (Path(path) / _ENSEMBLE_CONFIG).is_file()


def load_reward_model(
    path: str | os.PathLike[str], *, dtype: str | torch.dtype | None = None
) -> RewardModel | RewardEnsemble:
    """A :class:`RewardEnsemble` when the folder holds one, else a
    :class:`~rlhf_core.models.RewardModel` (``RewardModel.from_pretrained``)."""
    if is_reward_ensemble(path):
        return RewardEnsemble.from_pretrained(path, dtype=dtype)
    model: RewardModel = RewardModel.from_pretrained(path, dtype=dtype)
    return model
