"""Power iteration with deflation (the PyHessian algorithm), as a baseline.

Finds eigenpairs one at a time in order of decreasing |eigenvalue|: iterate
`v <- P A P v / ||.||` with `P = I - U U^T` projecting out the pairs already
found, until the residual `||A v - theta v|| <= tol |theta|`.  Simple and
memory-light (one vector), but each pair needs O(1/relative gap) products,
against O(1/sqrt(gap)) for Lanczos: use `eigsh` unless memory forbids it.
For an indefinite operator the order is by magnitude, so negative eigenvalues
can come before small positive ones (PSD operators: plain descending order).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import PRNGKeyArray

from geomsim.curvature._problem import flat_problem
from geomsim.curvature.lanczos import EigResult


def power_iteration(num_eigs: int, *, tol: float = 1e-6, max_iters: int = 1000, like: Any = None
                    ) -> Callable[..., EigResult]:
    """Build `solve(matvec, key, *params) -> EigResult` for the `num_eigs`
    largest-magnitude eigenpairs by deflated power iteration.

    Args:
        num_eigs: k >= 1 pairs, found in order.
        tol: relative residual target per pair (>= 0).
        max_iters: products per pair at most (>= 1); `converged` reports whether
            every pair met `tol` within it.
        like: the vector space for a plain matvec (see `flat_problem`).
    """
    if not isinstance(num_eigs, int) or num_eigs < 1:
        raise ValueError(f"num_eigs: must be an integer >= 1 (got {num_eigs!r})")
    if not tol >= 0:
        raise ValueError(f"tol: must be >= 0 (got {tol})")
    if max_iters < 1:
        raise ValueError(f"max_iters: must be >= 1 (got {max_iters})")

    def solve(matvec, key: PRNGKeyArray, *params) -> EigResult:
        prob = flat_problem(matvec, params, like, "power_iteration")
        d, dtype = prob.dim, prob.dtype
        if num_eigs > d:
            raise ValueError(f"num_eigs: must be <= d = {d} (got {num_eigs})")

        def project(U, v):
            return v - (U @ v) @ U

        def one_pair(i, carry):
            U, vals, res, nmv, ok = carry
            v = project(U, jax.random.normal(jax.random.fold_in(key, i), (d,), dtype))
            v = v / jnp.linalg.norm(v)

            def step(state):
                v, _, _, it = state
                w = project(U, prob.matvec(v))
                theta = v @ w
                r = jnp.linalg.norm(w - theta * v)
                return w / jnp.linalg.norm(w), theta, r, it + 1

            def cond(state):
                _, theta, r, it = state
                return (it < max_iters) & ~(r <= tol * jnp.abs(theta))

            big = jnp.asarray(jnp.inf, dtype)
            v, theta, r, it = jax.lax.while_loop(cond, step, step((v, big, big, 0)))
            # The last step normalised A v; theta, r belong to the previous v, close enough at convergence.
            return (U.at[i].set(v), vals.at[i].set(theta), res.at[i].set(r), nmv + it,
                    ok & (r <= tol * jnp.abs(theta)))

        init = (jnp.zeros((num_eigs, d), dtype), jnp.zeros((num_eigs,), dtype), jnp.zeros((num_eigs,), dtype),
                jnp.asarray(0), jnp.asarray(True))
        U, vals, res, nmv, ok = jax.lax.fori_loop(0, num_eigs, one_pair, init)
        ritz_range = jnp.stack([jnp.min(vals), jnp.max(vals)])
        return EigResult(vals, U, res, nmv, jnp.asarray(0), ok, ritz_range)

    return solve
