"""A small multilayer perceptron (equinox), the simplest model the curvature
engine is tested on."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from geomsim.models.layers import Linear

ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "tanh": jnp.tanh,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
    "softplus": jax.nn.softplus,
}


class MLP(eqx.Module):
    """`in_size -> width -> ... -> width -> out_size` with `depth` hidden layers.

    Acts on `(..., in_size)` and returns `(..., out_size)`.  `activation` names
    an entry of `ACTIVATIONS` (smooth ones keep the Hessian well defined).
    """

    layers: tuple[Linear, ...]
    activation: str = eqx.field(static=True)

    def __init__(self, in_size: int, out_size: int, *, width: int = 16, depth: int = 2,
                 activation: str = "tanh", key: PRNGKeyArray, dtype=None):
        if depth < 0:
            raise ValueError(f"depth: must be an integer >= 0 (got {depth})")
        if min(in_size, out_size, width) < 1:
            raise ValueError(f"in_size, out_size, width: must be >= 1 (got {in_size}, {out_size}, {width})")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation: must be one of {sorted(ACTIVATIONS)} (got {activation!r})")
        sizes = [in_size] + [width] * depth + [out_size]
        keys = jax.random.split(key, len(sizes) - 1)
        self.layers = tuple(
            Linear(a, b, key=k, dtype=dtype) for a, b, k in zip(sizes[:-1], sizes[1:], keys, strict=True)
        )
        self.activation = activation

    def __call__(self, x: Float[Array, "... in"]) -> Float[Array, "... out"]:
        act = ACTIVATIONS[self.activation]
        for layer in self.layers[:-1]:
            x = act(layer(x))
        return self.layers[-1](x)
