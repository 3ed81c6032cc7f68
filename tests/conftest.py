"""Correctness tests run in float64 (the early-time law is below float32 resolution)."""

import os
from pathlib import Path

import jax
import pytest

import geomsim  # noqa: F401  (sets the XLA runtime flags before JAX starts)

jax.config.update("jax_enable_x64", True)
# Many tests build the same programs from fresh closures (e.g. the sweep with one
# config), which JAX's in-memory caches miss; the persistent cache compiles each
# distinct program once per checkout (and is keyed on the jax/XLA versions and flags).
CACHE = Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax"
jax.config.update("jax_compilation_cache_dir", str(CACHE))
# The CLIs called in-process (`main([...])`) set the cache folder from this variable: without
# it they moved the rest of the worker's programs into the user's ~/.cache/geomsim/jax.
os.environ.setdefault("GEOMSIM_JAX_CACHE", str(CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
# The suite is dominated by XLA compilation, not by running the programs; most
# optimisation passes roughly halve compile time.  GEOMSIM_TEST_OPTIMIZED=1 runs
# the suite with the full pipeline that users get.
if os.environ.get("GEOMSIM_TEST_OPTIMIZED") != "1":
    jax.config.update("jax_disable_most_optimizations", True)


@pytest.fixture
def key():
    return jax.random.key(0)
