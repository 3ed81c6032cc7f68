"""Non-finite numbers are reported, never forecast from: one line naming the quantity and where.

A safety verdict computed from a NaN reads as "safe" (a NaN never crosses a
threshold), so every CLI checks its inputs and its measured quantities with
these helpers on the host, after the compiled program, and exits non-zero.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


class MeasurementError(ValueError):
    """A quantity a verdict would rest on is unusable: non-finite, or a zero task
    gradient (the message is one line naming it)."""


class NonFiniteError(MeasurementError):
    """A quantity that must be finite is not (the message is one line naming it)."""


# Leaves up to this many values are checked with numpy on the host: no program to compile or load
# for each new tree structure (a diagnosis checked 13 of them, 0.8 s of a warm 12-parameter run).
HOST_CHECK_SIZE = 1 << 20


def _host_counts(leaf) -> tuple[int, int, int]:
    x = np.asarray(leaf)
    finite = np.isfinite(x)
    return int(np.isnan(x).sum()), int(np.isinf(x).sum()), int(np.argmin(finite.ravel())) if x.size else 0


@jax.jit
def _counts(leaves: list) -> list:
    # On the device, in one program: a float64 host copy of a billion-parameter model would not fit.
    return [(jnp.sum(jnp.isnan(x)), jnp.sum(jnp.isinf(x)), jnp.argmin(jnp.isfinite(x).ravel())) for x in leaves]


def nonfinite_leaves(tree: Any) -> list[tuple[str, str]]:
    """`(path, description)` of every inexact array leaf of `tree` holding a NaN or an inf
    (paths as `jax.tree_util.keystr` writes them; integer and non-array leaves are skipped)."""
    pairs = [(path, jnp.asarray(leaf) if isinstance(leaf, (float, complex)) else leaf)
             for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]
    pairs = [(path, leaf) for path, leaf in pairs if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.inexact)]
    large = [i for i, (_, leaf) in enumerate(pairs) if np.size(leaf) > HOST_CHECK_SIZE
             or (isinstance(leaf, jax.Array) and not leaf.is_fully_addressable)]  # sharded over processes
    on_device = dict(zip(large, jax.device_get(_counts([pairs[i][1] for i in large])), strict=True)) if large else {}
    counts = [on_device[i] if i in on_device else _host_counts(leaf) for i, (_, leaf) in enumerate(pairs)]
    found = []
    for (path, leaf), (nan, inf, first) in zip(pairs, counts, strict=True):
        if nan or inf:
            parts = ([f"{int(nan)} NaN"] if nan else []) + ([f"{int(inf)} inf"] if inf else [])
            size = int(np.prod(leaf.shape))
            at = f" of {size} values, the first at index {tuple(int(i) for i in np.unravel_index(int(first), leaf.shape))}"
            found.append((jax.tree_util.keystr(path) or "the array", " and ".join(parts) + (at if size > 1 else "")))
    return found


def require_finite(tree: Any, what: str) -> None:
    """Raise NonFiniteError naming `what`, the first bad leaf and how many leaves are bad."""
    bad = nonfinite_leaves(tree)
    if bad:
        (path, description), more = bad[0], len(bad) - 1
        others = f" (and {more} more leaves)" if more else ""
        where = f"{what}: {path}" if path != "the array" else what
        raise NonFiniteError(f"{where} holds {description}{others}")


def run_reasons(quantities: dict[str, Any]) -> np.ndarray:
    """Per run (the leading axis of every array): "" when every quantity is finite, else a
    reason naming the first one that is not, e.g. "non-finite s_part (2 NaN of 60 values)".
    On the host, for the tables of a sweep (`status` "nan" and `reason` per run)."""
    arrays = {name: np.asarray(value) for name, value in quantities.items()}
    n = len(next(iter(arrays.values())))
    reasons = np.full(n, "", dtype=object)
    for name, x in arrays.items():
        flat = x.reshape(n, -1)
        nan, inf = np.isnan(flat).sum(axis=1), np.isinf(flat).sum(axis=1)
        for i in np.flatnonzero((nan + inf > 0) & (reasons == "")):  # a loop over the bad runs only
            parts = ([f"{nan[i]} NaN"] if nan[i] else []) + ([f"{inf[i]} inf"] if inf[i] else [])
            size = f" of {flat.shape[1]} values" if flat.shape[1] > 1 else ""
            reasons[i] = f"non-finite {name} ({' and '.join(parts)}{size})"
    return reasons
