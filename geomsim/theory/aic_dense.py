"""Dense ground-truth measurement of the AIC quantities (small landscapes).

Builds `H_A`, `g`, `H_F` with `jax.hessian` / `jax.grad` at `theta0` and reads
off the Alignment Instability Condition with S = top-k eigenvectors of `H_A`.
This is the reference the matrix-free curvature engine is tested against; it
needs O(d^2) memory and O(d^3) time.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from geomsim.landscapes.base import Landscape, flatten_displacement


class DenseAIC(eqx.Module):
    """AIC quantities from dense matrices (Hessian convention).

    sharpness: lambda_k, the k-th largest eigenvalue of H_A.
    mu: the (k+1)-th largest eigenvalue of H_A (largest outside S).
    eps: `||P_S g|| / ||g||`.
    coupling: gamma = `||P_S H_F g||`.
    grad_norm: `||g||`.
    c2, c4: `(1/2) g^T H_A g` and `(1/8) (H_F g)^T H_A (H_F g)`.
    spectral_norm: `max |eig(H_A)|` (sets the round-off floor of `Delta L_A`).
    basis: `(d, k)` top-k eigenvectors of H_A.
    """

    sharpness: Float[Array, ""]
    mu: Float[Array, ""]
    eps: Float[Array, ""]
    coupling: Float[Array, ""]
    grad_norm: Float[Array, ""]
    c2: Float[Array, ""]
    c4: Float[Array, ""]
    spectral_norm: Float[Array, ""]
    basis: Float[Array, "d k"]


def dense_matrices(landscape: Landscape) -> tuple[Array, Array, Array]:
    """`(H_A, g, H_F)` at `theta0` in flat coordinates, by autodiff."""
    zero, unravel = flatten_displacement(landscape)

    def align(x):
        return landscape.align_increase(unravel(x))

    def task(x):
        return landscape.displaced_task_loss(unravel(x))

    hess_align = jax.hessian(align)(zero)
    grad_task = jax.grad(task)(zero)
    hess_task = jax.hessian(task)(zero)
    return hess_align, grad_task, hess_task


def dense_aic(landscape: Landscape, rank: int) -> DenseAIC:
    """Measure the AIC of `landscape` with an alignment subspace of dimension `rank`."""
    hess_align, g, hess_task = dense_matrices(landscape)
    evals, evecs = jnp.linalg.eigh(0.5 * (hess_align + hess_align.T))
    evals, evecs = evals[::-1], evecs[:, ::-1]
    basis = evecs[:, :rank]
    mu = evals[rank] if rank < evals.shape[0] else jnp.zeros((), evals.dtype)
    gnorm = jnp.linalg.norm(g)
    hg = hess_task @ g
    return DenseAIC(
        sharpness=evals[rank - 1],
        mu=mu,
        eps=jnp.linalg.norm(basis.T @ g) / gnorm,
        coupling=jnp.linalg.norm(basis.T @ hg),
        grad_norm=gnorm,
        c2=0.5 * g @ (hess_align @ g),
        c4=0.125 * hg @ (hess_align @ hg),
        spectral_norm=jnp.max(jnp.abs(evals)),
        basis=basis,
    )

