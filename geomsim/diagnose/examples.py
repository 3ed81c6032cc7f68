"""Example models for `python -m geomsim.diagnose --model geomsim.diagnose.examples:<name>`.

Copy the pattern for your own model: a module-level function with no
arguments that returns a `geomsim.Landscape`. `FunctionLandscape(theta0=params,
align_fn=..., task_fn=...)` wraps any pytree of parameters (equinox, flax or
plain dicts) and two scalar losses.
"""

import equinox as eqx
import jax
import jax.numpy as jnp

from geomsim.landscapes import FunctionLandscape, quadratic_cubic


def quadratic():
    """A quadratic-cubic landscape with eps and mu (quadratic losses: the bounded forecast is exact)."""
    return quadratic_cubic(jax.random.key(0), dim=12, rank=2, sharpness=5.0, coupling=0.6, mu=0.05, eps=0.1,
                           task_curvature_s=1.0, task_curvature_min=0.5)


def tiny_mlp():
    """An equinox MLP: L_A keeps its outputs on 'aligned' inputs, L_F fits a benign target."""
    model = eqx.nn.MLP(3, 2, 8, 1, key=jax.random.key(1))
    params, static = eqx.partition(model, eqx.is_inexact_array)
    xa = jax.random.normal(jax.random.key(2), (16, 3))
    xf = jax.random.normal(jax.random.key(3), (16, 3))
    ya = jax.vmap(model)(xa)
    yf = jnp.sin(xf[:, :2])

    def out(p, x):
        return jax.vmap(eqx.combine(p, static))(x)

    return FunctionLandscape(theta0=params, align_fn=lambda p: jnp.mean((out(p, xa) - ya) ** 2),
                             task_fn=lambda p: jnp.mean((out(p, xf) - yf) ** 2))


def tiny_flax():
    """The same kind of model in flax.linen: its params dict is the pytree theta0."""
    import flax.linen as nn

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(2)(jnp.tanh(nn.Dense(8)(x)))

    net = MLP()
    xa = jax.random.normal(jax.random.key(2), (16, 3))
    xf = jax.random.normal(jax.random.key(3), (16, 3))
    params = net.init(jax.random.key(1), xa)
    ya = net.apply(params, xa)
    yf = jnp.sin(xf[:, :2])
    return FunctionLandscape(theta0=params, align_fn=lambda p: jnp.mean((net.apply(p, xa) - ya) ** 2),
                             task_fn=lambda p: jnp.mean((net.apply(p, xf) - yf) ** 2))
