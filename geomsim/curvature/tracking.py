"""Track the top eigenspace of a curvature operator along a trajectory.

At every point of a path `params_t` the top-k eigenpairs are re-solved,
warm-started from the previous point's eigenvectors (the Krylov space then
starts almost inside the wanted subspace and converges in a fraction of a cold
solve's products when the operator moves slowly).  One `lax.scan`, jit and
vmap friendly; reports how far S rotated between consecutive points.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, PyTree

from geomsim.curvature.lanczos import eigsh
from geomsim.curvature.subspace import subspace_overlap


class EigenTrack(eqx.Module):
    """Top eigenpairs along a path of T points.

    eigenvalues: `(T, k)` descending.
    residuals: `(T, k)` residual norms.
    num_matvecs: `(T,)` products per point.
    converged: `(T,)`.
    overlap: `(T,)` `subspace_overlap(S_t, S_{t-1})` (1 at t = 0): how much of S stayed.
    eigenvectors: `(k, d)` at the last point (or `(T, k, d)` with `keep_vectors=True`).
    """

    eigenvalues: Float[Array, "T k"]
    residuals: Float[Array, "T k"]
    num_matvecs: Int[Array, " T"]
    converged: Bool[Array, " T"]
    overlap: Float[Array, " T"]
    eigenvectors: Float[Array, "..."]


def track_eigenspace(num_eigs: int, *, warm_start: bool = True, keep_vectors: bool = False,
                     **eigsh_options: Any) -> Callable[..., EigenTrack]:
    """Build `track(matvec, key, params_path) -> EigenTrack`.

    `matvec(v, params_t)` is the operator at one point; `params_path` is a pytree
    whose leaves carry a leading axis of T points (e.g. a saved trajectory);
    `like` in `eigsh_options` gives the vector space (or pass a function that
    returns a `CurvatureOperator`: `matvec(v, params_t) = make_op(params_t).mv(v)`).

    Args:
        num_eigs: k >= 1.
        warm_start: start each solve from the previous eigenvectors (False: cold
            random starts, for comparison).
        keep_vectors: return the eigenvectors at every point (memory T k d).
        eigsh_options: `which`, `tol`, `krylov_dim`, `max_matvecs`, `keep`, `like`.
    """
    solve = eigsh(num_eigs, **eigsh_options)

    def track(matvec, key: PRNGKeyArray, params_path: PyTree) -> EigenTrack:
        first = jax.tree.map(lambda x: x[0], params_path)
        k0, k_rest = jax.random.split(key)
        res0 = solve(matvec, k0, first)
        rest = jax.tree.map(lambda x: x[1:], params_path)
        n_rest = jax.tree.leaves(params_path)[0].shape[0] - 1
        keys = jax.random.split(k_rest, max(n_rest, 1))[:n_rest]

        def step(prev, item):
            params_t, k = item
            res = solve(matvec, k, params_t, v0=prev if warm_start else None)
            out = (res.eigenvalues, res.residuals, res.num_matvecs, res.converged,
                   subspace_overlap(res.eigenvectors, prev), res.eigenvectors if keep_vectors else None)
            return res.eigenvectors, out

        last, (vals, resid, nmv, conv, ovl, vecs) = jax.lax.scan(step, res0.eigenvectors, (rest, keys))

        def cat(a, b):
            return jnp.concatenate([a[None], b])

        one = jnp.ones((), res0.eigenvalues.dtype)
        vectors = cat(res0.eigenvectors, vecs) if keep_vectors else last
        return EigenTrack(
            eigenvalues=cat(res0.eigenvalues, vals),
            residuals=cat(res0.residuals, resid),
            num_matvecs=cat(res0.num_matvecs, nmv),
            converged=cat(res0.converged, conv),
            overlap=cat(one, ovl),
            eigenvectors=vectors,
        )

    return track
