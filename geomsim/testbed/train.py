"""Training loops for the testbed: one `lax.scan` over steps, batches sampled inside.

`train` works on any `(apply_fn, params)` pair and any optax optimizer, and is
`vmap`pable over params and keys, so an ensemble of seeds trains as one program.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import optax
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from geomsim.tasks.language import Batch


def train(
    params: PyTree,
    loss: Callable[[PyTree, Batch], Array],
    sample: Callable[[PRNGKeyArray], Batch],
    optimizer: optax.GradientTransformation,
    steps: int,
    key: PRNGKeyArray,
) -> tuple[PyTree, Float[Array, " steps"]]:
    """Minimise `loss(params, batch)` over `steps` fresh batches `sample(key_i)`.

    Returns the trained params and the per-step training loss (nats).
    """
    value_and_grad = jax.value_and_grad(loss)

    def step(carry, k):
        p, state = carry
        value, grads = value_and_grad(p, sample(k))
        updates, state = optimizer.update(grads, state, p)
        return (optax.apply_updates(p, updates), state), value

    (params, _), losses = jax.lax.scan(step, (params, optimizer.init(params)), jax.random.split(key, steps))
    return params, losses
