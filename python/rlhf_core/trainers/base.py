"""Pieces every trainer shares: the base config, the step loop, checkpoints, resume, metrics.

A trainer is orchestration only. :class:`Trainer` owns the loop::

    resume from the latest checkpoint in run_dir (if any)
    for step in range(start, total_steps):
        metrics = trainer.train_step(step)      # rollout -> scoring -> buffer -> losses -> step
        + per-phase timings, learning rate
        log metrics (run_dir/metrics.jsonl, TensorBoard), progress bar
        checkpoint every ``save_every`` steps and at the end

Subclasses implement :meth:`Trainer.train_step` and declare what goes into a checkpoint
(:meth:`Trainer.checkpoint_models`, optimizers, schedulers and :meth:`Trainer.extra_state`).

Determinism: all randomness of a step comes from seeds derived from ``(config.seed, step)``
(:func:`step_seed`) and from state saved in the checkpoint (sampler position, optimizer,
scheduler, controllers), so a run resumed from a checkpoint continues exactly as if it had
never stopped: same metrics and, on CPU, bit-identical weights.

Several processes (``torchrun``): the trainer reads the process group from the environment
(:func:`rlhf_core.distributed.init_distributed`), wraps its trained models with DDP or FSDP2
(``config.parallel``), gives each rank its share of every batch, normalises losses by the
counts of the global batch and reduces metrics over ranks, so a step equals the
single-process step on the same global batch (``docs/scaling.md``). Only rank 0 logs, shows
progress and writes checkpoints; every rank takes part in gathering the state they hold and
every rank loads them to resume. With one process none of this does anything.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from rlhf_core import distributed as D
from rlhf_core.errors import check_field

__all__ = [
    "TrainerConfig",
    "Trainer",
    "TrainResult",
    "IndexSampler",
    "check_field",
    "resolve_device",
    "step_seed",
    "build_optimizer",
    "build_scheduler",
    "iter_micro_batches",
    "pad_sequences",
    "trainable_parameters",
    "logprobs_of",
    "logprobs_and_entropy",
]

log = logging.getLogger("rlhf_core.trainers")


@dataclass
class TrainerConfig:
    """Fields shared by every trainer: run folder, steps, optimiser, schedule, checkpoints,
    logging and device. Trainer configs subclass it."""

    run_dir: str = field(
        default="runs/run",
        metadata={"help": "folder for metrics.jsonl, TensorBoard events, checkpoints, dumps"},
    )
    seed: int = field(
        default=0, metadata={"help": "seed of every random choice (data order, sampling)"}
    )
    total_steps: int = field(
        default=100, metadata={"help": "number of training steps (one step = one update round)"}
    )
    learning_rate: float = field(default=1e-5, metadata={"help": "peak AdamW learning rate"})
    lr_scheduler: Literal["constant", "linear", "cosine"] = field(
        default="constant",
        metadata={"help": "learning-rate shape after warm-up, over total_steps"},
    )
    warmup_steps: int = field(
        default=0, metadata={"help": "steps of linear warm-up from 0 to learning_rate"}
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW decoupled weight decay"})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1"})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2"})
    adam_eps: float = field(default=1e-8, metadata={"help": "AdamW epsilon"})
    max_grad_norm: float | None = field(
        default=1.0, metadata={"help": "clip the global gradient norm to this; none = no clip"}
    )
    save_every: int = field(
        default=0,
        metadata={"help": "save a checkpoint every this many steps (0 = only at the end)"},
    )
    keep_last: int = field(default=2, metadata={"help": "checkpoints to keep (older ones removed)"})
    resume: bool = field(
        default=True,
        metadata={
            "help": "continue from the latest checkpoint in run_dir when there is one (false: "
            "refuse a run_dir that already holds checkpoints)"
        },
    )
    progress_bar: bool = field(default=True, metadata={"help": "show a tqdm progress bar"})
    tensorboard: bool = field(
        default=True, metadata={"help": "also write TensorBoard events (when installed)"}
    )
    device: str = field(
        default="auto", metadata={"help": "'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1'"}
    )
    bf16: bool = field(
        default=True, metadata={"help": "bf16 autocast for forward passes on CUDA (no-op on CPU)"}
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={
            "help": "recompute each transformer layer's activations in the backward pass "
            "instead of keeping them (HF gradient checkpointing, non-reentrant) for the trained "
            "models: less memory, about one more forward of compute"
        },
    )
    parallel: Literal["ddp", "fsdp2"] = field(
        default="ddp",
        metadata={
            "help": "under torchrun: 'ddp' (a full replica per process) or 'fsdp2' (parameters, "
            "gradients and optimizer state sharded over processes); ignored with one process"
        },
    )
    lora_r: int = field(
        default=0,
        metadata={
            "help": "LoRA rank of the policy's adapters (through peft); 0 = full fine-tuning. "
            "With LoRA only the adapters train and the reference is the policy with its "
            "adapters disabled (no copy). Policy trainers only (SFT, DPO, RL); the reward "
            "trainer refuses it"
        },
    )
    lora_alpha: float = field(
        default=16.0, metadata={"help": "LoRA scale α (the update is scaled by α / r); > 0"}
    )
    lora_dropout: float = field(
        default=0.0, metadata={"help": "dropout on the LoRA adapters' input, in [0, 1)"}
    )
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "module names that get adapters; none = the attention and MLP projections "
            "(q/k/v/o_proj, gate/up/down_proj); ['all-linear'] = every linear layer but the "
            "LM head"
        },
    )

    def __post_init__(self) -> None:
        check_field(self.total_steps >= 1, "total_steps", self.total_steps, "expected >= 1")
        check_field(
            self.learning_rate >= 0,
            "learning_rate",
            self.learning_rate,
            "expected >= 0 (e.g. 1e-5)",
        )
        check_field(
            self.lr_scheduler in ("constant", "linear", "cosine"),
            "lr_scheduler",
            self.lr_scheduler,
            "expected one of 'constant', 'linear', 'cosine'",
        )
        check_field(self.warmup_steps >= 0, "warmup_steps", self.warmup_steps, "expected >= 0")
        check_field(self.weight_decay >= 0, "weight_decay", self.weight_decay, "expected >= 0")
        for name in ("adam_beta1", "adam_beta2"):
            v = getattr(self, name)
            check_field(0 <= v < 1, name, v, "expected in [0, 1)")
        check_field(self.adam_eps > 0, "adam_eps", self.adam_eps, "expected > 0 (e.g. 1e-8)")
        check_field(
            self.max_grad_norm is None or self.max_grad_norm > 0,
            "max_grad_norm",
            self.max_grad_norm,
            "expected > 0, or none to disable clipping",
        )
        check_field(
            self.save_every >= 0, "save_every", self.save_every, "expected >= 0 (0 = at the end)"
        )
        check_field(self.keep_last >= 1, "keep_last", self.keep_last, "expected >= 1")
        check_field(
            self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"),
            "device",
            self.device,
            "expected 'auto', 'cpu', 'cuda' or 'cuda:N'",
        )
        check_field(
            self.parallel in ("ddp", "fsdp2"),
            "parallel",
            self.parallel,
            "expected 'ddp' or 'fsdp2'",
        )
        check_field(self.lora_r >= 0, "lora_r", self.lora_r, "expected >= 0 (0 = no LoRA)")
        check_field(
            self.lora_alpha > 0, "lora_alpha", self.lora_alpha, "expected > 0 (e.g. 2 * lora_r)"
        )
        check_field(
            0 <= self.lora_dropout < 1, "lora_dropout", self.lora_dropout, "expected in [0, 1)"
        )
        targets = self.lora_target_modules
        check_field(
            targets is None
            or (len(targets) > 0 and all(isinstance(t, str) and t for t in targets)),
            "lora_target_modules",
            targets,
            "expected none or a non-empty list of module names (e.g. ['q_proj', 'v_proj'])",
        )


# ---------------------------------------------------------------------------------------------
# small helpers


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; anything else -> ``torch.device(device)``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: CUDA is not available; use 'cpu' or 'auto'")
    return dev


def step_seed(seed: int, step: int, purpose: int = 0, index: int | None = None) -> int:
    """A 31-bit seed derived from (run seed, step, purpose[, index]): independent streams per
    step, and with ``index`` per item of the step (e.g. the position of a prompt in the step's
    global prompt list)."""
    words = [int(seed) & 0xFFFFFFFF, int(step), int(purpose)]
    if index is not None:
        words.append(int(index))
    ss = np.random.SeedSequence(words)
    return int(ss.generate_state(1)[0] & 0x7FFFFFFF)


def trainable_parameters(*modules: nn.Module) -> list[nn.Parameter]:
    """Parameters with ``requires_grad`` of the given modules, each once."""
    seen: set[int] = set()
    out: list[nn.Parameter] = []
    for m in modules:
        for p in m.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def build_optimizer(
    params: Iterable[nn.Parameter], config: TrainerConfig, *, lr: float | None = None
) -> torch.optim.Optimizer:
    """AdamW with the config's hyper-parameters (``lr`` overrides ``config.learning_rate``)."""
    params = list(params)
    if not params:
        raise ValueError("no trainable parameters: every parameter has requires_grad=False")
    return torch.optim.AdamW(
        params,
        lr=config.learning_rate if lr is None else lr,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_eps,
        weight_decay=config.weight_decay,
    )


def _lr_factor(step: int, config: TrainerConfig) -> float:
    """Multiplier of the peak learning rate at (0-based) trainer step ``step``."""
    if step < config.warmup_steps:
        return (step + 1) / (config.warmup_steps + 1)
    if config.lr_scheduler == "constant":
        return 1.0
    span = max(1, config.total_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    if config.lr_scheduler == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainerConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """Warm-up + constant / linear / cosine decay, stepped once per trainer step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, config))


class IndexSampler:
    """Seeded, resumable order over ``n`` items: each epoch is a fresh permutation drawn from
    ``(seed, epoch)``; :meth:`next` returns the next ``k`` indices, crossing epochs as needed.

    ``state_dict()`` holds ``{"epoch", "position"}``; with the same ``n`` and ``seed`` a loaded
    sampler continues exactly where the saved one stopped.
    """

    def __init__(self, n: int, seed: int = 0, *, shuffle: bool = True) -> None:
        if n < 1:
            raise ValueError(f"IndexSampler needs at least one item, got n={n}")
        self.n = int(n)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0
        self.position = 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n, dtype=np.int64)
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, epoch])
        return rng.permutation(self.n).astype(np.int64)

    def next(self, k: int) -> np.ndarray:
        """The next ``k`` indices (int64 (k,))."""
        out = np.empty(k, dtype=np.int64)
        filled = 0
        while filled < k:
            if self.position >= self.n:
                self.epoch += 1
                self.position = 0
                self._perm = self._permutation(self.epoch)
            take = min(k - filled, self.n - self.position)
            out[filled : filled + take] = self._perm[self.position : self.position + take]
            self.position += take
            filled += take
        return out

    def state_dict(self) -> dict[str, int]:
        return {"n": self.n, "seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state["n"]) != self.n or int(state["seed"]) != self.seed:
            raise ValueError(
                f"sampler state was saved for n={state['n']}, seed={state['seed']} but this "
                f"sampler has n={self.n}, seed={self.seed}: resume with the same data and seed"
            )
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._perm = self._permutation(self.epoch)


def pad_sequences(
    sequences: Sequence[np.ndarray | Sequence[int]],
    completion_starts: Sequence[int],
    pad_id: int,
    *,
    device: torch.device | None = None,
) -> dict[str, torch.Tensor]:
    """Right-pad token sequences into model inputs with a completion mask.

    Args:
        sequences: N token-id sequences (prompt + completion).
        completion_starts: per sequence, the index of its first completion token (0 = every
            token after the first is a target).
        pad_id: padding token id.

    Returns:
        ``input_ids`` int64 (N, T), ``attention_mask`` int64 (N, T), and ``loss_mask`` bool
        (N, T-1) aligned with :func:`rlhf_core.models.token_logprobs` output: ``loss_mask[i, j]``
        is True when token ``j+1`` of sequence ``i`` is a completion token.
    """
    n = len(sequences)
    if len(completion_starts) != n:
        raise ValueError(
            f"completion_starts has {len(completion_starts)} entries, sequences has {n}"
        )
    lengths = [len(s) for s in sequences]
    t = max(max(lengths, default=1), 2)
    ids = torch.full((n, t), int(pad_id), dtype=torch.long)
    attn = torch.zeros((n, t), dtype=torch.long)
    loss_mask = torch.zeros((n, t - 1), dtype=torch.bool)
    for i, (s, start) in enumerate(zip(sequences, completion_starts, strict=True)):
        ln = lengths[i]
        ids[i, :ln] = torch.as_tensor(np.asarray(s, dtype=np.int64))
        attn[i, :ln] = 1
        first = max(int(start), 1) - 1
        loss_mask[i, first : ln - 1] = True
    out = {"input_ids": ids, "attention_mask": attn, "loss_mask": loss_mask}
    if device is not None:
        out = {k: v.to(device) for k, v in out.items()}
    return out


def iter_micro_batches(
    batch: Mapping[str, torch.Tensor],
    micro_batch_size: int | None,
    *,
    lengths: Sequence[int] | np.ndarray | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Split a dict of row-aligned tensors into chunks of ``micro_batch_size`` rows
    (``None`` = one chunk).

    With a right-padded ``attention_mask`` (B, T) in the batch, columns that are padding in
    every row of a chunk are cut, so each micro-batch is only as wide as its longest row:
    tensors whose second axis is ``T`` keep ``width`` columns, those aligned with the
    logprobs (``T - 1``) keep ``width - 1``. 1-D tensors are only sliced by rows.

    ``lengths`` (B,) int, on the host: the number of real tokens of each row (the row sums of
    ``attention_mask``), when the caller already has them. Without it they are read from the
    mask once per call (one device-to-host copy for the whole batch, none per micro-batch).
    """
    if not batch:
        return
    n = next(iter(batch.values())).shape[0]
    size = n if micro_batch_size is None else int(micro_batch_size)
    if n == 0 or size < 1:
        return
    attn = batch.get("attention_mask")
    t_full = attn.shape[1] if attn is not None and attn.dim() == 2 else None
    row_len: np.ndarray | None = None
    if t_full is not None:
        assert attn is not None
        if lengths is None:
            row_len = attn.sum(dim=1).cpu().numpy()
        else:
            row_len = np.asarray(lengths, dtype=np.int64)
            if row_len.shape != (n,):
                raise ValueError(f"lengths has shape {row_len.shape}, expected ({n},)")
    for s in range(0, n, size):
        chunk = {k: v[s : s + size] for k, v in batch.items()}
        if t_full is not None and row_len is not None:
            width = max(int(row_len[s : s + size].max()), 2)
            if width < t_full:
                for k, v in chunk.items():
                    if v.dim() >= 2 and v.shape[1] == t_full:
                        chunk[k] = v[:, :width]
                    elif v.dim() >= 2 and v.shape[1] == t_full - 1:
                        chunk[k] = v[:, : width - 1]
        yield chunk


@dataclass
class TrainResult:
    """What :meth:`Trainer.train` returns.

    Attributes:
        step: the global step reached.
        metrics: metrics of the last step trained in this call (empty when none was).
        already_finished: True when the run had already reached ``total_steps`` at start.
        message: a human-readable summary (also logged).
    """

    step: int
    metrics: dict[str, float]
    already_finished: bool = False
    message: str = ""


# ---------------------------------------------------------------------------------------------
# the loop


class Trainer:
    """Base class: the step loop, logging, checkpoint and resume.

    Subclasses set ``self.config`` (a :class:`TrainerConfig`), build their models in
    ``__init__``, call :meth:`setup_optimization` with the trained model, and implement
    :meth:`train_step`. The checkpoint hooks then save that model, its optimizer, scheduler and
    data sampler under :attr:`checkpoint_key`; a trainer with more (a value model, a KL
    controller, a buffer) extends :meth:`checkpoint_models`, :meth:`checkpoint_optimizers`,
    :meth:`checkpoint_schedulers`, :meth:`extra_state` / :meth:`load_extra_state`.
    """

    config: TrainerConfig
    name: str = "trainer"
    #: Name under which the trained model, its optimizer and its scheduler are checkpointed.
    checkpoint_key: str = "policy"
    trained_model: nn.Module
    sampler: IndexSampler
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: Any

    def __init__(self, config: TrainerConfig) -> None:
        from rlhf_core.monitor import PhaseTimer

        self.config = config
        device = resolve_device(config.device)  # validates the name first
        #: where this process sits in a torchrun job (world_size 1 for a plain run)
        self.dist = D.init_distributed(device=config.device)
        self.device = self.dist.device if self.dist.is_distributed else device
        if self.dist.is_distributed:
            # dropout and anything else unseeded differ per rank; trainers' own draws come
            # from step_seed(...) and are the same on every rank where they must be
            D.seed_everything(config.seed, self.dist)
        self.run_dir = Path(config.run_dir)
        self.timer = PhaseTimer(cuda_sync=self.device.type == "cuda")
        self.global_step = 0
        self._last_batch: dict[str, Any] = {}

    # ---- subclass API -----------------------------------------------------------------------
    def train_step(self, step: int) -> dict[str, float]:
        """Run training step ``step`` (0-based); return its metrics as plain numbers."""
        raise NotImplementedError

    def setup_optimization(self, model: nn.Module, num_items: int) -> None:
        """The seeded, resumable sampler over ``num_items`` training items, and AdamW with the
        configured learning-rate schedule over ``model``'s trainable parameters; ``model`` is
        what the checkpoints save under :attr:`checkpoint_key`."""
        self.trained_model = model
        self.sampler = IndexSampler(num_items, seed=self.config.seed)
        self.params = trainable_parameters(model)
        self.optimizer = build_optimizer(self.params, self.config)
        self.scheduler = build_scheduler(self.optimizer, self.config)

    def checkpoint_models(self) -> dict[str, nn.Module]:
        """The models whose weights change (saved and restored by checkpoints)."""
        return {self.checkpoint_key: self.trained_model}

    def checkpoint_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {self.checkpoint_key: self.optimizer}

    def checkpoint_schedulers(self) -> dict[str, Any]:
        return {self.checkpoint_key: self.scheduler}

    def extra_state(self) -> dict[str, Any]:
        """Other state to checkpoint (the data sampler; subclasses add controllers, buffers);
        JSON/torch-serialisable."""
        return {"sampler": self.sampler.state_dict()}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""
        self.sampler.load_state_dict(state["sampler"])

    # ---- several processes ------------------------------------------------------------------
    @property
    def is_main_process(self) -> bool:
        """Rank 0 (or the only process): the one that logs and writes checkpoints."""
        return self.dist.is_main_process

    @property
    def world_size(self) -> int:
        return self.dist.world_size

    def shard(self, n: int, *, allow_uneven: bool = False) -> np.ndarray:
        """int64 indices ``0..n-1`` of the items this rank keeps (a contiguous block;
        ``arange(n)`` for a single process), see :func:`rlhf_core.distributed.shard_indices`."""
        return D.shard_indices(n, self.dist.rank, self.dist.world_size, allow_uneven=allow_uneven)

    def check_divisible(self, name: str, value: int) -> None:
        """Refuse a global batch size the processes cannot share equally."""
        w = self.dist.world_size
        check_field(
            value % w == 0,
            name,
            value,
            f"must be a multiple of the number of processes ({w}) so that every process gets "
            f"the same share (e.g. {max(w, value - value % w)})",
        )

    def apply_lora(self, model: nn.Module) -> nn.Module:
        """``model`` with LoRA adapters (:func:`rlhf_core.models.apply_lora`) when
        ``config.lora_r > 0``, else ``model`` itself. The adapters' initialisation is seeded
        by ``config.seed`` (global RNG state is restored afterwards). Call it before
        :meth:`wrap_trained` and before making the reference, so that
        :func:`rlhf_core.models.make_reference` returns the adapter-disabled base."""
        from rlhf_core.models import _is_peft, _seeded
        from rlhf_core.models import apply_lora as _apply_lora

        cfg = self.config
        if cfg.lora_r <= 0:
            return model
        if _is_peft(model):
            raise ValueError(
                f"lora_r={cfg.lora_r}: the policy already is a peft model; pass the base model, "
                "or set lora_r = 0 to train the adapters it has"
            )
        targets = cfg.lora_target_modules
        target: list[str] | str | None = (
            "all-linear" if targets == ["all-linear"] else (list(targets) if targets else None)
        )
        with _seeded(cfg.seed):
            return _apply_lora(
                model, r=cfg.lora_r, alpha=cfg.lora_alpha, target_modules=target,
                dropout=cfg.lora_dropout,
            )  # fmt: skip

    def wrap_trained(self, model: nn.Module) -> nn.Module:
        """A trained model on this rank's device, wrapped per ``config.parallel`` (DDP or
        FSDP2) when there are several processes; the model itself otherwise."""
        model = model.to(self.device)
        if self.config.gradient_checkpointing:
            from rlhf_core.models import enable_activation_checkpointing

            try:
                enable_activation_checkpointing(model)
            except ValueError as exc:
                raise ValueError(f"gradient_checkpointing=true, but {exc}") from None
        if not self.dist.is_distributed:
            return model
        return D.wrap_model(model, self.config.parallel, self.dist)

    def wrap_frozen(self, model: nn.Module) -> nn.Module:
        """A frozen model (reference, reward model) on this rank's device: with several
        processes made equal to rank 0's, and sharded too under FSDP2 (every rank then runs
        its forward passes in lockstep)."""
        from rlhf_core.models import ReferenceModel

        model = model.to(self.device)
        if not self.dist.is_distributed or isinstance(model, ReferenceModel):
            return model  # a ReferenceModel shares the (already wrapped) policy's weights
        strategy = "fsdp2" if self.config.parallel == "fsdp2" else "ddp"
        return D.wrap_model(model, strategy, self.dist)

    @property
    def lockstep_forwards(self) -> bool:
        """True when every forward pass is a collective (FSDP2 with several processes), so all
        ranks must run the same number of them, even without data of their own."""
        return self.dist.is_distributed and self.config.parallel == "fsdp2"

    def no_sync(self, *models: nn.Module, enabled: bool = True) -> AbstractContextManager[Any]:
        """Skip the gradient synchronisation of the wrapped ``models`` in the block (every
        micro-batch but the last of an optimizer step); nothing for a single process."""
        if not (enabled and self.dist.is_distributed):
            return nullcontext()
        stack = contextlib.ExitStack()
        for m in models:
            stack.enter_context(D.no_sync(m, enabled=True))
        return stack

    def backward(self, loss: torch.Tensor) -> None:
        """``backward()`` of a loss normalised by global counts; × world size under DDP/FSDP2
        (they average gradients over ranks; :func:`rlhf_core.distributed.scale_loss`)."""
        D.scale_loss(loss, self.dist).backward()

    def reduce_metrics(self, totals: Mapping[str, Any]) -> dict[str, float]:
        """Plain floats of summed micro-batch metrics, summed over ranks (``*_min`` /
        ``*_max``: extremes over ranks) when there are several processes."""
        return D.all_reduce_metrics(totals, self.dist)  # one device-to-host copy

    @property
    def dump_dir(self) -> Path:
        """Where batches with non-finite values are saved (one folder per rank when there are
        several)."""
        base = self.run_dir / "nonfinite"
        return base / f"rank{self.dist.rank}" if self.dist.is_distributed else base

    def check_finite(self, metrics: Mapping[str, Any], batch: Mapping[str, Any] | None) -> None:
        """:func:`rlhf_core.monitor.check_finite` at the current step; with several processes
        every rank raises when any of them found a non-finite value (the others would
        otherwise wait for it in the next collective)."""
        from rlhf_core.monitor import NonFiniteError, check_finite

        step = self.global_step + 1
        if not self.dist.is_distributed:
            check_finite(metrics, batch, self.dump_dir, step=step)
            return
        error: NonFiniteError | None = None
        try:
            check_finite(metrics, batch, self.dump_dir, step=step)
        except NonFiniteError as exc:
            error = exc
        bad = D.flagged_ranks(error is not None, self.dist)
        if error is not None:
            raise error
        if bad:
            raise NonFiniteError(
                f"non-finite values at step {step} on rank(s) {bad} (this is rank "
                f"{self.dist.rank}); their batches were saved under {self.run_dir / 'nonfinite'}",
                names=[],
                dump_path=None,
                step=step,
            )

    # ---- helpers for subclasses -------------------------------------------------------------
    def autocast(self) -> AbstractContextManager[Any]:
        """bf16 autocast on CUDA when ``config.bf16``; a no-op otherwise."""
        if self.device.type == "cuda" and self.config.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def clip_and_check(
        self, params: Sequence[nn.Parameter], metrics: Mapping[str, Any], *, prefix: str = ""
    ) -> float:
        """Clip the gradient norm to ``max_grad_norm`` and check that the loss metrics and the
        norm are finite; otherwise stop with :class:`rlhf_core.monitor.NonFiniteError` after
        dumping the batch to ``run_dir/nonfinite``. Returns the norm before clipping.

        With several processes the gradients are already synchronised, the norm is global
        (FSDP2 returns a ``DTensor``, read in full) and ``metrics`` must be the reduced ones,
        so every rank takes the same decision."""
        max_norm = self.config.max_grad_norm
        norm = torch.nn.utils.clip_grad_norm_(
            params, max_norm if max_norm is not None else float("inf")
        )
        full = getattr(norm, "full_tensor", None)
        if full is not None:  # FSDP2: a DTensor
            norm = full()
        self.check_finite({**metrics, f"{prefix}grad_norm": norm}, self._last_batch)
        return float(norm)

    def optimizer_step(
        self,
        optimizer: torch.optim.Optimizer,
        params: Sequence[nn.Parameter],
        metrics: Mapping[str, Any],
        *,
        prefix: str = "",
    ) -> float:
        """:meth:`clip_and_check`, then step and zero the gradients. Returns the norm."""
        norm = self.clip_and_check(params, metrics, prefix=prefix)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return norm

    # ---- checkpoints ------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Save models, optimisers, schedulers, RNG states and :meth:`extra_state` at
        ``self.global_step`` under ``run_dir`` (keeping the last ``config.keep_last``).

        With several processes every rank must call it: the full (unwrapped, unsharded) model
        and optimizer states are gathered on every rank (a collective under FSDP2), rank 0
        writes them with every rank's RNG state, and all ranks wait until it is written."""
        from rlhf_core.checkpoint import checkpoint_dir, save_checkpoint

        extra = {"trainer": self.name, "total_steps": self.config.total_steps}
        extra.update(self.extra_state())
        models: Mapping[str, Any] = self.checkpoint_models()
        optimizers: Mapping[str, Any] = self.checkpoint_optimizers()
        if self.dist.is_distributed:
            from rlhf_core.checkpoint import capture_rng_state

            models, optimizers = self._full_states(models, optimizers)
            extra["world_size"] = self.dist.world_size
            extra["rng_per_rank"] = D.all_gather_object(capture_rng_state(), self.dist)
            if not self.is_main_process:
                D.barrier(self.dist)
                return checkpoint_dir(self.run_dir, self.global_step)
        try:
            path = save_checkpoint(
                self.run_dir,
                self.global_step,
                models=models,
                optimizers=optimizers,
                schedulers=self.checkpoint_schedulers(),
                extra_state=extra,
                keep_last=self.config.keep_last,
            )
        finally:
            if self.dist.is_distributed:
                D.barrier(self.dist)
        return Path(path)

    def _full_states(
        self, models: Mapping[str, nn.Module], optimizers: Mapping[str, torch.optim.Optimizer]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Unwrapped models (DDP) or gathered full state dicts (FSDP2), and optimizer states in
        the single-process layout, as :func:`rlhf_core.checkpoint.save_checkpoint` takes them.
        An optimizer is matched with the model of the same name."""
        out_models: dict[str, Any] = {}
        for name, m in models.items():
            out_models[name] = D.gather_full_state_dict(m) if D.is_fsdp2(m) else D.unwrap_model(m)
        out_opts: dict[str, Any] = {}
        for name, opt in optimizers.items():
            model = models.get(name)
            state = (
                D.gather_full_optimizer_state_dict(model, opt)
                if model is not None
                else opt.state_dict()
            )
            out_opts[name] = _StateHolder(state)
        return out_models, out_opts

    def load(self, checkpoint: str | os.PathLike[str]) -> int:
        """Restore a checkpoint folder (or a run folder's latest) into this trainer: models,
        optimisers, schedulers, RNG states and :meth:`extra_state`. Returns its step.

        With several processes every rank calls it and reads the same files; a checkpoint
        written with any number of processes (and either ``parallel``) loads."""
        from rlhf_core.checkpoint import load_checkpoint, restore_rng_state

        raw: Mapping[str, Any] = self.checkpoint_models()  # wrapped as trained
        models = raw
        optimizers: Mapping[str, Any] = self.checkpoint_optimizers()
        if self.dist.is_distributed:
            models = {k: m if D.is_fsdp2(m) else D.unwrap_model(m) for k, m in raw.items()}
            optimizers = {
                k: _FullOptimizerLoader(raw[k], opt) if k in raw else opt
                for k, opt in optimizers.items()
            }
        step, extra = load_checkpoint(
            checkpoint,
            models=models,
            optimizers=optimizers,
            schedulers=self.checkpoint_schedulers(),
        )
        per_rank = extra.get("rng_per_rank")
        if self.dist.is_distributed:
            if per_rank is not None and len(per_rank) == self.dist.world_size:
                restore_rng_state(per_rank[self.dist.rank])
            elif not self.is_main_process:
                # written by another number of processes: rank 0 continues the saved stream,
                # the others start fresh ones of their own
                D.seed_everything(self.config.seed + int(step), self.dist)
        saved_by = extra.get("trainer")
        if saved_by is not None and saved_by != self.name:
            raise ValueError(
                f"checkpoint {checkpoint} was written by the {saved_by!r} trainer, not "
                f"{self.name!r}: use a different run_dir or the matching trainer"
            )
        self.load_extra_state(extra)
        self.global_step = int(step)
        return int(step)

    # ---- the loop ---------------------------------------------------------------------------
    def train(self, *, stop_at_step: int | None = None) -> TrainResult:
        """Train until ``config.total_steps`` (or ``stop_at_step``, for time-sliced jobs; a
        checkpoint is then saved so the next call continues exactly).

        With ``config.resume`` the latest checkpoint in ``run_dir`` is loaded first; a run that
        already reached ``total_steps`` is reported (``TrainResult.already_finished``) instead
        of silently training nothing.
        """
        from tqdm.auto import tqdm

        from rlhf_core.checkpoint import latest_checkpoint, resume_or_start
        from rlhf_core.monitor import MetricsLogger

        cfg = self.config
        start = 0
        if not cfg.resume or latest_checkpoint(self.run_dir) is not None:
            # raises when resume=false but run_dir already holds checkpoints
            info = resume_or_start(self.run_dir, cfg.resume, cfg.total_steps)
            if info.finished:
                msg = f"{self.name}: {info.message}"
                return TrainResult(step=info.step, metrics={}, already_finished=True, message=msg)
            if info.checkpoint is not None:
                start = self.load(info.checkpoint)
                log.info("%s: %s", self.name, info.message)
        end = cfg.total_steps if stop_at_step is None else min(int(stop_at_step), cfg.total_steps)
        if end <= start:
            raise ValueError(
                f"stop_at_step={stop_at_step} is not after the step the run starts from ({start})"
            )
        self.global_step = start
        main = self.is_main_process
        logger = None
        if main:  # only rank 0 writes metrics.jsonl / TensorBoard events
            self.run_dir.mkdir(parents=True, exist_ok=True)
            logger = MetricsLogger(self.run_dir, tensorboard=cfg.tensorboard, resume_step=start)
        last: dict[str, float] = {}
        bar = tqdm(
            total=cfg.total_steps,
            initial=start,
            disable=not (cfg.progress_bar and main),
            desc=self.name,
            dynamic_ncols=True,
        )
        try:
            for step in range(start, end):
                self.timer.reset()
                metrics = dict(self.train_step(step))
                metrics.update(self.timer.summary())
                metrics["lr"] = self.current_lr()
                self.global_step = step + 1
                if logger is not None:
                    logger.log(self.global_step, metrics)
                last = metrics
                bar.update(1)
                bar.set_postfix(self.progress_postfix(metrics), refresh=False)
                at_end = self.global_step == end
                periodic = cfg.save_every > 0 and self.global_step % cfg.save_every == 0
                if periodic or at_end:
                    self.save_checkpoint()
        finally:
            bar.close()
            if logger is not None:
                logger.close()
        msg = (
            f"{self.name}: trained steps {start + 1}..{end} of {cfg.total_steps} in {self.run_dir}"
        )
        if main:
            log.info(msg)
        return TrainResult(step=self.global_step, metrics=last, message=msg)

    def current_lr(self) -> float:
        scheds = self.checkpoint_schedulers()
        for s in scheds.values():
            return float(s.get_last_lr()[0])
        return float(self.config.learning_rate)

    def progress_postfix(self, metrics: Mapping[str, float]) -> dict[str, str]:
        """A few metrics shown on the progress bar."""
        keys = ("loss", "reward/mean", "kl", "accuracy")
        return {k: f"{metrics[k]:.4g}" for k in keys if k in metrics}


class _StateHolder:
    """A state dict gathered before writing, handed to the checkpoint writer as an object with
    ``state_dict()`` (rank 0 writes what every rank helped gather)."""

    def __init__(self, state: Mapping[str, Any]) -> None:
        self._state = state

    def state_dict(self) -> Mapping[str, Any]:
        return self._state


class _FullOptimizerLoader:
    """``load_state_dict`` of a checkpointed optimizer state (single-process layout) into an
    optimizer of a possibly FSDP2-sharded model."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model = model
        self.optimizer = optimizer

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        D.load_full_optimizer_state_dict(self.model, self.optimizer, state)


def logprobs_of(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
) -> torch.Tensor:
    """float32 (B, T-1) next-token logprobs (:func:`rlhf_core.models.token_logprobs`)."""
    from rlhf_core.models import token_logprobs

    out = token_logprobs(model, input_ids, attention_mask, temperature=temperature)
    assert isinstance(out, torch.Tensor)
    return out


def logprobs_and_entropy(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 (B, T-1) next-token logprobs and entropies."""
    from rlhf_core.models import token_logprobs

    out = token_logprobs(
        model, input_ids, attention_mask, temperature=temperature, return_entropy=True
    )
    assert isinstance(out, tuple)
    return out[0], out[1]
