"""Data- and model-parallel curvature: put an operator's batch and parameters on a device mesh.

Every curvature algorithm here is a jitted pure function of its operator, so
parallelism is a matter of where the operator's arrays live: with the batch's
example axis split over the mesh axis "data" (data parallel) and each
parameter leaf split along one of its axes over "model" (FSDP-style), XLA's
SPMD partitioner splits every product and inserts the reductions. Results
equal the single-device ones up to the order of floating-point sums.

    mesh = device_mesh(data=2, model=2)          # 4 devices
    op = shard_operator(hessian_operator(loss, params, batch), mesh)
    eigsh(20)(op, key)                           # unchanged call
"""

from __future__ import annotations

import equinox as eqx
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import PyTree

from geomsim.curvature.batches import BatchSet
from geomsim.curvature.operators import CurvatureOperator

DATA, MODEL = "data", "model"


def device_mesh(data: int | None = None, model: int = 1, devices=None) -> Mesh:
    """A `(data, model)` mesh over `devices` (default: all); `data` defaults to the rest."""
    devices = list(jax.devices() if devices is None else devices)
    if model < 1 or len(devices) % model:
        raise ValueError(f"model: must divide the {len(devices)} devices (got {model})")
    data = len(devices) // model if data is None else data
    if data < 1 or data * model > len(devices):
        raise ValueError(f"data: data x model must be at most {len(devices)} devices (got {data} x {model})")
    return Mesh(np.asarray(devices[: data * model]).reshape(data, model), (DATA, MODEL))


def _split_axis(shape: tuple[int, ...], parts: int) -> int | None:
    """The largest axis divisible by `parts` (None: replicate the leaf)."""
    axes = [i for i, n in enumerate(shape) if n % parts == 0 and n >= parts]
    return max(axes, key=lambda i: shape[i]) if axes and parts > 1 else None


def param_sharding(mesh: Mesh, params: PyTree) -> PyTree:
    """FSDP-style placement: each leaf split along its largest axis divisible by the
    mesh's "model" size, the rest (scalars, odd shapes) replicated."""
    parts = mesh.shape[MODEL]

    def one(leaf):
        axis = _split_axis(np.shape(leaf), parts)
        spec = [None] * np.ndim(leaf)
        if axis is not None:
            spec[axis] = MODEL
        return NamedSharding(mesh, PartitionSpec(*spec))

    return jax.tree.map(one, params)


def batch_sharding(mesh: Mesh, batch: PyTree, example_axis: int = 0) -> PyTree:
    """Data-parallel placement: every leaf's example axis split over "data" when its
    size divides, else replicated."""
    parts = mesh.shape[DATA]

    def one(leaf):
        spec = [None] * np.ndim(leaf)
        if np.ndim(leaf) > example_axis and np.shape(leaf)[example_axis] % parts == 0 and parts > 1:
            spec[example_axis] = DATA
        return NamedSharding(mesh, PartitionSpec(*spec))

    return jax.tree.map(one, batch)


def shard_batches(batches: BatchSet, mesh: Mesh) -> BatchSet:
    """A `BatchSet` with its examples split over "data" (stacked batches: axis 1)."""
    axis = 1 if batches.stacked else 0
    data = jax.device_put(batches.data, batch_sharding(mesh, batches.data, axis))
    weights = jax.device_put(batches.weights, NamedSharding(mesh, PartitionSpec()))
    return BatchSet(data=data, weights=weights, stacked=batches.stacked)


def shard_operator(op: CurvatureOperator, mesh: Mesh) -> CurvatureOperator:
    """The same operator with its parameters FSDP-sharded over "model" and its batches
    split over "data" (operators without data, e.g. `MatrixOperator`, are returned
    with their arrays replicated)."""
    params = getattr(op, "params", None)
    batches = getattr(op, "batches", None)
    if params is None:
        return jax.device_put(op, NamedSharding(mesh, PartitionSpec()))
    placed = jax.device_put(params, param_sharding(mesh, params))
    if isinstance(batches, BatchSet):
        return eqx.tree_at(lambda o: (o.params, o.batches), op, (placed, shard_batches(batches, mesh)))
    return eqx.tree_at(lambda o: o.params, op, placed)
