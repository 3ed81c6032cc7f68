"""Shared plumbing of the algorithms: turn `(matvec, *params)` plus an
optional `like` into a flat matvec with a known dimension and dtype."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from geomsim.curvature.operators import CurvatureOperator


class FlatProblem:
    """A flat symmetric matvec `A(v)` on `R^d` with its tags (trace-time object)."""

    def __init__(self, matvec: Callable[[jax.Array], jax.Array], dim: int, dtype: Any, psd: bool,
                 unravel: Callable[[jax.Array], Any]):
        self.matvec = matvec
        self.dim = dim
        self.dtype = dtype
        self.psd = psd
        self.unravel = unravel


def flat_problem(matvec: Any, params: tuple, like: Any, where: str) -> FlatProblem:
    """Resolve the `(matvec, *params)` calling convention (see the algorithms' docs).

    * `matvec` is a `CurvatureOperator`: it is the matrix (no params allowed);
    * `matvec(v, op)` with `op` a `CurvatureOperator` as the only param and no
      `like`: shapes and tags come from `op` (this is how to vmap over models);
    * otherwise `like` (a pytree or `jax.ShapeDtypeStruct`) gives the vector space.
    """
    for candidate in (matvec, *params[:1]):
        if isinstance(candidate, CurvatureOperator) and not candidate.symmetric:
            raise ValueError(f"{where}: the operator is not tagged symmetric; these algorithms need a symmetric one")
    if isinstance(matvec, CurvatureOperator):
        if params:
            raise ValueError(f"{where}: a CurvatureOperator takes no extra params (got {len(params)})")
        op = matvec
        return FlatProblem(op.mv_flat, op.dim, op.dtype, bool(op.psd), op.unravel)
    if like is None and len(params) == 1 and isinstance(params[0], CurvatureOperator):
        op = params[0]
        return FlatProblem(lambda v: op.ravel(matvec(op.unravel(v), op)), op.dim, op.dtype, bool(op.psd),
                           op.unravel)
    if like is None:
        raise ValueError(f"{where}: like is required for a plain matvec (a pytree or ShapeDtypeStruct shaped like v)")
    leaves = jax.tree.leaves(like)
    if not leaves:
        raise ValueError(f"{where}: like has no array leaves")
    if all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves):
        like = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), like)
    flat, unravel = ravel_pytree(like)

    def flat_mv(v):
        return ravel_pytree(matvec(unravel(v), *params))[0]

    return FlatProblem(flat_mv, int(flat.shape[0]), flat.dtype, False, unravel)
