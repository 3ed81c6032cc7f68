"""The flat first- and second-order pieces of a model at theta0 that the local forecasts are
built from, for a `Landscape` (Hessians only) and an `AlignedModel` (any operator) alike."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float

from geomsim.curvature import CurvatureOperator, hessian_operator
from geomsim.diagnose.model import AlignedModel
from geomsim.landscapes.base import Landscape
from geomsim.theory.forecast import landscape_products


class Products(NamedTuple):
    """At theta0, flat `(d,)`: `grad` g = grad L_F, `align_grad` grad L_A, `task_matvec` the
    task model's product (H_F or its Gauss-Newton), `align_matvec` the alignment operator's
    (Hessian, GGN or Fisher), `hessian_task_matvec` H_F itself (Adam's still coordinates),
    `params` theta0, and `align_operator_at(params)`, the alignment Hessian at any point
    (pytree params: the curvature-aware defense differentiates it along the path)."""

    grad: Float[Array, " d"]
    align_grad: Float[Array, " d"]
    task_matvec: Callable[[Array], Array]
    align_matvec: Callable[[Array], Array]
    hessian_task_matvec: Callable[[Array], Array]
    params: Float[Array, " d"]
    align_operator_at: Callable[[object], CurvatureOperator]


def products(model: Landscape | AlignedModel, task_model: str, operator: str) -> Products:
    """`Products` of `model` with the task model `task_model` (hessian | gauss_newton |
    linearized: the Gauss-Newton) and the alignment curvature `operator`."""
    if isinstance(model, Landscape):
        g, ga, task_mv, align_mv = landscape_products(model)

        def align_loss(p):  # a plain function: a Module's bound method would put its arrays in a static field
            return model.align_loss(p)

        return Products(g, ga, task_mv, align_mv, task_mv, ravel_pytree(model.theta0)[0],
                        lambda p: hessian_operator(align_loss, p))
    hessian_task = model.operator("hessian", "task")
    task_op = hessian_task if task_model == "hessian" else model.operator("ggn", "task")
    g, ga = (ravel_pytree(op.gradient())[0] for op in (hessian_task, model.operator("hessian", "align")))
    return Products(g, ga, task_op.mv_flat, model.operator(operator).mv_flat, hessian_task.mv_flat,
                    ravel_pytree(model.params)[0],
                    lambda p: hessian_operator(model.batch_loss, p, model.align_batches))


def second_moment(model: Landscape | AlignedModel, grad: Float[Array, " d"], minibatch: bool) -> Float[Array, " d"]:
    """Adam's settled second moment: `g^2` (full batch) or `E_b[g_b^2]` over the task batches
    (`minibatch`, one gradient pass per batch)."""
    if not minibatch or isinstance(model, Landscape):
        return grad**2
    return model.task_batches.mean(lambda b: batch_gradient(model, b) ** 2)


def batch_gradient(model: AlignedModel, batch) -> Float[Array, " d"]:
    """`grad L_b(theta0)` of one task batch, flat."""
    return ravel_pytree(jax.grad(lambda p: model.batch_loss(p, batch))(model.params))[0]


def batch_gradients(model: AlignedModel) -> Float[Array, "b d"]:
    """`batch_gradient` of each task batch, as rows (one gradient pass per batch; b x d
    numbers held: the diagnosis bounds it, `NOISE_BYTES`)."""
    batches = model.task_batches
    if batches.stacked:
        return jax.lax.map(lambda b: batch_gradient(model, b), batches.data)
    return jnp.stack([batch_gradient(model, b) for b in batches.data])
