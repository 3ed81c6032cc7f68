"""Matrix-free curvature operators on parameter pytrees.

Each operator is an `equinox.Module` (so a pytree: it can be passed through
`jit`, batched with `vmap` over models or data, and handed to the algorithms as
a parameter) holding the point `params`, the data `batches`, and static
structural tags the algorithms dispatch on:

* `symmetric`: always True here (Lanczos and SLQ need it);
* `psd`: positive semi-definite (Gauss-Newton with a convex loss, every
  Fisher); selects e.g. XNysTrace over XTrace for traces.

Products:
* `HessianOperator`: `H v` by forward-over-reverse (`jvp` of `grad`), the
  cheapest exact Hessian-vector product;
* `GGNOperator`: `J^T H_loss J v` for `loss(outputs, targets)`;
* `FisherOperator`: the true Fisher `J^T F_out J v` of a likelihood model,
  with the expectation over the model's own targets in closed form;
* `EmpiricalFisherOperator`: `mean_i g_i g_i^T v` with per-sample gradients of
  the loss at the observed targets;
* `MCFisherOperator`: the same at targets sampled from the model (a Monte-Carlo
  estimate of the true Fisher, fixed once built so it is a matrix);
* `MatrixOperator`: an explicit symmetric matrix (tests, small landscapes).

`op.mv(tree)` acts on pytrees shaped like `params`; `op.mv_flat(vec)` on flat
vectors (`ravel_pytree` order).  `op.linearize()` returns an operator with the
forward pass hoisted out of the product; it keeps the linearisation residuals
in memory and was no faster per product for the CPU transformer benchmark
(benchmarks/RESULTS.md), so the algorithms take the plain operator unless you
pass a linearised one (try it where the forward pass dominates).
Data conventions: see `geomsim.curvature.batches`.  GGN and Fisher batches are
`(inputs, targets)` pairs and `model_fn(params, inputs)` returns outputs whose
leading axes index samples.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from geomsim.chunking import chunk_rows
from geomsim.curvature.batches import BatchSet, as_batches, bind_batch
from geomsim.curvature.likelihoods import Likelihood, per_sample_output_grads, resolve_likelihood


class CurvatureOperator(eqx.Module):
    """A symmetric linear operator on the parameter space of `like`.

    Subclasses implement `mv(tree) -> tree`; everything else derives from it.
    """

    # Structural tags (static).  Every subclass also defines the static field
    # `psd: bool` (not declared here: an abstract field in a base class would
    # force it before the subclass's fields without defaults).
    symmetric: ClassVar[bool] = True

    @property
    @abc.abstractmethod
    def like(self) -> PyTree:
        """A pytree with the structure, shapes and dtypes of the input vectors."""

    @abc.abstractmethod
    def mv(self, v: PyTree) -> PyTree:
        """`A v` for a pytree `v` shaped like `self.like` (returns the same structure)."""

    def __call__(self, v: PyTree) -> PyTree:
        return self.mv(v)

    @property
    def dim(self) -> int:
        """Number of scalar parameters d (static)."""
        return sum(int(x.size) for x in jax.tree.leaves(self.like))

    @property
    def dtype(self):
        return ravel_pytree(self.like)[0].dtype

    def ravel(self, tree: PyTree) -> Float[Array, " d"]:
        """Flatten a parameter-shaped pytree (same order as `mv_flat`)."""
        return ravel_pytree(tree)[0]

    def unravel(self, flat: Float[Array, " d"]) -> PyTree:
        """Inverse of `ravel`: a flat vector as a parameter-shaped pytree."""
        return ravel_pytree(self.like)[1](flat)

    def mv_flat(self, v: Float[Array, " d"]) -> Float[Array, " d"]:
        """`A v` on flat vectors of length d."""
        return self.ravel(self.mv(self.unravel(v)))

    def to_dense(self) -> Float[Array, "d d"]:
        """Materialise `A` by d products (small d only; for tests)."""
        eye = jnp.eye(self.dim, dtype=self.dtype)
        return jax.vmap(self.mv_flat)(eye).T

    def linearize(self) -> CurvatureOperator:
        """An equal operator whose products skip the forward pass.

        Partial evaluation of `v -> A v` at `v = 0` hoists every part that does
        not depend on `v` (the forward pass, the output Hessians); the result
        holds those residuals (memory ~ activations of all batches).
        """
        return LinearizedOperator.of(self)


def operator_matvec(v: PyTree, op: CurvatureOperator) -> PyTree:
    """`(v, op) -> op.mv(v)`: the matvec of the `(matvec, key, *params)` convention."""
    return op.mv(v)


class _DataOperator(CurvatureOperator):
    """Common part of the operators defined by a loss over batches of data."""

    params: eqx.AbstractVar[PyTree]
    batches: eqx.AbstractVar[BatchSet | None]

    @property
    def like(self):
        return self.params

    @abc.abstractmethod
    def batch_mv(self, batch: Any, v: PyTree) -> PyTree:
        """The product on one batch (None when the loss takes no data)."""

    def mv(self, v):
        if self.batches is None:
            return self.batch_mv(None, v)
        return self.batches.mean(lambda b: self.batch_mv(b, v))


class HessianOperator(_DataOperator):
    """`H v` of `loss(params, batch)` (or `loss(params)` without data), forward-over-reverse."""

    params: PyTree
    batches: BatchSet | None
    loss: Callable = eqx.field(static=True)
    psd: bool = eqx.field(static=True, default=False)

    def batch_mv(self, batch, v):
        return jax.jvp(jax.grad(bind_batch(self.loss, batch)), (self.params,), (v,))[1]

    def gradient(self) -> PyTree:
        """`grad loss` at `params`, averaged over the batches like the product."""
        if self.batches is None:
            return jax.grad(self.loss)(self.params)
        return self.batches.mean(lambda b: jax.grad(bind_batch(self.loss, b))(self.params))


def _linear_model(model_fn, params, inputs):
    """Outputs, `J v` and `J^T u` of `params -> model_fn(params, inputs)`."""
    outputs, jvp_fn = jax.linearize(lambda p: model_fn(p, inputs), params)
    vjp_fn = jax.linear_transpose(jvp_fn, params)
    return outputs, jvp_fn, lambda u: vjp_fn(u)[0]


class GGNOperator(_DataOperator):
    """Generalised Gauss-Newton `J^T (d^2 loss / d outputs^2) J v`.

    `model_fn(params, inputs) -> outputs`, `loss_fn(outputs, targets) -> scalar`;
    batches are `(inputs, targets)`.  PSD when `loss_fn` is convex in the
    outputs (cross-entropy, squared error): pass `psd=False` otherwise.
    """

    params: PyTree
    batches: BatchSet
    model_fn: Callable = eqx.field(static=True)
    loss_fn: Callable = eqx.field(static=True)
    psd: bool = eqx.field(static=True, default=True)

    def batch_mv(self, batch, v):
        inputs, targets = batch
        outputs, jvp_fn, vjp_fn = _linear_model(self.model_fn, self.params, inputs)
        jv = jvp_fn(v)
        hjv = jax.jvp(jax.grad(lambda o: self.loss_fn(o, targets)), (outputs,), (jv,))[1]
        return vjp_fn(hjv)


class ChunkedGGNOperator(_DataOperator):
    """Gauss-Newton (= Fisher) of the mean cross-entropy of a `features -> head` model,
    with the head applied `chunk` outputs at a time.

    `features_fn(params, inputs) -> h` gives one feature row per output (`(N, D)`, e.g.
    a language model's hidden states at the scored positions) and `head_fn(params, h)
    -> logits` maps rows to logits (the unembedding).  The product is exactly
    `GGNOperator` on `head_fn(params, features_fn(params, inputs))` with a mean
    cross-entropy, but `J v`, `H_out J v` and the head's part of `J^T` exist one chunk
    of rows at a time (`lax.scan`), so no `(N, vocab)` buffer is ever held: only
    `(chunk, vocab)` ones and the `(N, D)` features.  Batches are `(inputs, targets)`;
    the targets are not used (the expectation over the model's labels is exact).
    """

    params: PyTree
    batches: BatchSet
    features_fn: Callable = eqx.field(static=True)
    head_fn: Callable = eqx.field(static=True)
    chunk: int = eqx.field(static=True)
    psd: bool = eqx.field(static=True, default=True)

    def batch_mv(self, batch, v):
        inputs, _ = batch
        h, jvp_fn, vjp_fn = _linear_model(self.features_fn, self.params, inputs)
        dh = jvp_fn(v)
        n, width = h.shape
        (h_chunks, dh_chunks), mask = chunk_rows((h, dh), self.chunk)

        def one(acc, args):
            hc, dhc, mc = args
            logits, jl = jax.jvp(self.head_fn, (self.params, hc), (v, dhc))
            wide = jnp.promote_types(logits.dtype, jnp.float32)
            p, jl = jax.nn.softmax(logits.astype(wide), axis=-1), jl.astype(wide)
            u = (p * jl - p * jnp.sum(p * jl, axis=-1, keepdims=True)) * (mc[:, None] / n)
            g_params, g_rows = jax.vjp(self.head_fn, self.params, hc)[1](u.astype(logits.dtype))
            return jax.tree.map(jnp.add, acc, g_params), g_rows

        zero = jax.tree.map(jnp.zeros_like, self.params)
        acc, g_rows = jax.lax.scan(one, zero, (h_chunks, dh_chunks, mask))
        return jax.tree.map(jnp.add, acc, vjp_fn(g_rows.reshape(-1, width)[:n]))


class FisherOperator(_DataOperator):
    """True Fisher `mean_i J_i^T F_out(o_i) J_i v` of a likelihood model.

    The expectation over targets drawn from the model is exact (closed-form
    `F_out`), so the observed targets in the batches are not used.
    """

    params: PyTree
    batches: BatchSet
    model_fn: Callable = eqx.field(static=True)
    likelihood: Likelihood
    psd: bool = eqx.field(static=True, default=True)

    def batch_mv(self, batch, v):
        inputs = batch[0]
        outputs, jvp_fn, vjp_fn = _linear_model(self.model_fn, self.params, inputs)
        n = self.likelihood.num_samples(outputs)
        return vjp_fn(self.likelihood.output_fisher_mv(outputs, jvp_fn(v)) / n)


class EmpiricalFisherOperator(_DataOperator):
    """`mean_{i,s} g_is g_is^T v` with `g_is = grad_params l(o_i, y_is)`.

    `per_sample_loss(outputs, targets)` returns one loss per sample (a
    `Likelihood`'s NLL, or any such function).  Targets in a batch carry a
    leading axis of `num_draws` target draws per sample: 1 for the empirical
    Fisher (the observed targets), S for the Monte-Carlo Fisher.
    """

    params: PyTree
    batches: BatchSet
    model_fn: Callable = eqx.field(static=True)
    per_sample_loss: Callable = eqx.field(static=True)
    psd: bool = eqx.field(static=True, default=True)

    def batch_mv(self, batch, v):
        inputs, draws = batch
        outputs, jvp_fn, vjp_fn = _linear_model(self.model_fn, self.params, inputs)
        jv = jvp_fn(v)
        sample_shape = jax.eval_shape(self.per_sample_loss, outputs, draws[0]).shape
        grads = jax.vmap(lambda y: per_sample_output_grads(self.per_sample_loss, outputs, y))(draws)
        event_axes = tuple(range(1 + len(sample_shape), grads.ndim))
        u = jnp.sum(grads * jv[None], axis=event_axes, keepdims=True)  # g_is . v per draw and sample
        count = grads.shape[0] * max(1, int(np.prod(sample_shape)))
        return vjp_fn(jnp.sum(grads * u, axis=0) / count)


class MatrixOperator(CurvatureOperator):
    """An explicit symmetric `(d, d)` matrix as an operator on flat vectors."""

    matrix: Float[Array, "d d"]
    psd: bool = eqx.field(static=True, default=False)

    @property
    def like(self):
        return jax.ShapeDtypeStruct((self.matrix.shape[0],), self.matrix.dtype)

    @property
    def dim(self):
        return int(self.matrix.shape[0])

    @property
    def dtype(self):
        return self.matrix.dtype

    def ravel(self, tree):
        return tree

    def unravel(self, flat):
        return flat

    def mv(self, v):
        return self.matrix @ v

    def to_dense(self):
        return self.matrix

    def linearize(self):
        return self


class LinearizedOperator(CurvatureOperator):
    """An operator with its forward pass hoisted: one linear function per batch."""

    linear: tuple  # jax.tree_util.Partial per batch (pytrees holding the residuals)
    weights: Float[Array, " n"]
    params: PyTree
    psd: bool = eqx.field(static=True)

    @classmethod
    def of(cls, op: CurvatureOperator) -> LinearizedOperator:
        if isinstance(op, LinearizedOperator):
            return op
        zero = jax.tree.map(jnp.zeros_like, op.like)
        if isinstance(op, _DataOperator) and op.batches is not None:
            bs = op.batches
            batches = [jax.tree.map(lambda x, i=i: x[i], bs.data) for i in range(bs.count)] if bs.stacked \
                else list(bs.data)
            linear = tuple(jax.linearize(lambda v, b=b: op.batch_mv(b, v), zero)[1] for b in batches)
            weights = bs.weights
        else:
            linear = (jax.linearize(op.mv, zero)[1],)
            weights = jnp.ones((1,), op.dtype)
        return cls(linear=linear, weights=weights, params=zero, psd=op.psd)

    @property
    def like(self):
        return self.params

    def mv(self, v):
        total = None
        for w, lin in zip(self.weights, self.linear, strict=True):
            term = jax.tree.map(lambda y, w=w: w.astype(y.dtype) * y, lin(v))
            total = term if total is None else jax.tree.map(jnp.add, total, term)
        return total


# --- factories -----------------------------------------------------------------------------------


def hessian_operator(loss: Callable, params: PyTree, batches: Any = None, *, weights: Any = None) -> HessianOperator:
    """Hessian of `loss(params, batch)` (mean over batches; `loss(params)` when `batches` is None).

    Args:
        loss: scalar loss (units of the loss; the operator has units loss/param^2).
        params: the point, any pytree of float arrays.
        batches: see `geomsim.curvature.batches.as_batches`.
        weights: optional per-batch weights.
    """
    return HessianOperator(params=params, batches=as_batches(batches, weights), loss=loss)


def ggn_operator(model_fn: Callable, loss_fn: Callable, params: PyTree, batches: Any, *, weights: Any = None,
                 psd: bool = True) -> GGNOperator:
    """Gauss-Newton of `loss_fn(model_fn(params, inputs), targets)`; batches are `(inputs, targets)`."""
    return GGNOperator(params=params, batches=_require(batches, weights), model_fn=model_fn, loss_fn=loss_fn,
                       psd=psd)


def chunked_ggn_operator(features_fn: Callable, head_fn: Callable, params: PyTree, batches: Any, *,
                         chunk: int = 1024, weights: Any = None) -> ChunkedGGNOperator:
    """Gauss-Newton (= true Fisher) of the mean cross-entropy of `head_fn(params,
    features_fn(params, inputs))`, the head applied `chunk` rows at a time."""
    if chunk < 1:
        raise ValueError(f"chunk: must be an integer >= 1 (got {chunk})")
    return ChunkedGGNOperator(params=params, batches=_require(batches, weights), features_fn=features_fn,
                              head_fn=head_fn, chunk=chunk)


def fisher_operator(model_fn: Callable, params: PyTree, batches: Any, *, likelihood: str | Likelihood = "categorical",
                    weights: Any = None) -> FisherOperator:
    """True Fisher of the likelihood model `p(y | model_fn(params, inputs))` (exact expectation)."""
    return FisherOperator(params=params, batches=_require(batches, weights), model_fn=model_fn,
                          likelihood=resolve_likelihood(likelihood))


def empirical_fisher_operator(model_fn: Callable, params: PyTree, batches: Any, *,
                              likelihood: str | Likelihood | Callable = "categorical",
                              weights: Any = None) -> EmpiricalFisherOperator:
    """Empirical Fisher: per-sample gradients of the NLL at the observed targets.

    `likelihood` may also be any `per_sample_loss(outputs, targets) -> losses`.
    """
    loss = _per_sample_loss(likelihood)
    bs = _require(batches, weights)
    data = _map_batches(bs, lambda b: (b[0], jnp.asarray(b[1])[None]))
    return EmpiricalFisherOperator(params=params, batches=data, model_fn=model_fn, per_sample_loss=loss)


def mc_fisher_operator(model_fn: Callable, params: PyTree, batches: Any, *, key: PRNGKeyArray, num_samples: int = 1,
                       likelihood: str | Likelihood = "categorical", weights: Any = None) -> EmpiricalFisherOperator:
    """Monte-Carlo Fisher: like the empirical Fisher, at `num_samples` targets per
    sample drawn from the model at `params` (drawn once, here, from `key`).

    Unbiased for the true Fisher; its error shrinks like `1/sqrt(num_samples * N)`.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples: must be an integer >= 1 (got {num_samples})")
    lik = resolve_likelihood(likelihood)
    bs = _require(batches, weights)
    keys = jax.random.split(key, bs.count)

    def draw(batch, k):
        outputs = model_fn(params, batch[0])
        return batch[0], jax.lax.stop_gradient(lik.sample(k, outputs, num_samples))

    if bs.stacked:
        data = BatchSet(data=jax.vmap(draw)(bs.data, keys), weights=bs.weights, stacked=True)
    else:
        data = BatchSet(data=tuple(draw(b, k) for b, k in zip(bs.data, keys, strict=True)), weights=bs.weights,
                        stacked=False)
    return EmpiricalFisherOperator(params=params, batches=data, model_fn=model_fn, per_sample_loss=lik.nll)


def _per_sample_loss(likelihood) -> Callable:
    if isinstance(likelihood, (str, Likelihood)):
        return resolve_likelihood(likelihood).nll
    if callable(likelihood):
        return likelihood
    raise ValueError(f"likelihood: expected a name, a Likelihood or a per-sample loss callable (got {likelihood!r})")


def _require(batches, weights) -> BatchSet:
    bs = as_batches(batches, weights)
    if bs is None:
        raise ValueError("batches: this operator needs data, (inputs, targets) batches; got None")
    return bs


def _map_batches(bs: BatchSet, fn: Callable) -> BatchSet:
    if bs.stacked:
        return BatchSet(data=jax.vmap(fn)(bs.data), weights=bs.weights, stacked=True)
    return BatchSet(data=tuple(fn(b) for b in bs.data), weights=bs.weights, stacked=False)
