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
from jax.flatten_util import ravel_pytree
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
    basis: `(k, d)` top-k eigenvectors of H_A (rows).
    """

    sharpness: Float[Array, ""]
    mu: Float[Array, ""]
    eps: Float[Array, ""]
    coupling: Float[Array, ""]
    grad_norm: Float[Array, ""]
    c2: Float[Array, ""]
    c4: Float[Array, ""]
    spectral_norm: Float[Array, ""]
    basis: Float[Array, "k d"]


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
    basis = evecs[:, :rank].T
    mu = evals[rank] if rank < evals.shape[0] else jnp.zeros((), evals.dtype)
    gnorm = jnp.linalg.norm(g)
    hg = hess_task @ g
    return DenseAIC(
        sharpness=evals[rank - 1],
        mu=mu,
        eps=jnp.linalg.norm(basis @ g) / gnorm,
        coupling=jnp.linalg.norm(basis @ hg),
        grad_norm=gnorm,
        c2=0.5 * g @ (hess_align @ g),
        c4=0.125 * hg @ (hess_align @ hg),
        spectral_norm=jnp.max(jnp.abs(evals)),
        basis=basis,
    )



class DenseModelAIC(eqx.Module):
    """Dense reference for `geomsim.theory.aic.aic` on a small model.

    eigenvalues: `(d,)` of the alignment operator, descending; basis `(k, d)`;
    sharpness, mu, eps, coupling, coupling_fisher (F = the operator on S),
    grad_norm; taylor `(5,)` = (0, c1, c2, c3, c4 leading term), from dense
    `H_A`, `H_F` and, with `third_order`, the dense third-derivative tensors.
    """

    eigenvalues: Float[Array, " d"]
    basis: Float[Array, "k d"]
    sharpness: Float[Array, ""]
    mu: Float[Array, ""]
    eps: Float[Array, ""]
    coupling: Float[Array, ""]
    coupling_fisher: Float[Array, ""]
    grad_norm: Float[Array, ""]
    taylor: Float[Array, " 5"]


def dense_model_aic(align_loss, task_loss, params, batches=None, *, k: int, operator_matrix: Array | None = None,
                    third_order: bool = True) -> DenseModelAIC:
    """Dense AIC of `L_A(params, batch)`, `L_F(params, batch)` (O(d^3); tests only).

    `operator_matrix` replaces the alignment Hessian as the matrix that defines
    S and the spectrum (e.g. a dense GGN or Fisher), as `operator=` does in `aic`.
    """
    from geomsim.curvature.dense import dense_hessian, over_batches

    flat0, unravel = ravel_pytree(params)

    def flat_loss(loss, batch):
        return (lambda x: loss(unravel(x))) if batch is None else (lambda x: loss(unravel(x), batch))

    hess_a = dense_hessian(align_loss, params, batches)
    hess_f = dense_hessian(task_loss, params, batches)
    g = over_batches(batches, lambda b: jax.grad(flat_loss(task_loss, b))(flat0))
    ga = over_batches(batches, lambda b: jax.grad(flat_loss(align_loss, b))(flat0))
    a = hess_a if operator_matrix is None else operator_matrix
    evals, evecs = jnp.linalg.eigh(0.5 * (a + a.T))
    evals, evecs = evals[::-1], evecs[:, ::-1]
    basis = evecs[:, :k].T
    hg = hess_f @ g
    coords = basis @ hg
    if third_order:
        t_a = over_batches(batches, lambda b: jax.jacfwd(jax.hessian(flat_loss(align_loss, b)))(flat0))
        t_f = over_batches(batches, lambda b: jax.jacfwd(jax.hessian(flat_loss(task_loss, b)))(flat0))
        t_a_ggg = jnp.einsum("ijk,i,j,k->", t_a, g, g, g)
        d3f_gg = jnp.einsum("ijk,j,k->i", t_f, g, g)
    else:
        t_a_ggg = jnp.zeros((), flat0.dtype)
        d3f_gg = jnp.zeros_like(flat0)
    c1 = -ga @ g
    c2 = 0.5 * g @ hess_a @ g + 0.5 * ga @ hg
    c3 = -0.5 * g @ hess_a @ hg - t_a_ggg / 6.0 - ga @ (hess_f @ hg + d3f_gg) / 6.0
    c4 = 0.125 * hg @ hess_a @ hg
    gnorm = jnp.linalg.norm(g)
    return DenseModelAIC(
        eigenvalues=evals,
        basis=basis,
        sharpness=evals[k - 1],
        mu=evals[k],
        eps=jnp.linalg.norm(basis @ g) / gnorm,
        coupling=jnp.linalg.norm(coords),
        coupling_fisher=jnp.sqrt(jnp.maximum(jnp.sum(evals[:k] * coords**2), 0.0)),
        grad_norm=gnorm,
        taylor=jnp.stack([jnp.zeros((), flat0.dtype), c1, c2, c3, c4]),
    )
