"""Rows of arrays in fixed-size chunks, for loops that must hold one chunk at a time
(a language model's logits over its positions: `chunked_cross_entropy`,
`curvature.chunked_ggn_operator`)."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Bool


def chunk_rows(arrays: tuple[Array, ...], chunk: int) -> tuple[tuple[Array, ...], Bool[Array, "c chunk"]]:
    """Each array's leading axis of n rows as `(ceil(n / chunk), chunk, ...)`, zero-padded,
    with the mask of real rows; `chunk` is clipped to [1, n]."""
    n = arrays[0].shape[0]
    chunk = max(1, min(chunk, n))
    pad = (-n) % chunk

    def split(a):
        return jnp.pad(a, ((0, pad),) + ((0, 0),) * (a.ndim - 1)).reshape(-1, chunk, *a.shape[1:])

    return tuple(split(a) for a in arrays), split(jnp.ones(n, bool))
