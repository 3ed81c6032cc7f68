"""An aligned model with its data: what a Gauss-Newton or Fisher diagnosis needs.

A `Landscape` gives only two losses of the parameters, so only their Hessians
are defined.  `AlignedModel` keeps the model's output function and its data
apart, `L(theta) = mean_i nll(y_i | apply_fn(theta, x_i))`, so the alignment
curvature can also be the generalised Gauss-Newton matrix `J^T H_out J` or the
Fisher `J^T F_out J` (equal for a categorical likelihood), and the task's local
model can be its Gauss-Newton one (PSD: bounded below, see docs/theory.md,
section 10).  Equinox models (`eqx.partition`), flax modules (`module.apply`
with a variables dict) and plain functions all fit: only `apply_fn(params,
inputs) -> outputs` and a pytree of float parameters are needed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jaxtyping import Array, Float, PyTree

from geomsim.curvature.batches import BatchSet, as_batches
from geomsim.curvature.likelihoods import Categorical, Likelihood, resolve_likelihood
from geomsim.curvature.operators import (
    CurvatureOperator,
    chunked_ggn_operator,
    fisher_operator,
    ggn_operator,
    hessian_operator,
)
from geomsim.curvature.sharding import param_sharding, shard_batches
from geomsim.landscapes.base import FunctionLandscape

OPERATORS = ("hessian", "ggn", "fisher")


class AlignedModel(eqx.Module):
    """theta0, its output function and the alignment / task data.

    params: the aligned parameters theta0 (any pytree of float arrays).
    apply_fn: `apply_fn(params, inputs) -> outputs` (logits for "categorical";
        the leading output axes index samples, e.g. `(batch, positions, vocab)`).
    align_batches, task_batches: `(inputs, targets)` batches defining `L_A` (the
        behaviour to keep: refusals, safe answers) and `L_F` (the benign task);
        one batch or a list (see `geomsim.curvature.batches`).
    likelihood: "categorical" (cross-entropy on logits, int targets) or
        "gaussian" (squared error), or a `Likelihood`; both losses are its mean
        negative log-likelihood in nats per sample.
    fused_loss: optional `loss(params, (inputs, targets))` equal to the mean NLL of
        `apply_fn`'s outputs but computed without holding them all at once (e.g. a
        chunked cross-entropy over a language model's positions); the losses, their
        gradients and Hessians use it, the Gauss-Newton and Fisher products (which
        live in output space) use `apply_fn`.
    frozen: optional arrays held fixed, e.g. the base weights under LoRA adapters or
        the layers outside a chosen subset; then `apply_fn(params, inputs, frozen)`
        and `fused_loss(params, batch, frozen)` take them as a third argument, and
        every curvature is of `params` alone.  They travel with the model as arrays
        (sharded like parameters on a mesh), never as constants baked into a program.
    head: optional `(features_fn, head_fn, chunk)` with `apply_fn(p, x) ==
        head_fn(p, features_fn(p, x))` (with `frozen`, each takes it last): a language
        model's hidden states at the scored positions and its unembedding; the
        Gauss-Newton and Fisher products of a categorical model then apply the head
        `chunk` rows at a time (`chunked_ggn_operator`), never holding all the logits.
    """

    params: PyTree
    align_batches: BatchSet
    task_batches: BatchSet
    apply_fn: Callable[[PyTree, Any], Array] = eqx.field(static=True)
    likelihood: Likelihood
    fused_loss: Callable[[PyTree, Any], Array] | None = eqx.field(static=True)
    head: tuple[Callable, Callable, int] | None = eqx.field(static=True)
    frozen: PyTree

    def __init__(self, params: PyTree, apply_fn: Callable[..., Array], align_batches: Any,
                 task_batches: Any, likelihood: str | Likelihood = "categorical",
                 fused_loss: Callable[..., Array] | None = None, frozen: PyTree = None,
                 head: tuple[Callable, Callable, int] | None = None):
        self.params = params
        self.apply_fn = apply_fn
        self.fused_loss = fused_loss
        self.frozen = frozen
        self.head = head
        self.likelihood = resolve_likelihood(likelihood)
        for name, batches in (("align_batches", align_batches), ("task_batches", task_batches)):
            if batches is None:
                raise ValueError(f"{name}: AlignedModel needs (inputs, targets) batches (got None)")
        self.align_batches = as_batches(align_batches)
        self.task_batches = as_batches(task_batches)

    @property
    def batch_loss(self) -> Callable[[PyTree, Any], Float[Array, ""]]:
        """`loss(params, (inputs, targets))`: mean negative log-likelihood of one batch
        (nats per sample); a plain function of its arguments (it holds no arrays, so
        operators can keep it as a static field; with `frozen` arrays it closes over them)."""
        if self.fused_loss is not None:
            return self._bound(self.fused_loss)
        apply_fn, output_loss = self.model_fn, self.output_loss

        def loss(params, batch):
            inputs, targets = batch
            return output_loss(apply_fn(params, inputs), targets)

        return loss

    @property
    def model_fn(self) -> Callable[[PyTree, Any], Array]:
        """`model_fn(params, inputs) -> outputs` (the frozen arrays bound)."""
        return self._bound(self.apply_fn)

    def _bound(self, fn: Callable) -> Callable:
        frozen = self.frozen
        return fn if frozen is None else (lambda params, x: fn(params, x, frozen))

    @property
    def output_loss(self) -> Callable[[Array, Any], Float[Array, ""]]:
        """`loss(outputs, targets)`: the mean negative log-likelihood (the loss-of-outputs
        half of the Gauss-Newton split)."""
        likelihood = self.likelihood
        return lambda outputs, targets: jnp.mean(likelihood.nll(outputs, targets))

    def align_loss(self, params: PyTree) -> Float[Array, ""]:
        """`L_A(params)`: the weighted mean over the alignment batches."""
        return self.align_batches.mean(lambda b: self.batch_loss(params, b))

    def task_loss(self, params: PyTree) -> Float[Array, ""]:
        """`L_F(params)`: the weighted mean over the task batches."""
        return self.task_batches.mean(lambda b: self.batch_loss(params, b))

    def landscape(self) -> FunctionLandscape:
        """The same model as a `Landscape` (its Hessians only)."""
        return FunctionLandscape(theta0=self.params, align_fn=self.align_loss, task_fn=self.task_loss)

    def on_mesh(self, mesh: Mesh) -> AlignedModel:
        """The same model with its parameters split over the mesh's "model" axis (FSDP)
        and its examples over "data" (`geomsim.curvature.sharding`); every operator and
        diagnosis of it then runs sharded, equal to the one-device one up to round-off."""
        params = jax.device_put(self.params, param_sharding(mesh, self.params))
        model = eqx.tree_at(lambda m: (m.params, m.align_batches, m.task_batches), self,
                            (params, shard_batches(self.align_batches, mesh), shard_batches(self.task_batches, mesh)))
        if self.frozen is None:
            return model
        frozen = jax.device_put(self.frozen, param_sharding(mesh, self.frozen))
        return eqx.tree_at(lambda m: m.frozen, model, frozen)

    def operator(self, kind: str, data: str = "align") -> CurvatureOperator:
        """Curvature of `L_A` (`data="align"`) or `L_F` (`"task"`) at theta0:
        "hessian", "ggn" (Gauss-Newton of the NLL) or "fisher" (the true Fisher)."""
        batches = {"align": self.align_batches, "task": self.task_batches}[data]
        if kind == "hessian":
            return hessian_operator(self.batch_loss, self.params, batches)
        if kind in ("ggn", "fisher") and self.head is not None and isinstance(self.likelihood, Categorical):
            features_fn, head_fn, chunk = self.head  # GGN = Fisher for a categorical likelihood
            return chunked_ggn_operator(self._bound(features_fn), self._bound(head_fn), self.params, batches,
                                        chunk=chunk)
        if kind == "ggn":
            return ggn_operator(self.model_fn, self.output_loss, self.params, batches)
        if kind == "fisher":
            return fisher_operator(self.model_fn, self.params, batches, likelihood=self.likelihood)
        raise ValueError(f"operator: must be one of {', '.join(OPERATORS)} (got {kind!r})")
