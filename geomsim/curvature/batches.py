"""Data batches for curvature operators: one batch, a list, an iterator, or a
pre-stacked array of batches, averaged with per-batch weights.

An operator's matvec is a weighted mean over batches,
`A v = sum_b w_b A_b v` with `sum_b w_b = 1`.  Same-shaped batches are stacked
(one leading axis) and reduced with `lax.scan`, so memory does not grow with the
number of batches and the program is traced once; ragged batches (a short last
batch) are kept as a tuple and unrolled.  By default `w_b` is proportional to
the number of examples in batch b (the leading size of its first leaf), so the
operator is the curvature of the mean loss over all examples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PyTree


class Stacked(eqx.Module):
    """Marks a pytree whose leaves carry a leading batch-index axis (n batches)."""

    data: PyTree


class BatchSet(eqx.Module):
    """Normalised batches: stacked (`lax.scan`) or a tuple (unrolled), with weights.

    data: the stacked pytree (leading axis n) or a tuple of n batch pytrees.
    weights: `(n,)` non-negative, summing to 1.
    """

    data: PyTree
    weights: Float[Array, " n"]
    stacked: bool = eqx.field(static=True)

    @property
    def count(self) -> int:
        return int(self.weights.shape[0])

    def first(self) -> PyTree:
        """One batch (for shapes)."""
        if self.stacked:
            return jax.tree.map(lambda x: x[0], self.data)
        return self.data[0]

    def mean(self, fn: Callable[[PyTree], PyTree]) -> PyTree:
        """`sum_b w_b fn(batch_b)` for a function returning a pytree of arrays."""
        if self.count == 1:
            batch = self.first()
            return jax.tree.map(lambda y: y * self.weights[0].astype(y.dtype), fn(batch))
        if self.stacked:
            first = jax.eval_shape(fn, self.first())
            init = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), first)

            def body(acc, item):
                batch, w = item
                return jax.tree.map(lambda a, y: a + w.astype(y.dtype) * y, acc, fn(batch)), None

            total, _ = jax.lax.scan(body, init, (self.data, self.weights))
            return total
        total = None
        for i, batch in enumerate(self.data):
            term = jax.tree.map(lambda y, w=self.weights[i]: w.astype(y.dtype) * y, fn(batch))
            total = term if total is None else jax.tree.map(jnp.add, total, term)
        return total


def _num_examples(batch: PyTree) -> int:
    leaves = jax.tree.leaves(batch)
    if not leaves or np.ndim(leaves[0]) == 0:
        return 1
    return int(np.shape(leaves[0])[0])


def _same_structure(batches: list) -> bool:
    shapes = [jax.tree.structure(b) for b in batches]
    if any(s != shapes[0] for s in shapes):
        return False
    leaves = [jax.tree.leaves(b) for b in batches]

    def signature(x):
        return np.shape(x), (x.dtype if hasattr(x, "dtype") else np.result_type(x))

    first = [signature(x) for x in leaves[0]]
    return all([signature(x) for x in ls] == first for ls in leaves)


def as_batches(batches: Any, weights: Any = None) -> BatchSet | None:
    """Normalise `batches` into a `BatchSet` (or None when there is no data).

    Args:
        batches: None (the loss takes only parameters); a `BatchSet`; a
            `Stacked(tree)` of pre-stacked batches; a `list` or an iterator /
            generator of batches (materialised once); anything else is a single
            batch (e.g. an `(inputs, targets)` tuple or a dict).
        weights: optional per-batch weights (normalised to sum 1); default
            proportional to each batch's number of examples.
    """
    if batches is None:
        return None
    if isinstance(batches, BatchSet):
        return batches
    if isinstance(batches, Stacked):
        n = _num_examples(batches.data)
        w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
        return BatchSet(data=batches.data, weights=_normalise(w, n), stacked=True)
    if isinstance(batches, list) or (isinstance(batches, (Iterator, Iterable)) and not _is_pytree_batch(batches)):
        items = list(batches)
        if not items:
            raise ValueError("batches: got an empty list/iterator; pass at least one batch")
        w = np.asarray([_num_examples(b) for b in items], dtype=np.float64) if weights is None else \
            np.asarray(weights, dtype=np.float64)
        w = _normalise(w, len(items))
        if len(items) > 1 and _same_structure(items):
            data = jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]), *items)
            return BatchSet(data=data, weights=w, stacked=True)
        return BatchSet(data=tuple(items), weights=w, stacked=False)
    return BatchSet(data=(batches,), weights=_normalise(np.ones(1) if weights is None else weights, 1), stacked=False)


def _is_pytree_batch(obj: Any) -> bool:
    # Tuples, dicts and arrays are batches themselves, not collections of batches.
    return isinstance(obj, (tuple, dict)) or hasattr(obj, "shape")


def _normalise(w, n: int) -> Array:
    w = np.asarray(w, dtype=np.float64).reshape(-1)
    if w.shape[0] != n:
        raise ValueError(f"weights: expected {n} per-batch weights, got {w.shape[0]}")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("weights: must be finite, >= 0, and not all zero")
    return jnp.asarray(w / w.sum(), dtype=jnp.zeros(()).dtype)


def bind_batch(fn: Callable, batch: Any) -> Callable:
    """`p -> fn(p, batch)`, or `p -> fn(p)` when the loss takes no data (`batch` is None)."""
    return (lambda p: fn(p)) if batch is None else (lambda p: fn(p, batch))
