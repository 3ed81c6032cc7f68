"""A curvature-aware projection: project off S0 and the directions where the
alignment curvature is growing along the fine-tuning path.

Static projection fails when the path makes a NEW direction sharp (one outside
S0 at theta0). To first order in t the alignment curvature along the path is
`H_A(theta0 + t u) = H_A(theta0) + t D^3 L_A(theta0)[u]`, with `u` the initial
(projected) descent direction, so the directions that become sharp first are
the top eigenvectors of the growth operator `G = D^3 L_A(theta0)[u]`. The
defense measures them once, matrix-free (a Jacobian-vector product of the
alignment curvature's products: about two HVPs per product), and projects off
`span(S0, top-r of G)`. See docs/theory.md, "Defenses".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from geomsim.curvature import CurvatureOperator, EigResult, eigsh
from geomsim.defenses.projection import sharp_rows, static_projection


def growth_directions(
    operator_at: Callable[[PyTree], CurvatureOperator],
    params: PyTree,
    direction: PyTree,
    num: int,
    key: PRNGKeyArray,
    **eigsh_options: Any,
) -> EigResult:
    """Top-`num` eigenpairs of `d/ds operator_at(params + s direction)` at s = 0.

    Units: operator units per parameter unit of `direction` (normalise it to get
    the growth rate of the curvature per unit distance along the path).
    """

    def growth_mv(v):
        return jax.jvp(lambda p: operator_at(p).mv(v), (params,), (direction,))[1]

    return eigsh(num, like=params, **eigsh_options)(growth_mv, key)


def orthonormal_union(first: Float[Array, "k d"], second: Float[Array, "r d"], rtol: float = 1e-6
                      ) -> Float[Array, "kr d"]:
    """Orthonormal rows spanning both sets (Gram-Schmidt of `second` against `first`).

    A row of `second` already (numerically) inside the span becomes a zero row,
    so the shape stays static and the projection `v - B^T B v` is unchanged by it.
    """
    rows = [first]
    basis = first
    for i in range(second.shape[0]):
        v = second[i] - basis.T @ (basis @ second[i])
        v = v - basis.T @ (basis @ v)  # twice is enough (Kahan-Parlett)
        norm = jnp.linalg.norm(v)
        inside = norm <= rtol * jnp.linalg.norm(second[i])  # also true for a zero row
        row = jnp.where(inside, 0.0, v / jnp.where(inside, 1.0, norm))
        rows.append(row[None])
        basis = jnp.concatenate(rows)
    return basis


def curvature_projection(
    operator_at: Callable[[PyTree], CurvatureOperator],
    params: PyTree,
    task_gradient: PyTree,
    basis: Float[Array, "k d"],
    num_growth: int,
    key: PRNGKeyArray,
    rtol: float = 1e-8,
    **eigsh_options: Any,
) -> tuple[optax.GradientTransformation, Float[Array, "m d"], EigResult]:
    """The curvature-aware defense, measured at `params` (theta0).

    Args:
        operator_at: `params -> CurvatureOperator` of the alignment loss.
        params: theta0.
        task_gradient: `grad L_F(theta0)`; the path starts along `-P grad`, with
            P the projection off S0.
        basis: S0, `(k, d)` orthonormal rows (e.g. top-k Lanczos at theta0).
        num_growth: r >= 1 growth directions added.
        key: PRNG key for the growth solve.
        rtol: growth directions with rate <= rtol * (largest |rate|), i.e. not
            growing, are not added.

    Returns:
        `(defense, union basis (k + r, d), growth EigResult)`.
    """
    flat_g, unravel = ravel_pytree(task_gradient)
    basis = basis.astype(flat_g.dtype)
    step = -(flat_g - basis.T @ (basis @ flat_g))
    direction = unravel(step / jnp.linalg.norm(step))
    growth = growth_directions(operator_at, params, direction, num_growth, key, **eigsh_options)
    growing = sharp_rows(growth.eigenvalues, growth.eigenvectors, rtol).astype(basis.dtype)
    union = orthonormal_union(basis, growing)
    return static_projection(union), union, growth
