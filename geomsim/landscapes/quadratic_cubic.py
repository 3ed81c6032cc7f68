"""The synthetic testbed: quadratic-plus-cubic alignment and task losses.

With `delta = theta - theta0` (and `theta0 = 0`):

    L_A(delta) = 1/2 delta^T H_A delta + beta (s.delta)(p.delta)(w.delta)
                 + beta_r (-p.delta)(w.delta)^2
    L_F(delta) = g.delta + 1/2 delta^T H_F delta + (kappa/2)(s.delta)(p.delta)^2

built from one random orthonormal basis `Q = [U | P]` (`U`: the k columns that
span the alignment subspace S; `P`: its complement) so that the Alignment
Instability Condition quantities are exact inputs:

* `H_A = U diag(lambda_1..lambda_k) U^T + mu (I - U U^T)` with
  `lambda_1 = sharpness <= ... <= lambda_k = sharpness * sharpness_spread`;
* `g = grad_norm (sqrt(1 - eps^2) p + eps e)`, `p` in the complement, `e` in S,
  so `||P_S g|| / ||g|| = eps`;
* `H_F = P R diag(h) R^T P^T + task_curvature_s U U^T + c (s p^T + p s^T)`,
  `h` log-spaced in `[task_curvature_min, task_curvature]`, with `c` solved so
  that `||P_S H_F g|| = coupling` (gamma);
* the task cubic feeds S at third order: `P_S D^3 L_F[g, g] = cubic_coupling s`;
* the alignment cubic couples S to a complement direction `w` in proportion to
  the distance travelled along `p`, so the sharp subspace rotates along the
  path (rotation angle ~ `align_cubic * grad_norm * t / sharpness`) without
  touching the quartic coefficient when `eps = 0`. It vanishes whenever
  `s.delta = 0`, so a projection off S is exact against it;
* the rotation term `beta_r (-p.delta)(w.delta)^2` (`align_rotate`) makes a NEW
  sharp direction: moving along the task direction `p` gives `w` (outside S)
  alignment curvature `2 beta_r (-p.delta)`, and the task curvature feeds `w`
  (`rotate_coupling` adds `c_w (p w^T + w p^T)` to `H_F`), so a projection off
  the S measured at theta0 cannot stop it (docs/theory.md, "Defenses").

Directions: `s = U[:, 0]` is the least-sharp S direction, so with `eps = mu = 0`
the quartic coefficient is exactly the AIC bound `sharpness * coupling^2 / 8`;
`e = U[:, 1]` (orthogonal to `s`) when `rank >= 2`, else `e = s`.
"""

from __future__ import annotations

import functools
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from geomsim.landscapes.base import Landscape


def _random_orthogonal(key: PRNGKeyArray, n: int, dtype) -> Float[Array, "n n"]:
    """Haar-distributed orthogonal matrix (QR with the sign fix)."""
    q, r = jnp.linalg.qr(jax.random.normal(key, (n, n), dtype=dtype))
    return q * jnp.sign(jnp.diagonal(r))[None, :]


class QuadraticCubic(Landscape):
    """Quadratic-plus-cubic landscape in flat coordinates (see module docstring).

    Fields are the built operators; use `quadratic_cubic(...)` to construct one
    from AIC parameters.  All arrays are float in the default JAX dtype.
    """

    theta0: Float[Array, " d"]
    hess_align: Float[Array, "d d"]
    grad_task: Float[Array, " d"]
    hess_task: Float[Array, "d d"]
    basis: Float[Array, "k d"]
    # Cubic terms as coefficient * product of three linear forms.
    task_cubic_coef: Float[Array, ""]
    task_cubic_dirs: Float[Array, "3 d"]
    align_cubic_coef: Float[Array, ""]
    align_cubic_dirs: Float[Array, "3 d"]
    rotate_coef: Float[Array, ""]
    rotate_dirs: Float[Array, "3 d"]
    task_is_quadratic: bool = eqx.field(static=True, default=False)

    @staticmethod
    def _triple(coef, dirs, delta):
        v = dirs @ delta  # explicit product: jet has no rule for reduce_prod
        return coef * v[0] * v[1] * v[2]

    def align_increase(self, delta):
        # Direct form: no L_A(theta) - L_A(theta0) cancellation.
        quad = 0.5 * delta @ (self.hess_align @ delta)
        cubic = self._triple(self.align_cubic_coef, self.align_cubic_dirs, delta)
        return quad + cubic + self._triple(self.rotate_coef, self.rotate_dirs, delta)

    def align_loss(self, theta):
        return self.align_increase(theta - self.theta0)

    def task_loss(self, theta):
        delta = theta - self.theta0
        quad = self.grad_task @ delta + 0.5 * delta @ (self.hess_task @ delta)
        return quad + self._triple(self.task_cubic_coef, self.task_cubic_dirs, delta)

    def task_gradient(self, delta):
        # One matvec (autodiff of the quadratic form would take H and H^T separately).
        v = self.task_cubic_dirs @ delta
        cubic = self.task_cubic_coef * (
            v[1] * v[2] * self.task_cubic_dirs[0] + v[0] * v[2] * self.task_cubic_dirs[1] + v[0] * v[1] * self.task_cubic_dirs[2]
        )
        return self.grad_task + self.hess_task @ delta + cubic

    def align_basis(self):
        return self.basis

    def quadratic_task(self):
        if not self.task_is_quadratic:
            return None
        return self.grad_task, self.hess_task


def _is_concrete_zero(x) -> bool:
    try:
        return float(x) == 0.0
    except (TypeError, jax.errors.ConcretizationTypeError):
        return False


# (argument, predicate, allowed range as the error message states it)
_RANGES = (
    ("sharpness", lambda v: v > 0, "> 0"),
    ("coupling", lambda v: v >= 0, ">= 0"),
    ("mu", lambda v: v >= 0, ">= 0"),
    ("eps", lambda v: (v >= 0) & (v < 1), "in [0, 1)"),
    ("cubic_coupling", lambda v: v >= 0, ">= 0"),
    ("align_cubic", lambda v: v == v, "finite"),
    ("align_rotate", lambda v: v == v, "finite"),
    ("rotate_coupling", lambda v: v == v, "finite"),
    ("sharpness_spread", lambda v: v >= 1, ">= 1"),
    ("grad_norm", lambda v: v > 0, "> 0"),
    ("task_curvature", lambda v: v > 0, "> 0"),
    ("task_curvature_min", lambda v: v > 0, "> 0 and <= task_curvature"),
    ("task_curvature_s", lambda v: v == v, "finite"),
)


def _checked(values: dict[str, Any], runtime: bool) -> dict[str, Any]:
    """Range-check the builder's arguments where they enter.

    Concrete values raise a one-line `ValueError` naming the argument; traced
    values (under `vmap`/`jit`) go through `eqx.error_if` when `runtime` is on.
    """
    values = dict(values)
    rules = _RANGES + (("task_curvature_min", lambda v: v <= values["task_curvature"], "<= task_curvature"),)
    for name, predicate, allowed in rules:
        value = values[name]
        ok = predicate(value) & jnp.isfinite(value)
        if isinstance(ok, jax.core.Tracer):
            if runtime:
                values[name] = eqx.error_if(jnp.asarray(value), ~ok, f"quadratic_cubic: {name} must be {allowed}")
        elif not bool(ok):
            raise ValueError(f"quadratic_cubic: {name} must be {allowed} (got {float(value)!r})")
    return values


def quadratic_cubic(
    key: PRNGKeyArray,
    *,
    dim: int = 32,
    rank: int = 4,
    sharpness: float | Array = 10.0,
    coupling: float | Array = 0.5,
    mu: float | Array = 0.0,
    eps: float | Array = 0.0,
    cubic_coupling: float | Array = 0.0,
    align_cubic: float | Array = 0.0,
    sharpness_spread: float | Array = 1.0,
    grad_norm: float | Array = 1.0,
    task_curvature: float | Array = 1.0,
    task_curvature_min: float | Array = 0.1,
    task_curvature_s: float | Array = 0.0,
    align_rotate: float | Array = 0.0,
    rotate_coupling: float | Array = 0.0,
    runtime_checks: bool = True,
) -> QuadraticCubic:
    """Build a `QuadraticCubic` landscape with exact AIC parameters.

    Args:
        key: PRNG key for the orthonormal basis and the task spectrum rotation.
        dim: parameter dimension d (static), `dim >= rank + 2`.
        rank: alignment rank k (static), `1 <= rank`.
        sharpness: lambda > 0, smallest alignment eigenvalue on S (loss/param^2).
        coupling: gamma >= 0, `||P_S H_F g||` (loss/param^2 x grad units).
        mu: residual alignment curvature on the complement, `0 <= mu`.
        eps: initial overlap `||P_S g|| / ||g||`, in [0, 1).
        cubic_coupling: `||P_S D^3 L_F[g, g]||` (the t^6 control when coupling=0).
        align_cubic: strength beta of the alignment cubic that rotates S.
        sharpness_spread: S eigenvalues span `[sharpness, sharpness*spread]`, >= 1.
        grad_norm: `||g||`, > 0.
        task_curvature, task_curvature_min: range of the task Hessian on the
            complement (positive, min <= max).
        task_curvature_s: task Hessian eigenvalue on S (finite; negative makes S
            a concave task direction); with eps > 0 it contributes
            `task_curvature_s * eps * grad_norm` to gamma.
        align_rotate: strength beta_r of the rotation term
            `beta_r (-p.delta)(w.delta)^2` (a new sharp direction w outside S).
        rotate_coupling: extra task curvature between p and w (adds to
            `w . H_F g`, which drives w at second order).
        runtime_checks: check traced arguments with `eqx.error_if` (a host
            callback in the compiled program). The sweep validates its grid on
            the host and turns this off so its program stays cacheable.

    Every float argument may be a traced scalar, so the builder is `vmap`pable
    over a grid of (sharpness, coupling, ...) and over keys. Out-of-range
    values raise `ValueError` (concrete) or an `eqx.error_if` runtime error
    (traced) naming the argument, instead of building a NaN landscape.
    """
    if rank < 1 or dim < rank + 2:
        raise ValueError(f"rank must be in [1, dim - 2]; got rank={rank}, dim={dim}")
    v = _checked(
        dict(sharpness=sharpness, coupling=coupling, mu=mu, eps=eps, cubic_coupling=cubic_coupling,
             align_cubic=align_cubic, sharpness_spread=sharpness_spread, grad_norm=grad_norm,
             task_curvature=task_curvature, task_curvature_min=task_curvature_min,
             task_curvature_s=task_curvature_s, align_rotate=align_rotate, rotate_coupling=rotate_coupling),
        runtime_checks,
    )
    return _assemble(key, v, dim, rank, _is_concrete_zero(cubic_coupling))


# One compiled program: built op by op, a landscape cost ~70 small compilations
# (4.1 s of a 12-parameter diagnosis, none of them long enough for the persistent
# cache); jitted it is one program, cached. Under the sweep's vmap it is inlined.
@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _assemble(key: PRNGKeyArray, v: dict[str, Any], dim: int, rank: int, task_is_quadratic: bool) -> QuadraticCubic:
    dtype = jnp.zeros(()).dtype
    k_basis, k_rot = jax.random.split(key)
    q = _random_orthogonal(k_basis, dim, dtype)
    u, perp = q[:, :rank], q[:, rank:]
    s = u[:, 0]
    e = u[:, 1] if rank >= 2 else u[:, 0]
    p, w = perp[:, 0], perp[:, 1]

    def f(x):
        return jnp.asarray(x, dtype)

    sharpness, coupling, mu, eps = f(v["sharpness"]), f(v["coupling"]), f(v["mu"]), f(v["eps"])
    gnorm, spread = f(v["grad_norm"]), f(v["sharpness_spread"])
    hs = f(v["task_curvature_s"])
    task_curvature, task_curvature_min = v["task_curvature"], v["task_curvature_min"]
    cubic_coupling, align_cubic = v["cubic_coupling"], v["align_cubic"]

    lams = sharpness * spread ** jnp.linspace(0.0, 1.0, rank, dtype=dtype)
    proj_s = u @ u.T
    hess_align = (u * lams) @ u.T + mu * (jnp.eye(dim, dtype=dtype) - proj_s)

    along_perp = gnorm * jnp.sqrt(1.0 - eps**2)  # p . g
    grad_task = along_perp * p + gnorm * eps * e

    n_perp = dim - rank
    log_lo, log_hi = jnp.log(f(task_curvature_min)), jnp.log(f(task_curvature))
    h = jnp.exp(log_lo + (log_hi - log_lo) * jnp.linspace(0.0, 1.0, n_perp, dtype=dtype))
    rot = perp @ _random_orthogonal(k_rot, n_perp, dtype)
    from_s_block = hs * eps * gnorm  # component of P_S H_F g along e
    if rank >= 2:
        c_along = jnp.sqrt(jnp.maximum(coupling**2 - from_s_block**2, 0.0))
    else:
        c_along = coupling - from_s_block
    c = c_along / along_perp
    c_w = f(v["rotate_coupling"]) / along_perp
    hess_task = ((rot * h) @ rot.T + hs * proj_s + c * (jnp.outer(s, p) + jnp.outer(p, s))
                 + c_w * (jnp.outer(w, p) + jnp.outer(p, w)))

    kappa = f(cubic_coupling) / along_perp**2
    return QuadraticCubic(
        theta0=jnp.zeros(dim, dtype),
        hess_align=hess_align,
        grad_task=grad_task,
        hess_task=hess_task,
        basis=u.T,
        task_cubic_coef=0.5 * kappa,
        task_cubic_dirs=jnp.stack([s, p, p]),
        align_cubic_coef=f(align_cubic),
        align_cubic_dirs=jnp.stack([s, p, w]),
        rotate_coef=f(v["align_rotate"]),
        rotate_dirs=jnp.stack([-p, w, w]),
        task_is_quadratic=task_is_quadratic,
    )
