"""Example models for `python -m geomsim.diagnose --model geomsim.diagnose.examples:<name>`.

Copy the pattern for your own model: a module-level function with no
arguments that returns a `geomsim.Landscape` (`FunctionLandscape(theta0=params,
align_fn=..., task_fn=...)` wraps any pytree of parameters, equinox, flax or
plain dicts, and two scalar losses: Hessians only) or a
`geomsim.diagnose.AlignedModel(params, apply_fn, align_batches, task_batches)`
(outputs and data kept apart: `--operator ggn|fisher` and `--task-model
gauss_newton` need it).
"""

import equinox as eqx
import jax
import jax.numpy as jnp

from geomsim.diagnose.model import AlignedModel
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


def _classifier_data(predict):
    """Alignment data: inputs labelled with the model's own answers (the behaviour to
    keep), one batch; task data: a benign new labelling rule, four batches of 8 (so
    `--resamples` has batches to draw)."""
    xa = jax.random.normal(jax.random.key(2), (32, 3))
    xf = jax.random.normal(jax.random.key(3), (32, 3))
    yf = (xf[:, 0] > 0).astype(jnp.int32) + 2 * (xf[:, 1] > 0).astype(jnp.int32)
    return (xa, jnp.argmax(predict(xa), axis=-1)), [(xf[i:i + 8], yf[i:i + 8]) for i in range(0, 32, 8)]


def tiny_classifier():
    """An equinox MLP classifier (4 classes) as an AlignedModel (categorical likelihood)."""
    model = eqx.nn.MLP(3, 4, 8, 1, key=jax.random.key(1))
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def apply_fn(p, x):
        return jax.vmap(eqx.combine(p, static))(x)

    align, task = _classifier_data(lambda x: apply_fn(params, x))
    return AlignedModel(params, apply_fn, align_batches=align, task_batches=task)


def tiny_flax_classifier():
    """The same in flax.linen: `net.apply` is the apply_fn, the variables dict the params."""
    import flax.linen as nn

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(4)(jnp.tanh(nn.Dense(8)(x)))

    net = MLP()
    params = net.init(jax.random.key(1), jnp.zeros((1, 3)))
    align, task = _classifier_data(lambda x: net.apply(params, x))
    return AlignedModel(params, net.apply, align_batches=align, task_batches=task)


def tiny_nnx_classifier():
    """`tiny_classifier`'s network and weights in flax.nnx: `as_functional` splits the
    module (`nnx.split`) into a pure apply_fn and its `nnx.Param` state."""
    from flax import nnx

    from geomsim.models import as_functional

    mlp = eqx.nn.MLP(3, 4, 8, 1, key=jax.random.key(1))

    class MLP(nnx.Module):
        def __init__(self):
            self.hidden = nnx.Linear(3, 8, rngs=nnx.Rngs(0))
            self.out = nnx.Linear(8, 4, rngs=nnx.Rngs(0))
            for dense, linear in ((self.hidden, mlp.layers[0]), (self.out, mlp.layers[1])):
                dense.kernel.value, dense.bias.value = linear.weight.T, linear.bias

        def __call__(self, x):
            return self.out(jax.nn.relu(self.hidden(x)))

    apply_fn, params = as_functional(MLP())
    align, task = _classifier_data(lambda x: apply_fn(params, x))
    return AlignedModel(params, apply_fn, align_batches=align, task_batches=task)
