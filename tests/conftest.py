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
jax.config.update("jax_compilation_cache_dir", str(Path(__file__).resolve().parents[1] / ".pytest_cache" / "jax"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
# The suite is dominated by XLA compilation, not by running the programs; most
# optimisation passes roughly halve compile time.  GEOMSIM_TEST_OPTIMIZED=1 runs
# the suite with the full pipeline that users get.
if os.environ.get("GEOMSIM_TEST_OPTIMIZED") != "1":
    jax.config.update("jax_disable_most_optimizations", True)


@pytest.fixture
def key():
    return jax.random.key(0)


def pytest_collection_modifyitems(config, items):  # noqa: ARG001  (pytest's hook signature)
    """Keep each test file on one worker (its module fixtures are built once), except the
    README's commands: each is its own process and together they are the longest file, so
    they are spread over the workers (`--dist loadgroup`)."""
    for item in items:
        if not item.nodeid.startswith("tests/test_readme.py::test_readme_command_runs"):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))
