"""Gradient flow `theta' = -grad L_F(theta)`, without step-size error.

* Quadratic `L_F` (the landscape returns `quadratic_task()`): the exact solution
  `delta(t) = -V diag(-expm1(-h t) / h) V^T g` from `eigh(H_F)`.
* Otherwise: diffrax's 8th-order Dormand-Prince with tight tolerances, forced
  to step onto every output time (no dense-output interpolation), which keeps
  the O(t^2) S-component accurate at early times (see theory.md's pitfalls).
"""

from __future__ import annotations

from typing import Literal

import diffrax
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float

from geomsim.dynamics.trajectory import Trajectory, measure
from geomsim.landscapes.base import Landscape, flatten_displacement

FlowMethod = Literal["auto", "exact", "ode"]


def exact_quadratic_flow(
    g: Float[Array, " d"], hess: Float[Array, "d d"], times: Float[Array, " r"]
) -> Float[Array, "r d"]:
    """Exact displacements `delta(t)` of gradient flow on `g.x + x^T H x / 2`."""
    h, vecs = jnp.linalg.eigh(0.5 * (hess + hess.T))
    coeff = vecs.T @ g
    ht = h[None, :] * times[:, None]
    safe_h = jnp.where(h == 0, 1.0, h)[None, :]
    # t * (1 - e^{-ht}) / (ht), with the small-ht limit t (1 - ht/2 + (ht)^2/6).
    factor = jnp.where(
        jnp.abs(ht) < 1e-5,
        times[:, None] * (1.0 - ht / 2.0 + ht**2 / 6.0),
        -jnp.expm1(-ht) / safe_h,
    )
    return -(factor * coeff[None, :]) @ vecs.T


def ode_flow(
    landscape: Landscape,
    times: Float[Array, " r"],
    rtol: float = 1e-12,
    atol: float = 1e-16,
    max_steps: int = 1_000_000,
) -> Float[Array, "r d"]:
    """Displacements from an adaptive 8th-order integration of gradient flow."""
    zero, unravel = flatten_displacement(landscape)

    def vector_field(t, x, args):
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


def gradient_flow(
    landscape: Landscape,
    times: Float[Array, " r"],
    basis: Float[Array, "d k"] | None = None,
    method: FlowMethod = "auto",
    rtol: float = 1e-12,
    atol: float = 1e-16,
) -> Trajectory:
    """Gradient-flow trajectory recorded at increasing `times` (> 0).

    `method="auto"` uses the exact solution when the landscape says `L_F` is
    quadratic, else the ODE solver.
    """
    quad = landscape.quadratic_task()
    if method == "exact" and quad is None:
        raise ValueError("method='exact' needs a landscape with a quadratic task loss")
    if method in ("auto", "exact") and quad is not None:
        deltas = exact_quadratic_flow(quad[0], quad[1], times)
    else:
        deltas = ode_flow(landscape, times, rtol, atol)
    _, unravel = flatten_displacement(landscape)
    metrics = jax.vmap(lambda x: measure(landscape, unravel(x), basis))(deltas)
    return Trajectory(time=times, steps=jnp.zeros_like(times), **metrics)
