"""Small equinox layers that accept any number of leading batch axes.

`equinox.nn.Linear` and friends act on one example and need `vmap` for a
batch; these act on `(..., features)` directly, which keeps model code free of
`vmap` plumbing and makes the parameter layout identical to PyTorch's
(`Linear.weight` is `(out, in)`), so twins in other frameworks copy weights
one to one.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray


class Linear(eqx.Module):
    """Affine map `x @ weight.T + bias` on `(..., in_features)`.

    weight: `(out_features, in_features)`; bias: `(out_features,)` or None.
    """

    weight: Float[Array, "out in"]
    bias: Float[Array, " out"] | None

    def __init__(self, in_features: int, out_features: int, *, key: PRNGKeyArray, use_bias: bool = True,
                 std: float | None = None, dtype=None):
        dtype = dtype or jnp.zeros(()).dtype
        k_w, k_b = jax.random.split(key)
        std = 1.0 / math.sqrt(in_features) if std is None else std
        self.weight = std * jax.random.normal(k_w, (out_features, in_features), dtype)
        self.bias = 0.1 * std * jax.random.normal(k_b, (out_features,), dtype) if use_bias else None

    def __call__(self, x: Float[Array, "... in"]) -> Float[Array, "... out"]:
        y = x @ self.weight.T
        return y if self.bias is None else y + self.bias


class LayerNorm(eqx.Module):
    """Layer normalisation over the last axis with learned scale and shift."""

    weight: Float[Array, " n"]
    bias: Float[Array, " n"]
    eps: float = eqx.field(static=True, default=1e-5)

    def __init__(self, features: int, *, eps: float = 1e-5, dtype=None):
        dtype = dtype or jnp.zeros(()).dtype
        self.weight = jnp.ones((features,), dtype)
        self.bias = jnp.zeros((features,), dtype)
        self.eps = eps

    def __call__(self, x: Float[Array, "... n"]) -> Float[Array, "... n"]:
        mean = jnp.mean(x, axis=-1, keepdims=True)
        centred = x - mean
        var = jnp.mean(centred * centred, axis=-1, keepdims=True)
        return centred * jax.lax.rsqrt(var + self.eps) * self.weight + self.bias


class Embedding(eqx.Module):
    """Lookup table `weight[ids]`; weight is `(num_embeddings, features)`."""

    weight: Float[Array, "n features"]

    def __init__(self, num_embeddings: int, features: int, *, key: PRNGKeyArray, std: float = 0.02, dtype=None):
        dtype = dtype or jnp.zeros(()).dtype
        self.weight = std * jax.random.normal(key, (num_embeddings, features), dtype)

    def __call__(self, ids: Int[Array, "..."]) -> Float[Array, "... features"]:
        return jnp.take(self.weight, ids, axis=0)
