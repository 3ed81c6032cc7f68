"""Gradient flow `theta' = -grad L_F(theta)`, without step-size error.

* Quadratic `L_F` (the landscape returns `quadratic_task()`): the exact solution
  `delta(t) = -V diag(-expm1(-h t) / h) V^T g` from `eigh(H_F)`.
* Otherwise (`method="ode"`, `geomsim.dynamics.ode`): diffrax's 8th-order Dormand-Prince with tight
  tolerances, forced to step onto every output time (no dense-output
  interpolation), which keeps the O(t^2) S-component accurate at early times
  (see docs/theory.md, "Numerical pitfalls").
* `method="grid"` (`geomsim.dynamics.ode`): fixed Tsit5 steps from one output time to the next, no error
  control.  On a geometric grid t_j = t_0 rho^j each step is `h = (1 - 1/rho) t`,
  so the local error is a fixed fraction of the solution's own scale at every
  time, in the S-component too; the metrics are computed inside the solve, so
  no `(r, d)` array of displacements is ever stored (large models).  The cost
  is 6 gradients per output time.  Check convergence by refining the grid
  (tests/test_dynamics.py does, against the exact flow and against GD).

diffrax is imported only when one of the last two runs (0.3 s of import that the exact
flow, the forecasts and `python -m geomsim.diagnose` do not need).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
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


def gradient_flow(
    landscape: Landscape,
    times: Float[Array, " r"],
    basis: Float[Array, "k d"] | None = None,
    method: FlowMethod = "auto",
    rtol: float = 1e-12,
    atol: float = 1e-16,
    extra: Callable[[PyTree], dict[str, Array]] | None = None,
    solver: Any = None,  # a diffrax.AbstractSolver (annotated Any: diffrax is imported lazily)
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
        from geomsim.dynamics.ode import grid_flow

        metrics = grid_flow(landscape, times, record, solver)
    else:
        if method in ("auto", "exact") and quad is not None:
            deltas = exact_quadratic_flow(quad[0], quad[1], times)
        else:
            from geomsim.dynamics.ode import ode_flow

            deltas = ode_flow(landscape, times, rtol, atol)
        metrics = jax.vmap(record)(deltas)
    return Trajectory(time=times, steps=jnp.zeros_like(times), **metrics)
