"""Shared pytest configuration.

Hypothesis profiles: ``ci`` (default; at least 200 examples per property, no deadline since
the 2-core CI machine is noisy) and ``dev`` (fewer examples, for quick local loops:
``HYPOTHESIS_PROFILE=dev pytest``).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
settings.register_profile("dev", max_examples=30, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="module")
def tok():
    """The built-in character tokenizer."""
    from rlhf_core import models

    return models.load_tokenizer()


@pytest.fixture(scope="module")
def policy(tok):
    """The tiny built-in policy, seed 0, float32 on the CPU (one per test module; torch on one
    thread)."""
    import torch

    from rlhf_core import models

    torch.set_num_threads(1)
    return models.build_builtin_policy(tok, seed=0)
