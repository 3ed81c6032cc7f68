"""Low-rank adapters (LoRA) for any parameter pytree.

Each selected weight matrix `W (rows x cols)` gets an update `U V` with
`U (rows x r)` starting at zero and `V (r x cols)` random, so the adapted model
starts exactly at the base model and only rank-r updates are reachable.
`lora_merge(base, adapter)` gives full parameters, so every loss, metric and
curvature tool applies to the adapted model unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, PRNGKeyArray, PyTree

Adapter = tuple[tuple[Array, Array], ...]


def default_targets(path: tuple, leaf: Array) -> bool:
    """Matrices inside transformer blocks (attention and MLP weights), not embeddings."""
    names = "/".join(str(getattr(p, "name", getattr(p, "key", getattr(p, "idx", p)))) for p in path)
    return leaf.ndim == 2 and "blocks" in names


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
        rows, cols = leaves[i].shape
        u = jnp.zeros((rows, rank), leaves[i].dtype)
        v = jax.random.normal(k, (rank, cols), leaves[i].dtype) / jnp.sqrt(cols)
        adapter.append((u, v))
    return tuple(adapter)


def lora_merge(params: PyTree, adapter: Adapter, targets: Callable = default_targets) -> PyTree:
    """Full parameters `W + U V` on the selected matrices (others unchanged)."""
    leaves, treedef = jax.tree.flatten(params)
    chosen = _selected(params, targets)
    if len(chosen) != len(adapter):
        raise ValueError(f"adapter: has {len(adapter)} factors for {len(chosen)} selected matrices")
    for (u, v), i in zip(adapter, chosen, strict=True):
        leaves[i] = leaves[i] + u @ v
    return jax.tree.unflatten(treedef, leaves)
