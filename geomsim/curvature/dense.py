"""Dense ground truth for the curvature operators (small models only).

Each matrix is built by a different route than the matrix-free product it
checks: `jax.hessian` of the flattened loss for H; explicit model Jacobians
(`jax.jacfwd`), output-space Hessians / Fishers and per-sample gradient
matrices (`jax.jacrev`) for the GGN and the Fishers.  O(d^2) memory and
O(d^2 N) time: for tests and tiny models.  Batch weights follow `as_batches`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PyTree

from geomsim.curvature.batches import as_batches
from geomsim.curvature.likelihoods import Likelihood, resolve_likelihood
from geomsim.curvature.operators import EmpiricalFisherOperator


def over_batches(batches, fn: Callable[[Any], Array]) -> Array:
    """`sum_b w_b fn(b)` over the batches (their weights), or `fn(None)` without batches: the
    dense references' mean over batches, as the matrix-free operators take it."""
    bs = as_batches(batches)
    if bs is None:
        return fn(None)
    items = [jax.tree.map(lambda x, i=i: x[i], bs.data) for i in range(bs.count)] if bs.stacked else list(bs.data)
    return sum(w * fn(b) for w, b in zip(bs.weights, items, strict=True))


def dense_hessian(loss: Callable, params: PyTree, batches: Any = None) -> Float[Array, "d d"]:
    """`(d, d)` Hessian of `loss(params, batch)` (mean over batches) by `jax.hessian`."""
    flat, unravel = ravel_pytree(params)

    def one(batch):
        f = (lambda x: loss(unravel(x))) if batch is None else (lambda x: loss(unravel(x), batch))
        return jax.hessian(f)(flat)

    return over_batches(batches, one)


def _jacobian(model_fn, params, inputs) -> tuple[Array, Array]:
    flat, unravel = ravel_pytree(params)
    outputs = model_fn(params, inputs)
    jac = jax.jacfwd(lambda x: model_fn(unravel(x), inputs).reshape(-1))(flat)
    return outputs, jac  # (O,), (O, d)


def dense_ggn(model_fn: Callable, loss_fn: Callable, params: PyTree, batches: Any) -> Float[Array, "d d"]:
    """`J^T H_out J` with the explicit Jacobian and the output Hessian of `loss_fn`."""

    def one(batch):
        inputs, targets = batch
        outputs, jac = _jacobian(model_fn, params, inputs)
        h_out = jax.hessian(lambda o: loss_fn(o.reshape(outputs.shape), targets))(outputs.reshape(-1))
        return jac.T @ h_out @ jac

    return over_batches(batches, one)


def dense_fisher(model_fn: Callable, params: PyTree, batches: Any, *,
                 likelihood: str | Likelihood = "categorical") -> Float[Array, "d d"]:
    """True Fisher `mean_i J_i^T F_out,i J_i` from explicit per-sample blocks."""
    lik = resolve_likelihood(likelihood)

    def one(batch):
        outputs, jac = _jacobian(model_fn, params, batch[0])
        event = outputs.shape[-1]
        blocks = lik.output_fisher_dense(outputs).reshape(-1, event, event)
        jac = jac.reshape(blocks.shape[0], event, -1)
        return jnp.einsum("nad,nab,nbe->de", jac, blocks, jac) / blocks.shape[0]

    return over_batches(batches, one)


def _per_sample_gradient_fisher(model_fn, per_sample_loss, params, inputs, draws) -> Array:
    flat, unravel = ravel_pytree(params)
    grads = jax.vmap(
        lambda y: jax.jacrev(lambda x: per_sample_loss(model_fn(unravel(x), inputs), y).reshape(-1))(flat)
    )(draws)  # (S, N, d)
    grads = grads.reshape(-1, flat.shape[0])
    return grads.T @ grads / grads.shape[0]


def dense_empirical_fisher(model_fn: Callable, params: PyTree, batches: Any, *,
                           likelihood: str | Likelihood | Callable = "categorical") -> Float[Array, "d d"]:
    """`G^T G / N` from the matrix G of per-sample gradients at the observed targets."""
    loss = likelihood if callable(likelihood) and not isinstance(likelihood, Likelihood) else \
        resolve_likelihood(likelihood).nll
    return over_batches(
        batches, lambda b: _per_sample_gradient_fisher(model_fn, loss, params, b[0], jnp.asarray(b[1])[None])
    )


def dense_operator_fisher(op: EmpiricalFisherOperator) -> Float[Array, "d d"]:
    """Dense per-sample-gradient Fisher at the very targets an empirical or
    Monte-Carlo Fisher operator holds (its sampled draws included)."""
    return over_batches(
        op.batches, lambda b: _per_sample_gradient_fisher(op.model_fn, op.per_sample_loss, op.params, b[0], b[1])
    )
