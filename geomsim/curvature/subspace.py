"""Subspace arithmetic for the alignment subspace S (flat coordinates).

A basis is `(k, d)` with orthonormal rows (as `EigResult.eigenvectors`).
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float, Int


def project(basis: Float[Array, "k d"], v: Float[Array, " d"]) -> Float[Array, " d"]:
    """`P_S v = U^T U v`."""
    return (basis @ v) @ basis


def overlap_score(basis: Float[Array, "k d"], update: Float[Array, " d"]) -> Float[Array, ""]:
    """Fraction of an update's squared norm inside S: `||P_S u||^2 / ||u||^2` in [0, 1]
    (the overlap score of the paper; 0 for an update orthogonal to S)."""
    coords = basis @ update
    total = update @ update
    return jnp.where(total > 0, (coords @ coords) / jnp.where(total > 0, total, 1.0), 0.0)


def subspace_overlap(a: Float[Array, "k d"], b: Float[Array, "k d"]) -> Float[Array, ""]:
    """`||A B^T||_F^2 / k` in [0, 1]: 1 when two k-dim subspaces coincide
    (the mean squared cosine of their principal angles)."""
    return jnp.sum((a @ b.T) ** 2) / a.shape[0]


def gap_rank(eigenvalues: Float[Array, " n"], *, rtol: float | None = None) -> Int[Array, ""]:
    """Number of eigenvalues above the largest relative gap of a descending spectrum.

    The gaps are measured on a log scale, `log(lambda_j / lambda_{j+1})`, with
    every eigenvalue first floored at `rtol * |lambda_1|` (default
    `sqrt(eps)`, the noise level of computed eigenvalues), so that a sharp
    subspace above a flat, zero or negative bulk gives one dominant gap.
    Returns j* = argmax_j gap_j (1-based), i.e. the detected rank k of S, in
    [1, n - 1]; a spectrum with no gap at all (all equal) gives 1.  Only the
    eigenvalues passed are looked at: pass more than the expected rank.
    """
    lam = jnp.asarray(eigenvalues)
    if lam.shape[0] < 2:
        return jnp.asarray(lam.shape[0])
    rtol = float(jnp.finfo(lam.dtype).eps) ** 0.5 if rtol is None else rtol
    floor = jnp.maximum(rtol * jnp.abs(lam[0]), jnp.finfo(lam.dtype).tiny)
    logs = jnp.log(jnp.maximum(lam, floor))
    return jnp.argmax(logs[:-1] - logs[1:]) + 1
