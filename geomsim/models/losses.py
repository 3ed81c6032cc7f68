"""Losses in the `loss(outputs, targets)` form the curvature operators take, and a
chunked cross-entropy for language models whose logits do not fit at once."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from geomsim.chunking import chunk_rows


def token_nll(logits: Float[Array, "... C"], targets: Int[Array, "..."]) -> Float[Array, "..."]:
    """Per-sample negative log-likelihood `-log softmax(logits)[target]` (nats)."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


def cross_entropy(logits: Float[Array, "... C"], targets: Int[Array, "..."]) -> Float[Array, ""]:
    """Mean cross-entropy over every leading axis (nats per sample)."""
    return jnp.mean(token_nll(logits, targets))


def squared_error(outputs: Float[Array, "... D"], targets: Float[Array, "... D"]) -> Float[Array, ""]:
    """`mean over samples of (1/2) ||outputs - targets||^2` (last axis = output dim)."""
    return 0.5 * jnp.mean(jnp.sum((outputs - targets) ** 2, axis=-1))


def next_token_batch(tokens: Int[Array, "... T"]) -> tuple[Array, Array]:
    """`(inputs, targets)` for next-token prediction: `tokens[..., :-1]`, `tokens[..., 1:]`."""
    return tokens[..., :-1], tokens[..., 1:]


def chunked_cross_entropy(hidden: Float[Array, "N D"], unembed, targets: Int[Array, " N"],
                          chunk: int) -> Float[Array, ""]:
    """`cross_entropy(unembed(hidden), targets)` without holding the `(N, vocab)` logits:
    positions go through `unembed` and the log-softmax `chunk` at a time (`lax.map`),
    each chunk rematerialised in the backward pass (`jax.checkpoint`), so every
    derivative of the loss (gradient, Hessian-vector product) holds one chunk's
    `(chunk, vocab)` buffers at a time.  The log-softmax runs in float32 or wider.
    """
    n = targets.shape[0]
    (h, t), m = chunk_rows((hidden, targets), chunk)

    @jax.checkpoint
    def one(args):
        hc, tc, mc = args
        logits = unembed(hc)
        logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
        return jnp.sum(jnp.where(mc, token_nll(logits, tc), 0.0))

    return jnp.sum(jax.lax.map(one, (h, t, m))) / n
