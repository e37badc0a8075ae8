"""The worker extension :class:`rlhf_core.generation.vllm.VLLMBackend` gives vLLM
(``worker_extension_cls``): vLLM mixes it into each worker, in the engine's process, so it must
stay importable there without anything heavier than torch and safetensors."""

from __future__ import annotations

from typing import Any

__all__ = ["WeightSyncExtension"]


class WeightSyncExtension:
    """Methods vLLM adds to its worker class; ``self`` is the worker."""

    def rlhf_core_load_weights(
        self,
        blob: bytes | None = None,
        tensors: list[tuple[str, Any]] | None = None,
    ) -> int:
        """Load a full set of HF-named weights, as safetensors ``blob`` bytes (any process
        layout) or ``(name, tensor)`` pairs (an in-process engine only: tensors in RPC
        arguments do not survive vLLM's msgpack transport). Goes through vLLM's layer-wise
        ``reload_weights``, which re-runs the weight processing after loading (fused q/k/v
        and gate/up, the CPU backend's prepacked linears); a plain ``load_weights`` would
        write into tensors the kernels no longer read. Returns the number of tensors."""
        if blob is not None:
            from safetensors.torch import load

            items = list(load(bytes(blob)).items())
        elif tensors is not None:
            items = list(tensors)
        else:
            raise ValueError("rlhf_core_load_weights needs blob or tensors")
        reload = getattr(self, "reload_weights", None)
        if callable(reload):  # the worker's wrapper sets the current vLLM config
            reload(weights_iterator=iter(items), is_checkpoint_format=True)
        else:
            self.model_runner.reload_weights(  # type: ignore[attr-defined]
                weights_iterator=iter(items), is_checkpoint_format=True
            )
        self._rlhf_core_refresh_tied_head()
        return len(items)

    def _rlhf_core_refresh_tied_head(self) -> None:
        """With tied input/output embeddings the checkpoint has no ``lm_head.weight``: the
        reload fills the shared tensor through the embedding layer and leaves the head
        "not loaded", so the head's derived state (vLLM's CPU backend keeps a prepacked
        GEMM copy of it) still holds the old weights; 1.3 nats of error after one step on
        the built-in model. Re-run the head's post-load processing (on CUDA it does
        nothing)."""
        runner = self.model_runner  # type: ignore[attr-defined]
        hf_config = getattr(runner.model_config, "hf_text_config", None)
        if not getattr(hf_config, "tie_word_embeddings", False):
            return
        head = getattr(runner.get_model(), "lm_head", None)
        method = getattr(head, "quant_method", None)
        if head is not None and method is not None:
            method.process_weights_after_loading(head)
