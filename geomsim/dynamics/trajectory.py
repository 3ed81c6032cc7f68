"""Fine-tuning trajectories recorded on a log-spaced time grid.

`descend` runs any optax optimizer for `record_at[-1]` steps as one `lax.scan`
over recording intervals (each interval a `fori_loop`), so only the recorded
metrics leave the loop.  The state is the displacement `delta = theta - theta0`,
which keeps the O(t^2) alignment-subspace component resolvable.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PyTree

from geomsim.landscapes.base import Landscape


class Trajectory(eqx.Module):
    """Metrics along a run, one entry per recorded time (shape `(r,)` each).

    Attributes:
        time: training time t (= steps * lr for discrete optimizers).
        steps: optimizer steps taken (0 for gradient flow records).
        align_increase: `Delta L_A(t)`, loss units.
        task_loss: `L_F(theta(t))`, loss units.
        subspace_norm: `||P_S delta(t)||`, parameter units.
        delta_norm: `||delta(t)||`, parameter units.
        extra: caller-defined metrics (see `descend(..., extra=...)`), each `(r,)`.
    """

    time: Float[Array, " r"]
    steps: Float[Array, " r"]
    align_increase: Float[Array, " r"]
    task_loss: Float[Array, " r"]
    subspace_norm: Float[Array, " r"]
    delta_norm: Float[Array, " r"]
    extra: dict[str, Array] = eqx.field(default_factory=dict)


def log_record_steps(n_steps: int, n_records: int) -> np.ndarray:
    """Unique, increasing, roughly log-spaced step counts in `[1, n_steps]`."""
    if n_steps < 1 or n_records < 2:
        raise ValueError(f"need n_steps >= 1 and n_records >= 2; got {n_steps}, {n_records}")
    steps = np.unique(np.round(np.geomspace(1, n_steps, n_records)).astype(np.int64))
    return steps


def measure(landscape: Landscape, delta: PyTree, basis: Float[Array, "k d"] | None) -> dict[str, Array]:
    """Alignment increase, task loss and the S / total displacement norms."""
    flat = ravel_pytree(delta)[0]
    s_norm = jnp.linalg.norm(basis @ flat) if basis is not None else jnp.full((), jnp.nan, flat.dtype)
    return dict(
        align_increase=landscape.align_increase(delta),
        task_loss=landscape.displaced_task_loss(delta),
        subspace_norm=s_norm,
        delta_norm=jnp.linalg.norm(flat),
    )


def descend(
    landscape: Landscape,
    optimizer: optax.GradientTransformation,
    record_at: np.ndarray,
    lr: float | Array,
    basis: Float[Array, "k d"] | None = None,
    extra: Callable[[PyTree], dict[str, Array]] | None = None,
) -> Trajectory:
    """Run `optimizer` on `L_F` from `theta0`, recording at the given step counts.

    Args:
        landscape: the landscape (a pytree; vmap over it for grids).
        optimizer: any optax transformation (its update is added to delta).
        record_at: static increasing step counts (numpy ints >= 1).
        lr: the learning rate, used only to convert steps to time `t = n lr`.
        basis: `(k, d)` orthonormal rows spanning S, for `||P_S delta||`.
        extra: optional `delta -> {name: scalar}` recorded with the other metrics
            (e.g. a harm rate or task accuracy).
    """
    record_at = np.asarray(record_at, dtype=np.int64)
    if record_at.ndim != 1 or record_at[0] < 1 or np.any(np.diff(record_at) <= 0):
        raise ValueError("record_at must be strictly increasing step counts >= 1")
    counts = jnp.asarray(np.diff(record_at, prepend=0))
    theta0 = landscape.theta0
    delta0 = jax.tree.map(jnp.zeros_like, theta0)
    grad_fn = landscape.task_gradient

    def one_step(_, carry):
        delta, state = carry
        updates, state = optimizer.update(grad_fn(delta), state, jax.tree.map(jnp.add, theta0, delta))
        return optax.apply_updates(delta, updates), state

    def segment(carry, count):
        carry = jax.lax.fori_loop(0, count, one_step, carry)
        recorded = measure(landscape, carry[0], basis)
        recorded["extra"] = extra(carry[0]) if extra is not None else {}
        return carry, recorded

    _, metrics = jax.lax.scan(segment, (delta0, optimizer.init(theta0)), counts)
    steps = jnp.asarray(record_at, dtype=metrics["delta_norm"].dtype)
    return Trajectory(time=steps * lr, steps=steps, **metrics)
