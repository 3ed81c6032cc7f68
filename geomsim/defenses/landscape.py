"""Build a defense by name for a `Landscape` (what the sweep's `--defense` runs)."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PRNGKeyArray

from geomsim.curvature import eigsh, hessian_operator
from geomsim.defenses.curvature_aware import curvature_projection
from geomsim.defenses.projection import static_projection, tracked_projection
from geomsim.landscapes.base import Landscape

DEFENSES = ("none", "static_projection", "tracked_projection", "curvature_projection")


class LandscapeDefense(eqx.Module):
    """A defense built for one landscape.

    transform: the optax transformation (chain it after the optimizer).
    basis: `(m, d)` rows projected off at the first update (zero rows for `none`).
    """

    transform: optax.GradientTransformation = eqx.field(static=True)
    basis: Float[Array, "m d"]

    def projector(self) -> Callable[[Array], Array]:
        """`v -> v - B^T B v` with the first update's basis: the exact flow of a static
        defense, and of a tracked one until its first re-estimate (for Taylor laws)."""
        return lambda v: v - self.basis.T @ (self.basis @ v)


def build_defense(
    name: str,
    landscape: Landscape,
    *,
    rank: int,
    key: PRNGKeyArray,
    every: int = 10,
    growth: int = 1,
    tol: float = 1e-10,
) -> LandscapeDefense:
    """The defense `name` (one of `DEFENSES`) for `landscape`.

    S0 is measured, not read off the landscape: top-`rank` Lanczos eigenvectors
    of the alignment Hessian at theta0 (tolerance `tol`), as a defender would.

    Args:
        name: `none`, `static_projection`, `tracked_projection` (re-solved every
            `every` updates, `rank` directions), `curvature_projection` (S0 plus
            `growth` growth directions).
        landscape: the landscape (theta0, align_loss, task gradient).
        rank: directions in S0 (and tracked by `tracked_projection`).
        key: PRNG key for the Lanczos solves.
    """
    if name not in DEFENSES:
        raise ValueError(f"defense: must be one of {', '.join(DEFENSES)} (got {name!r})")
    theta0 = landscape.theta0
    dim = ravel_pytree(theta0)[0].shape[0]
    dtype = ravel_pytree(theta0)[0].dtype

    def align_loss(params):  # a plain function: a bound method of a Module would carry arrays into a static field
        return landscape.align_loss(params)

    def operator_at(params):
        return hessian_operator(align_loss, params)

    k_s0, k_more = jax.random.split(key)
    krylov = min(dim, max(2 * rank + 1, 20))
    if name == "none":
        return LandscapeDefense(optax.identity(), jnp.zeros((1, dim), dtype))
    if name == "tracked_projection":
        # The initial solve is done once here (the same key `init` would use) and handed to the
        # transformation, so `init` does not repeat it.
        first = eigsh(rank, tol=tol, krylov_dim=krylov)(operator_at(theta0), jax.random.split(k_more)[0])
        transform = tracked_projection(operator_at, rank, every, k_more, tol=tol, krylov_dim=krylov, first=first)
        return LandscapeDefense(transform, transform.init(theta0).basis)
    s0 = eigsh(rank, tol=tol, krylov_dim=krylov)(operator_at(theta0), k_s0).eigenvectors
    if name == "static_projection":
        return LandscapeDefense(static_projection(s0), s0)
    task_gradient = jax.grad(landscape.task_loss)(theta0)
    transform, union, _ = curvature_projection(operator_at, theta0, task_gradient, s0, growth, k_more, tol=tol,
                                               krylov_dim=min(dim, max(2 * growth + 1, 20)))
    return LandscapeDefense(transform, union)
