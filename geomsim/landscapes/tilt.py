"""The tilted task: a knob on the first-order overlap that leaves the curvature alone.

For a landscape with task loss `L_F`, gradient `g = grad L_F(theta0)` and an
alignment subspace S (orthonormal rows `(k, d)`), the tilted task

    L_F~(theta) = L_F(theta) - (1 - keep) (P_S g) . (theta - theta0)

differs from `L_F` by a linear function, so every second and higher derivative
(`H_F`, `D^3 L_F`, ...) is unchanged everywhere, while its gradient at theta0 is
`g - (1 - keep) P_S g`: the S-component is scaled by `keep` exactly,
`||P_S g~|| = keep ||P_S g||`.  `keep = 0` is the theory's eps = 0 case on a
real task (the first update is exactly orthogonal to S); `keep = 1` the task
itself.  (The normalised overlap `||P_S g~|| / ||g~||` is then
`keep ||P_S g|| / sqrt(||P_perp g||^2 + keep^2 ||P_S g||^2)`.)  See
docs/theory.md, "Controlling the first-order overlap".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PyTree

from geomsim.landscapes.base import Landscape


class TiltedLandscape(Landscape):
    """`base` with the linear term `-tilt . (theta - theta0)` added to its task loss.

    theta0: `base.theta0`; tilt: `(d,)` flat vector, `(1 - keep) P_S g` for `tilt_overlap`.
    """

    theta0: PyTree
    base: Landscape
    tilt: Float[Array, " d"]

    def _linear(self, theta: PyTree) -> Array:
        displacement = jax.tree.map(jnp.subtract, theta, self.theta0)
        return self.tilt @ ravel_pytree(displacement)[0]

    def align_loss(self, theta):
        return self.base.align_loss(theta)

    def align_increase(self, delta):
        return self.base.align_increase(delta)

    def task_loss(self, theta):
        return self.base.task_loss(theta) - self._linear(theta)

    def displaced_task_loss(self, delta):
        return self.base.displaced_task_loss(delta) - self.tilt @ ravel_pytree(delta)[0]

    def task_gradient(self, delta):
        flat, unravel = ravel_pytree(self.base.task_gradient(delta))
        return unravel(flat - self.tilt)

    def align_basis(self):
        return self.base.align_basis()

    def quadratic_task(self):
        quad = self.base.quadratic_task()
        return None if quad is None else (quad[0] - self.tilt, quad[1])


def tilt_overlap(landscape: Landscape, basis: Float[Array, "k d"], keep: float | Array) -> TiltedLandscape:
    """The tilted task whose gradient at theta0 keeps the fraction `keep` of its S-component.

    Args:
        landscape: any landscape.
        basis: `(k, d)` orthonormal rows spanning S (flat coordinates).
        keep: r in `L_F - (1 - r) (P_S g) . (theta - theta0)`; 0 removes the
            first-order overlap exactly, 1 leaves the task as it is.
    """
    zero = jax.tree.map(jnp.zeros_like, landscape.theta0)
    g = ravel_pytree(landscape.task_gradient(zero))[0]
    tilt = (1.0 - jnp.asarray(keep, g.dtype)) * (basis.T @ (basis @ g))
    return TiltedLandscape(theta0=landscape.theta0, base=landscape, tilt=tilt)
