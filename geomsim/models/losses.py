"""Losses in the `loss(outputs, targets)` form the curvature operators take."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int


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
