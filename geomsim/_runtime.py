"""Process-wide XLA settings geomsim depends on, applied at import.

XLA's CPU runtime can deadlock (every worker thread idle, the caller blocked
forever) running geomsim's vmapped sweep programs (a while loop next to a
wide Taylor-mode graph) under its concurrency-optimised thunk scheduler: seen
with jaxlib 0.10.2 on 2 cores, on the first or second call of a 64-point chunk;
related reports: jax-ml/jax#25861, PyAutoLabs/PyAutoFit#1528.  The default
scheduler has no such hang and is as fast here, so geomsim appends
`--xla_cpu_enable_concurrency_optimized_scheduler=false` to XLA_FLAGS before
the backend starts.  Set GEOMSIM_KEEP_XLA_FLAGS=1 to leave XLA_FLAGS alone.
"""

from __future__ import annotations

import os
import warnings

SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def configure_runtime() -> None:
    if os.environ.get("GEOMSIM_KEEP_XLA_FLAGS", "") not in ("", "0"):
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_enable_concurrency_optimized_scheduler" in flags:
        return
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        warnings.warn(
            "geomsim was imported after JAX started its backend, so it could not set "
            f"XLA_FLAGS={SCHEDULER_FLAG} (it avoids a CPU-runtime deadlock); "
            "import geomsim first or set the flag yourself",
            RuntimeWarning,
            stacklevel=3,
        )
        return
    os.environ["XLA_FLAGS"] = f"{flags} {SCHEDULER_FLAG}".strip()


def enable_compilation_cache() -> str | None:
    """Keep JAX's persistent compilation cache for the command-line tools, so a second
    run of the same command does not recompile (benchmarks/RESULTS.md measures it).

    The folder is `$GEOMSIM_JAX_CACHE`, else `$XDG_CACHE_HOME/geomsim/jax` (default
    `~/.cache/geomsim/jax`); `GEOMSIM_NO_JAX_CACHE=1` turns it off.  Returns the
    folder, or None when off.  Programs are keyed by JAX/XLA version, flags and shapes,
    so a stale entry is never used.
    """
    if os.environ.get("GEOMSIM_NO_JAX_CACHE", "") not in ("", "0"):
        return None
    folder = os.environ.get("GEOMSIM_JAX_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "geomsim", "jax")
    import jax

    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return folder
