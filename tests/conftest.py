"""Correctness tests run in float64 (the early-time law is below float32 resolution)."""

import geomsim  # noqa: F401  (sets the XLA runtime flags before JAX starts)
import jax
import pytest

jax.config.update("jax_enable_x64", True)


@pytest.fixture
def key():
    return jax.random.key(0)
