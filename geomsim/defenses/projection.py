"""Projection defenses: remove an update's component in a subspace.

Each defense is an `optax.GradientTransformation` chained after the optimizer,
`optax.chain(optimizer, defense)`, so the step that is applied has no component
in the subspace (chained before, an adaptive optimizer such as Adam rescales
the projected gradient back into it; for plain gradient descent the two orders
agree). Bases are `(k, d)`
orthonormal rows over the flattened parameters, the curvature engine's
convention (`EigResult.eigenvectors`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree

from geomsim.curvature import CurvatureOperator, EigResult, eigsh


def project_off(basis: Float[Array, "k d"], tree: PyTree) -> PyTree:
    """`tree - B^T B tree` on the flattened pytree (B: orthonormal rows, or zero rows)."""
    flat, unravel = ravel_pytree(tree)
    basis = basis.astype(flat.dtype)
    return unravel(flat - basis.T @ (basis @ flat))


def sharp_rows(eigenvalues: Float[Array, " k"], eigenvectors: Float[Array, "k d"], rtol: float) -> Float[Array, "k d"]:
    """Zero the eigenvectors whose eigenvalue is not above `rtol * max |eigenvalue|`.

    A flat (zero-curvature) direction is not part of the sharp subspace; where the
    spectrum is degenerate Lanczos returns an arbitrary vector of it, and
    projecting that off would bend the path for no reason (it can even feed a
    direction that matters). Zero rows keep the shape static.
    """
    scale = jnp.max(jnp.abs(eigenvalues))
    keep = eigenvalues > rtol * scale
    return jnp.where(keep[:, None], eigenvectors, 0.0)


def static_projection(basis: Float[Array, "k d"]) -> optax.GradientTransformation:
    """Remove the component in S0 = span(basis) from every update (measured once, at theta0)."""

    def update(updates, state, params=None):
        del params
        return project_off(basis, updates), state

    return optax.GradientTransformation(lambda _params: optax.EmptyState(), update)


class TrackedProjectionState(NamedTuple):
    """basis: current `(k, d)` S estimate; count: updates seen; key: for the Lanczos
    starts; num_matvecs: operator products spent so far (the defense's overhead)."""

    basis: Float[Array, "k d"]
    count: Int[Array, ""]
    key: PRNGKeyArray
    num_matvecs: Int[Array, ""]


def tracked_projection(
    operator_at: Callable[[PyTree], CurvatureOperator],
    rank: int,
    every: int,
    key: PRNGKeyArray,
    rtol: float = 1e-8,
    first: EigResult | None = None,
    **eigsh_options: Any,
) -> optax.GradientTransformation:
    """Project every update off the current top-`rank` alignment eigenspace, re-estimated
    every `every` updates by Lanczos warm-started from the previous basis.

    Args:
        operator_at: `params -> CurvatureOperator` of the alignment loss (Hessian,
            GGN or Fisher at those parameters).
        rank: k >= 1 directions projected off.
        every: K >= 1; the basis is re-solved at updates K, 2K, ... (update 0
            uses the basis solved at the initial parameters by `init`).
        key: PRNG key for the Lanczos start vectors.
        rtol: directions with eigenvalue <= rtol * (largest) are not projected
            off (see `sharp_rows`).
        first: the solve at the initial parameters, when the caller already has it
            (`init` then reuses it instead of solving again).
        eigsh_options: `tol`, `krylov_dim`, `max_matvecs` of `geomsim.curvature.eigsh`.
    """
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank: must be an integer >= 1 (got {rank!r})")
    if not isinstance(every, int) or every < 1:
        raise ValueError(f"every: must be an integer >= 1 (got {every!r})")
    solve = eigsh(rank, **eigsh_options)

    def init(params):
        k0, k_rest = jax.random.split(key)
        start = first if first is not None else solve(operator_at(params), k0)
        basis = sharp_rows(start.eigenvalues, start.eigenvectors, rtol)
        return TrackedProjectionState(basis, jnp.zeros((), jnp.int32), k_rest, start.num_matvecs)

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("tracked_projection: needs params in update(updates, state, params)")
        count = state.count + 1
        k_solve, k_next = jax.random.split(state.key)

        def resolve(_):
            # Warm start from the previous basis (zero rows add nothing to the start block).
            res = solve(operator_at(params), k_solve, v0=state.basis)
            basis = sharp_rows(res.eigenvalues, res.eigenvectors, rtol).astype(state.basis.dtype)
            return basis, res.num_matvecs.astype(state.num_matvecs.dtype)

        def keep(_):
            return state.basis, jnp.zeros_like(state.num_matvecs)

        refresh = (state.count > 0) & (state.count % every == 0)
        basis, used = jax.lax.cond(refresh, resolve, keep, None)
        new_state = TrackedProjectionState(basis, count, k_next, state.num_matvecs + used)
        return project_off(basis, updates), new_state

    return optax.GradientTransformation(init, update)
