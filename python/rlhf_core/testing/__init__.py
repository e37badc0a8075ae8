"""Helpers for testing rlhf_core and code built on it.

- :mod:`~rlhf_core.testing.reference` and :mod:`~rlhf_core.testing.buffer_reference`: readable
  float64 references of every kernel and of the buffer's estimators and planners, used by the
  test suite and by users who want to check the fast paths against plain numpy.
- :mod:`~rlhf_core.testing.strategies`: hypothesis strategies of token batches in every layout
  the kernels accept, and the comparison helpers the kernel tests share (needs ``hypothesis``,
  a development dependency).
- :mod:`~rlhf_core.testing.hf_cache`: a Hugging Face cache built on the spot (tiny Qwen2-shaped
  models and tokenizers, datasets) so that Hub ids resolve offline, and the settings that
  point a process at it.
"""
