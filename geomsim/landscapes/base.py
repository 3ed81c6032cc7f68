"""The landscape protocol: an aligned starting point and two losses.

A landscape is an `equinox.Module` (hence a pytree) holding the aligned
parameters `theta0` (any pytree) and two pure scalar functions of parameters:
the alignment loss `L_A` and the benign fine-tuning loss `L_F`.  Everything in
geomsim (dynamics, Taylor theory, fits, the sweep) only needs this protocol, so a
user's own model becomes a landscape by subclassing `Landscape` or by wrapping
two functions with `FunctionLandscape`.

Optional hooks a landscape may override when it knows better:

* `align_increase(delta)`: `L_A(theta0 + delta) - L_A(theta0)` computed without
  cancellation (the early-time signal is ~1e-9 of an O(1) loss);
* `align_basis()`: orthonormal rows `(k, d)` spanning the alignment subspace S,
  in flattened-parameter coordinates (the one basis convention of geomsim:
  curvature, theory, defenses, landscapes, dynamics and the testbed);
* `quadratic_task()`: `(g, H_F)` when `L_F` is exactly quadratic, which lets
  gradient flow be solved in closed form;
* `task_gradient(delta)`: `grad L_F(theta0 + delta)`, if cheaper than autodiff
  (it is the inner loop of every optimizer).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PyTree


class Landscape(eqx.Module):
    """Abstract alignment/fine-tuning landscape.

    Subclasses must define a field (or property) `theta0` and the methods
    `align_loss` and `task_loss`, each mapping a parameter pytree shaped like
    `theta0` to a scalar loss (nats, or whatever unit the losses use).
    """

    theta0: eqx.AbstractVar[PyTree]

    @abc.abstractmethod
    def align_loss(self, theta: PyTree) -> Float[Array, ""]:
        """Alignment loss `L_A(theta)` (scalar)."""

    @abc.abstractmethod
    def task_loss(self, theta: PyTree) -> Float[Array, ""]:
        """Benign fine-tuning loss `L_F(theta)` (scalar)."""

    def align_increase(self, delta: PyTree) -> Float[Array, ""]:
        """`Delta L_A = L_A(theta0 + delta) - L_A(theta0)` for a displacement pytree."""
        theta = jax.tree.map(jnp.add, self.theta0, delta)
        return self.align_loss(theta) - self.align_loss(self.theta0)

    def align_basis(self) -> Float[Array, "k d"] | None:
        """Orthonormal rows `(k, d)` spanning the alignment subspace S, or None if unknown."""
        return None

    def quadratic_task(self) -> tuple[Float[Array, " d"], Float[Array, "d d"]] | None:
        """`(g, H_F)` in flat coordinates if `L_F` is exactly quadratic, else None."""
        return None

    def displaced_task_loss(self, delta: PyTree) -> Float[Array, ""]:
        """`L_F(theta0 + delta)`: the task loss as a function of the displacement."""
        return self.task_loss(jax.tree.map(jnp.add, self.theta0, delta))

    def task_gradient(self, delta: PyTree) -> PyTree:
        """`grad L_F(theta0 + delta)` (a pytree like `delta`); override with a cheaper closed form."""
        return jax.grad(self.displaced_task_loss)(delta)


class FunctionLandscape(Landscape):
    """Wrap two plain functions `(theta) -> scalar` and a starting point.

    Example:
        >>> land = FunctionLandscape(theta0=params, align_fn=refusal_loss,
        ...                          task_fn=task_loss)

    `basis` optionally gives S as `(k, d)` orthonormal rows (flat coordinates).
    """

    theta0: PyTree
    align_fn: Callable[[PyTree], Array] = eqx.field(static=True)
    task_fn: Callable[[PyTree], Array] = eqx.field(static=True)
    basis: Array | None = None

    def align_loss(self, theta):
        return self.align_fn(theta)

    def task_loss(self, theta):
        return self.task_fn(theta)

    def align_basis(self):
        return self.basis


def flat_dim(landscape: Landscape) -> int:
    """Number of scalar parameters `d` of the landscape."""
    return int(ravel_pytree(landscape.theta0)[0].size)


def flatten_displacement(landscape: Landscape) -> tuple[Array, Callable[[Array], Any]]:
    """Return `(zeros(d), unravel)` for writing displacements as flat vectors."""
    flat0, unravel = ravel_pytree(landscape.theta0)
    return jnp.zeros_like(flat0), unravel


def dense_alignment_basis(landscape: Landscape, rank: int) -> Float[Array, "k d"]:
    """Top-`rank` eigenvectors of the dense alignment Hessian at `theta0`, as rows `(k, d)`.

    Ground-truth path for small problems (`d` up to a few thousand); large models
    use the matrix-free curvature engine instead.
    """
    zero, unravel = flatten_displacement(landscape)
    hess = jax.hessian(lambda x: landscape.align_increase(unravel(x)))(zero)
    _, vecs = jnp.linalg.eigh(0.5 * (hess + hess.T))
    return vecs[:, ::-1][:, :rank].T


def subspace_basis(landscape: Landscape, rank: int) -> Float[Array, "k d"]:
    """The landscape's own S rows `(k, d)` if it has them, else the dense top-`rank` ones."""
    basis = landscape.align_basis()
    if basis is None:
        basis = dense_alignment_basis(landscape, rank)
    return basis
