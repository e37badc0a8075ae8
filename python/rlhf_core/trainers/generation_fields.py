"""The rollout-backend fields of a config: which backend samples (``generation_backend``) and
the vLLM engine's settings, with TRL's ``vllm_*`` names where TRL has them. Mixed into
:class:`rlhf_core.trainers.config.RolloutConfig` and the CLI's ``label`` / ``eval`` configs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rlhf_core.errors import check_field

if TYPE_CHECKING:
    from rlhf_core.generation.vllm import VLLMConfig

__all__ = ["GENERATION_BACKENDS", "GenerationFields"]

#: The values of ``generation_backend`` (``rlhf_core.generation.BACKENDS``, spelled out here so
#: that a config does not import the generation package).
GENERATION_BACKENDS = ("auto", "hf", "decode_loop", "vllm")


@dataclass
class GenerationFields:
    """Which rollout backend samples the completions, and the vLLM engine's settings (TRL's
    ``vllm_*`` names where TRL has them). Mixed into :class:`RolloutConfig` and the CLI's
    ``label`` / ``eval`` configs; ``docs/generation.md`` says when to choose which."""

    generation_backend: str = field(
        default="auto",
        metadata={
            "help": "what samples the completions: 'auto' (the decode loop on CUDA with "
            "fast_generation, HF generate otherwise), 'hf' (HF generate), 'decode_loop' "
            "(rlhf_core's static-cache loop), 'vllm' (a vLLM engine with its own copy of the "
            "weights, synced after updates; needs the vllm package)"
        },
    )
    vllm_mode: str = field(
        default="colocate",
        metadata={
            "help": "vllm: 'colocate' (the engine in the training process) or 'multiprocess' "
            "(vLLM's engine-core process)"
        },
    )
    vllm_dtype: str = field(
        default="auto",
        metadata={
            "help": "vllm: the engine's dtype: 'auto' (the policy's), 'float32', 'bfloat16', "
            "'float16'"
        },
    )
    vllm_gpu_memory_utilization: float = field(
        default=0.3,
        metadata={
            "help": "vllm: share of the GPU's memory the engine takes (weights + KV cache; "
            "TRL's colocate default 0.3); on the CPU platform a share of the RAM, used only "
            "with vllm_kv_cache_memory_bytes = 0"
        },
    )
    vllm_max_model_length: int | None = field(
        default=None,
        metadata={"help": "vllm: longest prompt + completion; none = the model's maximum"},
    )
    vllm_tensor_parallel_size: int = field(
        default=1, metadata={"help": "vllm: GPUs one engine spans (tensor parallelism)"}
    )
    vllm_kv_cache_memory_bytes: int | None = field(
        default=None,
        metadata={
            "help": "vllm: KV-cache size in bytes (overrides vllm_gpu_memory_utilization); "
            "none = vLLM's choice on CUDA, 256 MiB on the CPU platform; 0 = vLLM's choice"
        },
    )
    vllm_enable_sleep_mode: bool = field(
        default=False,
        metadata={
            "help": "vllm, CUDA only: the engine frees its KV cache and offloads its weights "
            "while the trainer trains, and wakes before generating"
        },
    )

    def check_generation_fields(self) -> None:
        """Reject a bad backend or engine setting, naming the field."""
        check_field(
            self.generation_backend in GENERATION_BACKENDS,
            "generation_backend",
            self.generation_backend,
            f"expected one of {GENERATION_BACKENDS}",
        )
        check_field(
            self.vllm_mode in ("colocate", "multiprocess"),
            "vllm_mode",
            self.vllm_mode,
            "expected 'colocate' or 'multiprocess'",
        )
        check_field(
            self.vllm_dtype in ("auto", "float32", "bfloat16", "float16"),
            "vllm_dtype",
            self.vllm_dtype,
            "expected 'auto', 'float32', 'bfloat16' or 'float16'",
        )
        check_field(
            0 < self.vllm_gpu_memory_utilization <= 1,
            "vllm_gpu_memory_utilization",
            self.vllm_gpu_memory_utilization,
            "expected in (0, 1] (e.g. 0.3)",
        )
        check_field(
            self.vllm_max_model_length is None or self.vllm_max_model_length >= 2,
            "vllm_max_model_length",
            self.vllm_max_model_length,
            "expected >= 2 or none",
        )
        check_field(
            self.vllm_tensor_parallel_size >= 1,
            "vllm_tensor_parallel_size",
            self.vllm_tensor_parallel_size,
            "expected >= 1",
        )
        check_field(
            self.vllm_kv_cache_memory_bytes is None or self.vllm_kv_cache_memory_bytes >= 0,
            "vllm_kv_cache_memory_bytes",
            self.vllm_kv_cache_memory_bytes,
            "expected >= 0 bytes or none",
        )

    def vllm_config(self, **overrides: Any) -> VLLMConfig:
        """The :class:`rlhf_core.generation.vllm.VLLMConfig` of these fields (``overrides``
        set more of its fields, e.g. ``seed``). Does not import vLLM."""
        from rlhf_core.generation.vllm import VLLMConfig

        fields: dict[str, Any] = dict(
            mode=self.vllm_mode,
            dtype=self.vllm_dtype,
            gpu_memory_utilization=self.vllm_gpu_memory_utilization,
            max_model_len=self.vllm_max_model_length,
            tensor_parallel_size=self.vllm_tensor_parallel_size,
            kv_cache_memory_bytes=self.vllm_kv_cache_memory_bytes,
            enable_sleep_mode=self.vllm_enable_sleep_mode,
        )
        fields.update(overrides)
        return VLLMConfig(**fields)

