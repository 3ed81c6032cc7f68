"""Measured power laws: local log-log slopes, the onset window, and fits.

The onset window rule (documented, data-driven, no expected exponent):

1. A point is usable if the value is finite and above the noise `floor`.
2. The local slope `s(t) = d log y / d log t` is a least-squares slope over
   `2 * half_width + 1` neighbouring usable points.
3. A plateau is a run of consecutive points whose local slopes all lie within
   a band of width `2 * slope_tol` and that spans at least `min_decades` of t.
   The onset window is the longest plateau that starts inside the EARLIEST
   plateau: earliest, because later plateaus (saturation, the landscape's own
   shape) are not the onset; longest among those starts, because a slowly
   drifting transient (e.g. discrete-step effects at the first few steps)
   can open the earliest plateau before the law has settled.
4. The exponent is the least-squares slope over the window; its interval is the
   union of the OLS +-2 standard errors and the range of local slopes in the
   window (a conservative, systematic band, not a random-noise CI).
5. The prefactor for the nearest integer power p is the intercept at t -> 0 of
   a straight-line fit of `y / B_p(t)` against t (removing the leading
   next-order bias); `B_p(t) = t^p`, or a caller-supplied basis such as the
   discrete-GD falling factorials.

Everything is jnp, so fits `vmap` over a sweep's curves inside `jit`.  The two public
functions are jitted themselves: a summary that vmaps them over a table's curves from the
host otherwise dispatches op by op, one compiled program per primitive (about 140 in a
resumed testbed sweep's report; benchmarks/bench_resume.py, RESULTS.md).
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

MAX_POWER = 8

FIT_OK = 0
FIT_NO_SIGNAL = 1
FIT_NO_PLATEAU = 2
FIT_REASONS = {
    FIT_OK: "",
    FIT_NO_SIGNAL: "alignment loss never rose above the noise floor",
    FIT_NO_PLATEAU: "no window of constant log-log slope long enough",
}


class PowerLawFit(eqx.Module):
    """Result of `fit_onset` (all scalars; vmapped fits give arrays).

    exponent, exponent_lo, exponent_hi: fitted power and its band.
    power: nearest integer power used for the prefactor.
    prefactor: intercept of `y / B_power(t)` at t -> 0 (units of y / t^power).
    window_lo, window_hi: onset window in units of t.
    n_points: usable points in the window.
    status: FIT_OK, FIT_NO_SIGNAL or FIT_NO_PLATEAU.
    """

    exponent: Array
    exponent_lo: Array
    exponent_hi: Array
    power: Array
    prefactor: Array
    window_lo: Array
    window_hi: Array
    n_points: Array
    status: Array


def _masked_ols(x, y, mask):
    """Weighted (0/1) least squares y = a + b x; returns a, b, standard error of b."""
    w = mask.astype(x.dtype)
    n = jnp.sum(w)
    safe_n = jnp.maximum(n, 1.0)
    xm, ym = jnp.sum(w * x) / safe_n, jnp.sum(w * y) / safe_n
    sxx = jnp.sum(w * (x - xm) ** 2)
    sxy = jnp.sum(w * (x - xm) * (y - ym))
    safe_sxx = jnp.where(sxx > 0, sxx, 1.0)
    b = sxy / safe_sxx
    a = ym - b * xm
    ssr = jnp.sum(w * (y - a - b * x) ** 2)
    se = jnp.sqrt(ssr / jnp.maximum(n - 2.0, 1.0) / safe_sxx)
    return a, b, se


@functools.partial(jax.jit, static_argnames=("half_width",))
def local_slopes(
    t: Float[Array, " r"],
    y: Float[Array, " r"],
    floor: Float[Array, " r"] | Float[Array, ""] | float = 0.0,
    half_width: int = 2,
) -> Float[Array, " r"]:
    """Local log-log slope at each point (NaN where its neighbourhood is unusable)."""
    usable = jnp.isfinite(y) & (y > floor) & (t > 0)
    x = jnp.log(jnp.where(t > 0, t, 1.0))
    z = jnp.log(jnp.where(usable, y, 1.0))
    n = t.shape[0]
    idx = jnp.arange(n)

    def slope_at(i):
        near = jnp.abs(idx - i) <= half_width
        all_usable = jnp.all(jnp.where(near, usable, True)) & (i >= half_width) & (i < n - half_width)
        _, b, _ = _masked_ols(x, z, near)
        return jnp.where(all_usable, b, jnp.nan)

    return jax.vmap(slope_at)(idx)


@functools.partial(jax.jit, static_argnames=("slope_tol", "min_decades", "half_width"))
def fit_onset(
    t: Float[Array, " r"],
    y: Float[Array, " r"],
    floor: Float[Array, " r"] | Float[Array, ""] | float = 0.0,
    time_basis: Float[Array, "p r"] | None = None,
    slope_tol: float = 0.05,
    min_decades: float = 0.5,
    half_width: int = 2,
) -> PowerLawFit:
    """Fit the onset power law of a sampled curve `y(t)` (see module docstring).

    Args:
        t: increasing positive times, shape (r,).
        y: the curve, e.g. `Delta L_A(t)`, shape (r,).
        floor: noise floor; points with `y <= floor` are unusable.
        time_basis: optional `(MAX_POWER + 1, r)` table, row p = basis of a t^p law.
        slope_tol: half-width of the local-slope band defining a plateau.
        min_decades: shortest accepted window, in decades of t.
        half_width: local-slope stencil half-width (points).
    """
    n = t.shape[0]
    dtype = y.dtype
    s = local_slopes(t, y, floor, half_width)
    x = jnp.log(jnp.where(t > 0, t, 1.0))
    z = jnp.log(jnp.where(jnp.isfinite(y) & (y > floor), y, 1.0))
    usable_s = jnp.isfinite(s)

    idx = jnp.arange(n)
    after = idx[None, :] >= idx[:, None]  # [i, j]: j >= i
    hi_track = jnp.where(after, jnp.where(usable_s, s, jnp.inf)[None, :], -jnp.inf)
    lo_track = jnp.where(after, jnp.where(usable_s, s, -jnp.inf)[None, :], jnp.inf)
    spread = jax.lax.cummax(hi_track, axis=1) - jax.lax.cummin(lo_track, axis=1)
    ok = after & (spread <= 2.0 * slope_tol)
    extent = x[None, :] - x[:, None]
    ends = idx + jnp.sum(ok, axis=1) - 1  # ok[i] is a contiguous run from i
    span = x[jnp.clip(ends, 0, n - 1)] - x
    qualifies = jnp.any(ok & (extent >= min_decades * jnp.log(10.0)), axis=1)
    found = jnp.any(qualifies)
    first = jnp.argmax(qualifies)
    # Longest window starting inside the earliest one: skips a drifting
    # transient at the start of the plateau without reaching later plateaus.
    candidates = qualifies & (idx >= first) & (idx <= ends[first])
    i0 = jnp.argmax(jnp.where(candidates, span, -jnp.inf))
    i1 = ends[i0]
    window = (idx >= i0) & (idx <= i1) & found

    _, b, se = _masked_ols(x, z, window)
    s_in = jnp.where(window, s, jnp.nan)
    lo = jnp.minimum(b - 2.0 * se, jnp.nanmin(s_in))
    hi = jnp.maximum(b + 2.0 * se, jnp.nanmax(s_in))

    power = jnp.clip(jnp.round(b), 0, MAX_POWER).astype(jnp.int32)
    if time_basis is None:
        basis = jnp.where(t > 0, t, 1.0) ** power
    else:
        basis = time_basis[power]
    ratio = jnp.where(window, y / jnp.where(basis > 0, basis, 1.0), 0.0)
    prefactor, _, _ = _masked_ols(t.astype(dtype), ratio, window)

    any_signal = jnp.sum(jnp.isfinite(y) & (y > floor)) > 2 * half_width + 2
    status = jnp.where(found, FIT_OK, jnp.where(any_signal, FIT_NO_PLATEAU, FIT_NO_SIGNAL))
    nan = jnp.full((), jnp.nan, dtype)

    def if_found(v):
        return jnp.where(found, v, nan)

    return PowerLawFit(
        exponent=if_found(b),
        exponent_lo=if_found(lo),
        exponent_hi=if_found(hi),
        power=jnp.where(found, power, -1),
        prefactor=if_found(prefactor),
        window_lo=if_found(t[i0]),
        window_hi=if_found(t[jnp.clip(i1, 0, n - 1)]),
        n_points=jnp.sum(window),
        status=status.astype(jnp.int32),
    )
