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


# xdist (`--dist loadfile --no-loadscope-reorder`, pyproject.toml) hands each worker the next
# file in collection order; these files go first, longest first (worker-seconds in a fresh-clone
# run on 2 cores, 2026-12-07: 393, 364, 208, 173, 168, 163, 137, 123, 117, 90), the rest follow
# in their usual order. xdist's default order (files with the most tests first) put the
# one-test test_readme_in_order.py (168 s) last, where a long file leaves the other worker idle.
LONGEST_FIRST = ("test_testbed_sweep.py", "test_readme_more.py", "test_testbed.py", "test_processes.py",
                 "test_readme_in_order.py", "test_sweep.py", "test_diagnose.py", "test_aic.py", "test_hf_data.py",
                 "test_hf_testbed.py")
assert not (gone := [n for n in LONGEST_FIRST if not (Path(__file__).parent / n).exists()]), f"LONGEST_FIRST: no {gone}"


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests keep their order


@pytest.fixture
def key():
    return jax.random.key(0)
