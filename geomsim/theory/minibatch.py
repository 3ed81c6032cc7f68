"""Minibatch gradient descent: the batches' gradient noise on top of a forecast.

Each step of minibatch GD descends one task batch b, drawn at random with probability
`w_b` (the batch's weight in `L_F = sum_b w_b L_b`), so it moves along
`g_b = g + xi_b` instead of the mean gradient g. To first order in the noise, and early
(while `H_F` has not yet acted on it), the displacement after n steps is the mean
path's plus `e_n = -lr sum_b dev_b xi_b`, where `dev = counts_n - n w` is how far the
batches drawn so far are from their expected counts (a multinomial walk, mean 0,
covariance `n (diag w - w w^T)`). Through the quadratic model of `L_A` at theta0 the
noise adds

    Q(dev) = -lr a . dev + (lr^2 / 2) dev^T M dev,   a_b = xi_b . grad L_A,
                                                      M_bc = xi_b^T H_A xi_c,

plus a cross term `delta_mean^T H_A e_n` whose mean over draws is 0 (dropped: on the
examples' classifier and a wider one the 5% quantile of the crossings is the same without
it in eight settings, the median within two steps; benchmarks/minibatch_noise.py). A
forecast curve `c(t)` of the mean path becomes, for one sequence of draws, `c(t) + Q(dev(floor(t / lr)))`;
its first crossing of a threshold is random. `noisy_envelope` returns the curve whose
crossing is the `quantile` of that first-crossing time over `draws` simulated sequences:
at each time of the grid, the `(1 - quantile)`-quantile over draws of the running maximum
of `c + Q` (the running maximum is at or above the threshold exactly when that draw has
crossed at one of the grid's times so far: a draw that crosses and falls back between two
of them is missed, so the grid, the forecast's `--points`, should resolve the steps that
matter). `stepped_crossing` reads the envelope's crossing off at whole steps, at the first
step after the last grid time below the threshold (the draws move only at whole steps, so
a log-interpolated time between two grid times could be later than the step they crossed
at).

Draws with replacement are noisier than one pass over shuffled batches per epoch (the
partial sums of a shuffled pass are pinned to 0 at each epoch's end), so for
shuffled-epoch training this model errs early.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from geomsim.theory.laws import first_crossing


class BatchNoise(NamedTuple):
    """The task batches' gradient noise as `L_A`'s quadratic model at theta0 sees it.

    weights: `(b,)` draw probabilities `w_b` (sum 1).
    slope: `(b,)` `a_b = xi_b . grad L_A` (nats per unit step).
    curvature: `(b, b)` `M = Xi H_A Xi^T` (Hessian, GGN or Fisher of `L_A`).
    """

    weights: Float[Array, " b"]
    slope: Float[Array, " b"]
    curvature: Float[Array, "b b"]


def batch_noise(align_matvec: Callable[[Array], Array], align_grad: Float[Array, " d"],
                batch_grads: Float[Array, "b d"], weights: Float[Array, " b"]) -> BatchNoise:
    """`BatchNoise` from the per-batch task gradients `g_b` (rows) and their weights: b
    products with `H_A`, one batch at a time (`lax.map`: one product's memory)."""
    xi = batch_grads - weights @ batch_grads
    curvature = jax.lax.map(lambda row: xi @ align_matvec(row), xi)  # row b: xi H_A xi_b, one product at a time
    return BatchNoise(weights, xi @ align_grad, 0.5 * (curvature + curvature.T))


def batch_noise_bytes(batches: int, dim: int, itemsize: int) -> int:
    """Memory `batch_noise` holds at once: the per-batch gradients and their deviations,
    `2 b d` numbers (the products with `H_A` are taken one row at a time)."""
    return 2 * batches * dim * itemsize


def noise_draws(noise: BatchNoise, times: Float[Array, " r"], lr: ArrayLike, key: PRNGKeyArray,
                draws: int) -> Float[Array, "draws r"]:
    """`Q(dev(floor(t / lr)))` at every time for `draws` independent sequences of batch
    draws (one multinomial increment per interval of the time grid: exact counts)."""
    steps = jnp.floor(times / lr)
    increments = jnp.diff(steps, prepend=0.0)
    w = noise.weights

    def step(counts, item):
        n_new, n_total, k = item
        counts = counts + jax.random.multinomial(k, n_new, w, shape=(draws, w.shape[0]), dtype=counts.dtype)
        dev = counts - n_total * w
        q = -lr * dev @ noise.slope + 0.5 * lr**2 * jnp.einsum("nb,bc,nc->n", dev, noise.curvature, dev)
        return counts, q

    keys = jax.random.split(key, times.shape[0])
    _, q = jax.lax.scan(step, jnp.zeros((draws, w.shape[0]), times.dtype), (increments, steps, keys))
    return q.T


def noisy_envelope(curve: Float[Array, " r"], draws: Float[Array, "draws r"], quantile: float) -> Float[Array, " r"]:
    """The curve whose first crossing of any threshold is the `quantile` of the first-crossing
    time of `curve + Q` over the draws (the module docstring)."""
    running = jax.lax.cummax(curve[None, :] + draws, axis=1)
    return jnp.quantile(running, 1.0 - quantile, axis=0)


def noisy_forecasts(noise: BatchNoise, times: Float[Array, " r"], curves: dict[str, Array], lr: ArrayLike,
                    threshold: ArrayLike, key: PRNGKeyArray, draws: int, quantile: float
                    ) -> tuple[dict[str, Array], dict[str, Array]]:
    """Each mean-path forecast curve with the batches' noise: its envelope (`noisy_envelope`)
    and that envelope's crossing at whole steps (`stepped_crossing`), every method on one set
    of `draws` simulated draw sequences (`noise_draws`)."""
    q = noise_draws(noise, times, lr, key, draws)
    envelopes = {name: noisy_envelope(jnp.asarray(curve, times.dtype), q, quantile) for name, curve in curves.items()}
    return envelopes, {name: stepped_crossing(times, curve, threshold, lr) for name, curve in envelopes.items()}


def stepped_crossing(times: Float[Array, " r"], envelope: Float[Array, " r"], threshold: ArrayLike,
                     lr: ArrayLike) -> Array:
    """The envelope's first crossing of `threshold`, at whole steps: the first step after the
    last grid time below it (the earlier of that and the log-interpolated crossing); the
    first grid time when it is already above there; inf if never."""
    above = jnp.isfinite(envelope) & (envelope >= threshold)
    k = jnp.argmax(above)
    step_after = (jnp.floor(times[jnp.maximum(k - 1, 0)] / lr) + 1) * lr
    interpolated = first_crossing(times, envelope, threshold)
    return jnp.where(above.any(), jnp.where(k > 0, jnp.minimum(interpolated, step_after), times[0]), jnp.inf)
