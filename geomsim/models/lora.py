"""Low-rank adapters (LoRA) for any parameter pytree.

Each selected weight matrix `W (rows x cols)` gets an update `U V` with
`U (rows x r)` starting at zero and `V (r x cols)` random, so the adapted model
starts exactly at the base model and only rank-r updates are reachable.  A leaf
with leading axes (e.g. `(layers, rows, cols)`: a model that stacks its blocks
for `lax.scan`) is a stack of matrices, each with its own factors.
`lora_merge(base, adapter)` gives full parameters, so every loss, metric and
curvature tool applies to the adapted model unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray, PyTree

Adapter = tuple[tuple[Array, Array], ...]


def _names(path: tuple) -> str:
    return "/".join(str(getattr(p, "name", getattr(p, "key", getattr(p, "idx", p)))) for p in path)


def default_targets(path: tuple, leaf: Array) -> bool:
    """Matrices inside transformer blocks (attention and MLP weights), not embeddings."""
    return leaf.ndim == 2 and "blocks" in _names(path)


def stacked_targets(path: tuple, leaf: Array) -> bool:
    """The stacked block matrices `(layers, rows, cols)` of a scanned decoder
    (`geomsim.models.hf.DecoderLM.layers`: attention and MLP weights; its stacked
    norm scales are `(layers, D)` and not selected)."""
    return leaf.ndim == 3 and "layers" in _names(path)


def _selected(params: PyTree, targets: Callable) -> list[int]:
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return [i for i, (path, leaf) in enumerate(leaves) if leaf is not None and targets(path, leaf)]


def lora_init(params: PyTree, rank: int, key: PRNGKeyArray, targets: Callable = default_targets) -> Adapter:
    """Adapter `((U_1, V_1), ...)` for the selected matrices of `params`.

    Raises:
        ValueError: if `rank < 1` or no matrix is selected.
    """
    if rank < 1:
        raise ValueError(f"rank: must be >= 1 (got {rank})")
    leaves = jax.tree.leaves(params)
    chosen = _selected(params, targets)
    if not chosen:
        raise ValueError("targets: selected no weight matrix to adapt")
    keys = jax.random.split(key, len(chosen))
    adapter = []
    for k, i in zip(keys, chosen, strict=True):
        *lead, rows, cols = leaves[i].shape
        u = jnp.zeros((*lead, rows, rank), leaves[i].dtype)
        v = jax.random.normal(k, (*lead, rank, cols), leaves[i].dtype) / jnp.sqrt(cols)
        adapter.append((u, v))
    return tuple(adapter)


def lora_merge(params: PyTree, adapter: Adapter, targets: Callable = default_targets) -> PyTree:
    """Full parameters `W + U V` on the selected matrices (others unchanged; stacks batched)."""
    leaves, treedef = jax.tree.flatten(params)
    chosen = _selected(params, targets)
    if len(chosen) != len(adapter):
        raise ValueError(f"adapter: has {len(adapter)} factors for {len(chosen)} selected matrices")
    for (u, v), i in zip(adapter, chosen, strict=True):
        leaves[i] = leaves[i] + u @ v
    return jax.tree.unflatten(treedef, leaves)
