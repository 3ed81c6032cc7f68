"""Gradient flow by diffrax: adaptive 8th-order steps onto the output times (`ode_flow`), or
fixed steps from one output time to the next with the metrics computed inside the solve
(`grid_flow`).  See `geomsim.dynamics.flow`, which imports this module only when it runs one.
"""

from __future__ import annotations

from collections.abc import Callable

import diffrax
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float

from geomsim.landscapes.base import Landscape, flatten_displacement


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
