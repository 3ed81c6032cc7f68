"""Gradient flow `theta' = -grad L_F(theta)`, without step-size error.

* Quadratic `L_F` (the landscape returns `quadratic_task()`): the exact solution
  `delta(t) = -V diag(-expm1(-h t) / h) V^T g` from `eigh(H_F)`.
* Otherwise (`method="ode"`): diffrax's 8th-order Dormand-Prince with tight
  tolerances, forced to step onto every output time (no dense-output
  interpolation), which keeps the O(t^2) S-component accurate at early times
  (see docs/theory.md, "Numerical pitfalls").
* `method="grid"`: fixed Tsit5 steps from one output time to the next, no error
  control.  On a geometric grid t_j = t_0 rho^j each step is `h = (1 - 1/rho) t`,
  so the local error is a fixed fraction of the solution's own scale at every
  time, in the S-component too; the metrics are computed inside the solve, so
  no `(r, d)` array of displacements is ever stored (large models).  The cost
  is 6 gradients per output time.  Check convergence by refining the grid
  (tests/test_dynamics.py does, against the exact flow and against GD).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import diffrax
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PyTree

from geomsim.dynamics.trajectory import Trajectory, measure
from geomsim.landscapes.base import Landscape, flatten_displacement

FlowMethod = Literal["auto", "exact", "ode", "grid"]


def exact_quadratic_flow(
    g: Float[Array, " d"], hess: Float[Array, "d d"], times: Float[Array, " r"]
) -> Float[Array, "r d"]:
    """Exact displacements `delta(t)` of gradient flow on `g.x + x^T H x / 2`."""
    h, vecs = jnp.linalg.eigh(0.5 * (hess + hess.T))
    coeff = vecs.T @ g
    return -(flow_factor(h, times) * coeff[None, :]) @ vecs.T


def flow_factor(values: Float[Array, " m"], times: Float[Array, " r"]) -> Float[Array, "r m"]:
    """`t phi_1(-t h) = (1 - e^{-h t}) / h` per time and eigenvalue h of the task
    Hessian: the exact gradient-flow displacement factor (t at h = 0; the
    small-ht series `t (1 - ht/2 + (ht)^2/6)` avoids the cancellation)."""
    ht = values[None, :] * times[:, None]
    safe_h = jnp.where(values == 0, 1.0, values)[None, :]
    return jnp.where(jnp.abs(ht) < 1e-5, times[:, None] * (1.0 - ht / 2.0 + ht**2 / 6.0), -jnp.expm1(-ht) / safe_h)


def ode_flow(
    landscape: Landscape,
    times: Float[Array, " r"],
    rtol: float = 1e-12,
    atol: float = 1e-16,
    max_steps: int = 1_000_000,
) -> Float[Array, "r d"]:
    """Displacements from an adaptive 8th-order integration of gradient flow."""
    zero, unravel = flatten_displacement(landscape)

    def vector_field(_t, x, _args):
        return -ravel_pytree(landscape.task_gradient(unravel(x)))[0]

    controller = diffrax.ClipStepSizeController(
        diffrax.PIDController(rtol=rtol, atol=atol), step_ts=times
    )
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field),
        diffrax.Dopri8(),
        t0=jnp.zeros((), times.dtype),
        t1=times[-1],
        dt0=times[0] / 4,
        y0=zero,
        saveat=diffrax.SaveAt(ts=times),
        stepsize_controller=controller,
        max_steps=max_steps,
    )
    return sol.ys


class _OntoTimes(diffrax.StepTo):
    """`StepTo` without its run-time check that the times increase: our grids do by
    construction.  That check, like diffrax's checks of `SaveAt(ts=...)` and of the
    solve's result, runs through a host callback, which keeps the compiled program
    out of JAX's persistent compilation cache; `grid_flow` avoids all three."""

    def wrap(self, direction):  # noqa: ARG002  (diffrax's signature; our times increase)
        return self

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):  # noqa: ARG002  (diffrax's signature)
        # StepTo.init without its check that t0 and t1 are the first and last times (they are).
        return self.ts[1], 2


def grid_flow(
    landscape: Landscape,
    times: Float[Array, " r"],
    metrics: Callable[[Array], dict[str, Array]],
    solver: diffrax.AbstractSolver | None = None,
) -> dict[str, Array]:
    """`metrics(delta_flat)` at each of `times` along gradient flow, by fixed steps of
    `solver` (default Tsit5) onto `times` (see the module docstring); returns arrays of
    shape `(r, ...)`."""
    zero, unravel = flatten_displacement(landscape)

    def vector_field(_t, x, _args):
        return -ravel_pytree(landscape.task_gradient(unravel(x)))[0]

    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field),
        diffrax.Tsit5() if solver is None else solver,
        t0=jnp.zeros((), times.dtype),
        t1=times[-1],
        dt0=None,
        y0=zero,
        # One step per output time, so saving after every step saves exactly at `times`.
        saveat=diffrax.SaveAt(steps=True, fn=lambda _t, x, _args: metrics(x)),
        stepsize_controller=_OntoTimes(ts=jnp.concatenate([jnp.zeros((1,), times.dtype), times])),
        max_steps=int(times.shape[0]),
        throw=False,  # a failed solve is reported as NaN metrics below, per run
    )
    ok = sol.result == diffrax.RESULTS.successful
    return jax.tree.map(lambda y: jnp.where(ok, y, jnp.nan), sol.ys)


def gradient_flow(
    landscape: Landscape,
    times: Float[Array, " r"],
    basis: Float[Array, "d k"] | None = None,
    method: FlowMethod = "auto",
    rtol: float = 1e-12,
    atol: float = 1e-16,
    extra: Callable[[PyTree], dict[str, Array]] | None = None,
    solver: diffrax.AbstractSolver | None = None,
) -> Trajectory:
    """Gradient-flow trajectory recorded at increasing `times` (> 0).

    `method="auto"` uses the exact solution when the landscape says `L_F` is
    quadratic, else the adaptive ODE solver; `"grid"` steps onto `times` with
    fixed steps of `solver` (default Tsit5; use a geometric grid).  `extra(delta) -> {name: scalar}`
    adds caller-defined metrics (as in `descend`).
    """
    quad = landscape.quadratic_task()
    if method == "exact" and quad is None:
        raise ValueError("method='exact' needs a landscape with a quadratic task loss")
    _, unravel = flatten_displacement(landscape)

    def record(x):
        out = measure(landscape, unravel(x), basis)
        out["extra"] = extra(unravel(x)) if extra is not None else {}
        return out

    if method == "grid":
        metrics = grid_flow(landscape, times, record, solver)
    else:
        if method in ("auto", "exact") and quad is not None:
            deltas = exact_quadratic_flow(quad[0], quad[1], times)
        else:
            deltas = ode_flow(landscape, times, rtol, atol)
        metrics = jax.vmap(record)(deltas)
    return Trajectory(time=times, steps=jnp.zeros_like(times), **metrics)
