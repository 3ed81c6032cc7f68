"""Exact Taylor coefficients of the alignment loss along gradient flow.

For ANY landscape, gradient flow `delta' = -grad L_F(theta0 + delta)` from
`delta(0) = 0` has a Taylor series `delta(t) = sum_j a_j t^j`, and

    Delta L_A(t) = L_A(theta0 + delta(t)) - L_A(theta0) = sum_j c_j t^j.

Both are computed with Taylor-mode autodiff (`jax.experimental.jet`): the ODE
recursion `a_{k+1} = [t^k] f(sum_{j<=k} a_j t^j) / (k + 1)` with `f = -grad L_F`
needs one jet per order, polynomial cost in the order.  A nested-`jvp`
implementation (exponential cost, independent code path) is kept for checking.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import jax
import jax.numpy as jnp
from jax.experimental import jet
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float

from geomsim.landscapes.base import Landscape, flatten_displacement

Method = Literal["jet", "jvp"]


Projector = Callable[[Array], Array]


def _flat_functions(landscape: Landscape, projector: Projector | None = None):
    zero, unravel = flatten_displacement(landscape)

    def velocity(x):
        step = -ravel_pytree(jax.grad(landscape.displaced_task_loss)(unravel(x)))[0]
        return step if projector is None else projector(step)

    def align(x):
        return landscape.align_increase(unravel(x))

    return zero, velocity, align


def _series_derivatives(fn: Callable, x0: Array, coeffs: list[Array], method: Method) -> list:
    """Derivatives `d^j/dt^j fn(x0 + sum_i coeffs[i-1] t^i)` at t=0 for j=1..len(coeffs)."""
    order = len(coeffs)
    if method == "jet":
        derivs_in = [math.factorial(i + 1) * c for i, c in enumerate(coeffs)]
        _, out = jet.jet(fn, (x0,), (derivs_in,))
        return list(out)

    def along(t):
        return fn(x0 + sum(c * t ** (i + 1) for i, c in enumerate(coeffs)))

    results = []
    f = along
    t0 = jnp.zeros((), x0.dtype)
    for _ in range(order):
        f = (lambda g: lambda t: jax.jvp(g, (t,), (jnp.ones_like(t),))[1])(f)
        results.append(f(t0))
    return results


def path_coefficients(landscape: Landscape, order: int = 6, method: Method = "jet",
                      projector: Projector | None = None) -> Float[Array, "n d"]:
    """Taylor coefficients `a_0..a_order` of the gradient-flow displacement.

    With `projector` (a fixed linear map on flat vectors, e.g. `v -> v - B^T B v`
    for a static projection defense) the flow is `delta' = -P grad L_F`.

    Returns:
        Array of shape `(order + 1, d)` in flat coordinates; `a_0 = 0`,
        `a_1 = -g`, `a_2 = H_F g / 2`, ...  Units: parameter / time^j.
    """
    if order < 1:
        raise ValueError(f"order must be >= 1; got {order}")
    zero, velocity, _ = _flat_functions(landscape, projector)
    coeffs = [velocity(zero)]
    for k in range(1, order):
        derivs = _series_derivatives(velocity, zero, coeffs, method)
        coeffs.append(derivs[k - 1] / math.factorial(k + 1))
    return jnp.stack([zero, *coeffs])


def align_coefficients(landscape: Landscape, order: int = 6, method: Method = "jet",
                       projector: Projector | None = None) -> Float[Array, " n"]:
    """Taylor coefficients `c_0..c_order` of `Delta L_A(t)` along gradient flow
    (projected by `projector` when given, see `path_coefficients`).

    Returns:
        Array of shape `(order + 1,)`; `c_0 = 0`, `c_j` in loss / time^j.
    """
    path = path_coefficients(landscape, order, method, projector)
    zero, _, align = _flat_functions(landscape)
    derivs = _series_derivatives(align, zero, list(path[1:]), method)
    cs = [d / math.factorial(j + 1) for j, d in enumerate(derivs)]
    return jnp.stack([align(zero), *cs])
