"""Closed-form laws of alignment collapse (see `shared/theory.md`).

Conventions: `t` is gradient-flow time (for discrete optimizers, `t = n * lr`);
`c_j` are Taylor coefficients of `Delta L_A(t)` (loss / time^j); `tau` is a loss
threshold in the units of `L_A`.

`time_to_threshold` and `first_crossing` are jitted: summaries call them from the host once
per (task, seed), where op-by-op dispatch would compile each of their ~20 operations as a
program of its own; inside another program they are inlined as before.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float


def quadratic_prefactor(g: Float[Array, " d"], hess_align: Float[Array, "d d"]) -> Float[Array, ""]:
    """`c2 = (1/2) g^T H_A g`: the early t^2 coefficient at an alignment minimum
    (eps > 0 or mu > 0 make it non-zero)."""
    return 0.5 * g @ (hess_align @ g)


def quartic_prefactor(
    g: Float[Array, " d"], hess_align: Float[Array, "d d"], hess_task: Float[Array, "d d"]
) -> Float[Array, ""]:
    """`c4 = (1/8) (H_F g)^T H_A (H_F g)`: the quartic law's leading coefficient
    (exact when `H_A g = 0`, no cubic alignment term; `>= lambda gamma^2 / 8`)."""
    hg = hess_task @ g
    return 0.125 * hg @ (hess_align @ hg)


def sextic_prefactor(cubic_drive: Float[Array, " d"], hess_align: Float[Array, "d d"]) -> Float[Array, ""]:
    """`c6 = (1/72) v^T H_A v` with `v = D^3 L_F[g, g]`: the t^6 law of the
    cubic-only control (`P_S H_F^j g = 0`, S fed only at third order)."""
    return (1.0 / 72.0) * cubic_drive @ (hess_align @ cubic_drive)


def quartic_law(sharpness: ArrayLike, coupling: ArrayLike) -> Array:
    """The AIC prediction `c4 = lambda gamma^2 / 8` (Hessian convention)."""
    return jnp.asarray(sharpness) * jnp.asarray(coupling) ** 2 / 8.0


def quartic_time_to_failure(c4: ArrayLike, tau: ArrayLike) -> Array:
    """`t* = (tau / c4)^(1/4)`, i.e. `(8 tau / (lambda gamma^2))^(1/4)`; inf if c4 <= 0."""
    c4 = jnp.asarray(c4)
    return jnp.where(c4 > 0, (jnp.asarray(tau) / jnp.where(c4 > 0, c4, 1.0)) ** 0.25, jnp.inf)


def crossover_time(c2: ArrayLike, c4: ArrayLike) -> Array:
    """`t_x = sqrt(c2 / c4)`: where the quartic term overtakes the t^2 term."""
    c2, c4 = jnp.asarray(c2), jnp.asarray(c4)
    return jnp.sqrt(jnp.abs(c2) / jnp.where(c4 != 0, jnp.abs(c4), jnp.inf))


def window_end(c_lead: ArrayLike, c_next: ArrayLike, tol: float = 0.1) -> Array:
    """Time where the next Taylor term reaches `tol` of the leading one:
    `tol |c_p / c_{p+1}|` (the end of the leading power's window)."""
    c_lead, c_next = jnp.asarray(c_lead), jnp.asarray(c_next)
    return tol * jnp.abs(c_lead) / jnp.where(c_next != 0, jnp.abs(c_next), 0.0)


def polynomial_value(coeffs: Float[Array, " n"], t: ArrayLike) -> Array:
    """`sum_j coeffs[j] t^j` (the Taylor prediction of `Delta L_A(t)`)."""
    t = jnp.asarray(t)
    powers = t[..., None] ** jnp.arange(coeffs.shape[-1])
    return jnp.sum(coeffs * powers, axis=-1)


@functools.partial(jax.jit, static_argnames=("n_grid",))
def time_to_threshold(coeffs: Float[Array, " n"], tau: ArrayLike, t_max: ArrayLike, n_grid: int = 2048) -> Array:
    """First `t` in `(0, t_max]` where the Taylor polynomial reaches `tau`.

    Bisection-free and jit-friendly: the polynomial is scanned on a log grid and
    the crossing interpolated in log-log coordinates.  Returns inf if not reached.
    """
    t_max = jnp.asarray(t_max)
    ts = t_max * jnp.logspace(-8, 0, n_grid)
    vals = polynomial_value(coeffs, ts)
    return first_crossing(ts, vals, tau)


@jax.jit
def first_crossing(ts: Float[Array, " n"], values: Float[Array, " n"], tau: ArrayLike) -> Array:
    """First time a sampled curve reaches `tau`, log-log interpolated; inf if never."""
    tau = jnp.asarray(tau, values.dtype)
    above = jnp.isfinite(values) & (values >= tau)
    i = jnp.argmax(above)
    prev = jnp.maximum(i - 1, 0)
    v0, v1 = jnp.maximum(values[prev], jnp.finfo(values.dtype).tiny), values[i]
    frac = jnp.where((i > 0) & (v1 > v0), (jnp.log(tau) - jnp.log(v0)) / (jnp.log(v1) - jnp.log(v0)), 0.0)
    frac = jnp.clip(frac, 0.0, 1.0)
    t_cross = jnp.exp(jnp.log(ts[prev]) + frac * (jnp.log(ts[i]) - jnp.log(ts[prev])))
    t_cross = jnp.where(i > 0, t_cross, ts[0])
    return jnp.where(jnp.any(above), t_cross, jnp.inf)


def falling_factorial_basis(steps: ArrayLike, lr: ArrayLike, power: int) -> Array:
    """Discrete-GD time basis for a `t^power` law, `m = power // 2`.

    Even power: `(lr^m n (n-1) ... (n-m+1))^2`, since the S-displacement of GD
    after n steps is `C(n, m) lr^m` times the flow's `t^m / m!` coefficient (for
    power 4 the `n^2 (n-1)^2 lr^4` correction).  Odd power: the same squared
    factor times `lr n`, the exact first-order displacement along a second
    direction (the static-projection law `beta_r (p.delta)(w.delta)^2`, power 5).
    Both tend to `t^power` as n grows."""
    n = jnp.asarray(steps, dtype=jnp.result_type(float))
    m = power // 2
    ff = jnp.ones_like(n)
    for j in range(m):
        ff = ff * (n - j)
    basis = (jnp.asarray(lr) ** m * ff) ** 2
    if power % 2:
        basis = basis * jnp.asarray(lr) * n
    return basis


def discrete_gd_quartic(c4: ArrayLike, steps: ArrayLike, lr: ArrayLike) -> Array:
    """Quartic law for gradient descent: `c4 lr^4 n^2 (n-1)^2`."""
    return jnp.asarray(c4) * falling_factorial_basis(steps, lr, 4)
