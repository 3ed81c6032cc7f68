"""Optimizers for fine-tuning, as `optax.GradientTransformation`s.

Any optax transformation works with `geomsim.dynamics.descend`; this module only
names the ones the sweep exposes.  Training time is `t = n * lr` for all of them.
"""

from __future__ import annotations

import optax
from jaxtyping import PRNGKeyArray

OPTIMIZERS = ("gd", "momentum", "adam", "sgd", "flow")


def make_optimizer(
    name: str,
    lr: float,
    *,
    key: PRNGKeyArray | None = None,
    momentum: float = 0.9,
    noise: float = 0.0,
) -> optax.GradientTransformation:
    """Build a named optimizer.

    Args:
        name: `gd` (plain gradient descent), `momentum` (heavy ball, `momentum`
            coefficient), `adam`, or `sgd` (gradient descent on gradients plus
            isotropic Gaussian noise of standard deviation `noise` per
            coordinate, in gradient units; drawn from `key`).
        lr: learning rate (time per step).
    """
    if name == "gd":
        return optax.sgd(lr)
    if name == "momentum":
        return optax.sgd(lr, momentum=momentum)
    if name == "adam":
        return optax.adam(lr)
    if name == "sgd":
        if key is None:
            raise ValueError("optimizer 'sgd' needs a PRNG key for its gradient noise")
        return optax.chain(optax.add_noise(noise**2, 0.0, key), optax.sgd(lr))
    allowed = ", ".join(o for o in OPTIMIZERS if o != "flow")
    raise ValueError(f"optimizer: unknown {name!r}; discrete optimizers are {allowed} (and 'flow')")
