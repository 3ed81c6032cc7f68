"""Forecasts of `Delta L_A(t)` before fine-tuning, as pure functions of t.

* `quadratic_flow`: gradient flow on the local quadratic model of `L_F` at
  theta0, `delta(t) = -t phi_1(-t H_F) g`, plugged into the local quadratic
  model of `L_A` (gradient plus Hessian, GGN or Fisher). Matrix-free: Lanczos on
  `H_F` started at g (matfree's `tridiag_sym`, full reorthogonalisation) gives
  `K_m(H_F, g) = span(V)` and `T = V H_F V^T`; then `delta(t) = V^T y(t)`,
  `y(t) = -||g|| Q diag(-expm1(-t theta) / theta) Q^T e_1` with `T = Q diag(theta)
  Q^T`, and `Delta L_A = b.y + y^T M y / 2` with `b = V grad L_A`, `M = V H_A V^T`
  (m products with H_A). Bounded for every t when `H_F` is PSD on the Krylov
  space, and exact on quadratic landscapes once the Krylov space is invariant
  (m >= its dimension; *tested* to 1e-8 against the exact flow).
* `quadratic_gd`: the same for gradient descent with step `lr`:
  `y_n = -||g|| Q diag((1 - (1 - lr theta)^n) / theta) Q^T e_1`.
* `taylor`: `sum_j c_j t^j` (exact as t -> 0, unbounded beyond its radius).
* `paper_bound`: the AIC lower bound `lambda gamma^2 t^4 / 8`.
* `alignment_risk`: the formula of the `alignment-risk` package,
  `drift = max(gamma t^2 / 2 - eps t, 0)`, `(1/2) lambda_min drift^2`.

* `linearized_gd`: GD on the linearised network under its true task loss, in a Krylov
  space, with `L_A` exact along the path (the best single forecast measured on the testbed:
  docs/theory.md, section 10).
* `adam_sign`: Adam and AdamW in their flow limit. Adam's normalised,
  coordinate-wise step is not a function of `H_F` and g (tests/test_optimizer_claims.py:
  its onset is `t^2` from the sign of g even with no coupling), so the Krylov models
  above do not apply. As lr -> 0 at fixed t = steps x lr, its moment averages follow
  the gradient within 1/(1-b1) and 1/(1-b2) steps, i.e. instantly in t, and the path is
  `delta(t) = -t u` with `u = g / (sqrt(v) + eps) + wd theta0` (v = E[g_b^2] over the
  batches it draws; wd: AdamW's decoupled decay) until a coordinate's gradient changes
  sign; then `Delta L_A = -t grad L_A . u + (t^2 / 2) u^T H_A u`
  (`adam_model`, one product with H_A; a coordinate with zero gradient moves
  along the sign of `H_F u` instead, one product with H_F).  Its first step is
  exactly Adam's (bias correction makes `m_hat_1 = g`, `v_hat_1 = g^2`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, ArrayLike, Float
from matfree.decomp import tridiag_sym

from geomsim.dynamics.flow import flow_factor
from geomsim.landscapes.base import Landscape, flatten_displacement
from geomsim.theory.laws import first_crossing, polynomial_value


class LocalModels(eqx.Module):
    """The local quadratic models of `L_F` and `L_A` at theta0 on `K_m(H_F, g)`.

    ritz_values: `(m,)` eigenvalues theta of `T = V H_F V^T` (loss / param^2).
    ritz_vectors: `(m, m)` eigenvectors Q of T (columns).
    grad_norm: `||g||`, g = grad L_F(theta0).
    align_grad: `(m,)` `V grad L_A(theta0)`.
    align_hess: `(m, m)` `V H_A V^T` (Hessian, GGN or Fisher, whichever matvec was given).
    num_matvecs: products with H_F and with H_A (m each).
    """

    ritz_values: Float[Array, " m"]
    ritz_vectors: Float[Array, "m m"]
    grad_norm: Float[Array, ""]
    align_grad: Float[Array, " m"]
    align_hess: Float[Array, "m m"]
    num_matvecs: int = eqx.field(static=True)


def local_models(num_matvecs: int) -> Callable[..., LocalModels]:
    """Build `models(task_matvec, align_matvec, g, align_grad) -> LocalModels`.

    Args:
        num_matvecs: m >= 1, the Krylov depth (products with each operator);
            at most the dimension d.

    The returned function takes flat `(d,)` vectors: `task_matvec(v) = H_F v`,
    `align_matvec(v) = H_A v`, `g = grad L_F(theta0)`, `align_grad = grad L_A(theta0)`.
    """
    if not isinstance(num_matvecs, int) or num_matvecs < 1:
        raise ValueError(f"num_matvecs: must be an integer >= 1 (got {num_matvecs!r})")
    decompose = tridiag_sym(num_matvecs, reortho="full")

    def models(task_matvec, align_matvec, g: Float[Array, " d"], align_grad: Float[Array, " d"]) -> LocalModels:
        if num_matvecs > g.shape[0]:
            raise ValueError(f"num_matvecs: must be <= d = {g.shape[0]} (got {num_matvecs})")
        result = decompose(task_matvec, g)
        basis = result.Q_tall  # (m, d): orthonormal rows, the first g / ||g||
        tridiag = 0.5 * (result.J_small + result.J_small.T)
        theta, q = jnp.linalg.eigh(tridiag)
        # One product at a time: m simultaneous products (a vmap) hold m copies of the
        # activations, gigabytes on a transformer's alignment set; and each is projected
        # as it comes (`V H_A v_i`, m numbers), so the m products never stand as an
        # (m, d) array beside the basis (on a 9M-parameter Llama that array was a third
        # of the diagnosis's memory).
        projected = jax.lax.map(lambda v: basis @ align_matvec(v), basis)
        return LocalModels(theta, q, jnp.linalg.norm(g), basis @ align_grad, 0.5 * (projected + projected.T),
                           num_matvecs)

    return models


def linearized_gd(output_fn: Callable[[Array], Any], output_loss: Callable[[Any], Array],
                  align_loss: Callable[[Array], Array], flat0: Float[Array, " d"], basis: Float[Array, "m d"],
                  steps: ArrayLike, lr: ArrayLike) -> Float[Array, " r"]:
    """Forecast `Delta L_A` after `steps` GD steps of size `lr` on the *linearised network*
    under its true task loss, with `L_A` evaluated exactly along that path.

    The task model is `L(y) = output_loss(f(theta0) + J V^T y)` on the rows V of `basis`
    (orthonormal, e.g. the Krylov space of the Gauss-Newton matrix from g): convex in y when
    the loss is convex in the outputs, bounded below, and saturating as the task is learned,
    where the quadratic models keep moving. Its m tangents `J v_i` are computed once (m JVPs;
    stored: m x the outputs, so for small models, not LLM vocabularies), then every GD step is
    a contraction. `Delta L_A = align_loss(theta0 + V^T y_n) - align_loss(theta0)`: exact in
    `L_A`, one evaluation per recorded step (the quadratic model of `L_A` was a median 0.06 of
    the exact damage at the measured crossings on the testbed: docs/theory.md, section 10).

    Args:
        output_fn: flat parameters -> outputs (any pytree of arrays), e.g. the task's logits.
        output_loss: outputs -> the task loss.
        align_loss: flat parameters -> `L_A`.
        flat0: theta0 (flat); basis: `(m, d)`; steps: increasing integer counts `(r,)` (may
            be traced); lr: the GD step.
    """
    outputs0 = output_fn(flat0)
    # one tangent at a time (a vmap would hold m copies of the activations)
    tangents = jax.lax.map(lambda v: jax.jvp(output_fn, (flat0,), (v,))[1], basis)

    def loss(y):
        return output_loss(jax.tree.map(lambda f, j: f + jnp.tensordot(y, j, axes=1), outputs0, tangents))

    grad = jax.grad(loss)

    def segment(y, count):
        y = jax.lax.fori_loop(0, count, lambda _, z: z - lr * grad(z), y)
        return y, y

    counts = jnp.diff(jnp.asarray(steps).astype(jnp.int32), prepend=0)
    _, ys = jax.lax.scan(segment, jnp.zeros(basis.shape[0], flat0.dtype), counts)
    a0 = align_loss(flat0)
    return jax.lax.map(lambda y: align_loss(flat0 + y @ basis) - a0, ys)


def krylov_basis(num_matvecs: int) -> Callable[[Callable[[Array], Array], Array], Float[Array, "m d"]]:
    """`basis(matvec, g)`: orthonormal rows spanning `K_m(A, g)` (matfree's Lanczos, full
    reorthogonalisation; the first row g / ||g||), as `local_models` builds them."""
    decompose = tridiag_sym(num_matvecs, reortho="full")
    return lambda matvec, g: decompose(matvec, g).Q_tall


def _landscape_gradients(landscape: Landscape) -> tuple[Array, Callable[[Array], Array], Callable[[Array], Array]]:
    """`(zeros(d), grad L_F, grad L_A)` of a landscape as functions of the flat displacement."""
    zero, unravel = flatten_displacement(landscape)

    def flat_grad(loss):
        return lambda x: ravel_pytree(jax.grad(loss)(unravel(x)))[0]

    return zero, flat_grad(landscape.displaced_task_loss), flat_grad(landscape.align_increase)


def landscape_products(landscape: Landscape) -> tuple[Array, Array, Callable[[Array], Array], Callable[[Array], Array]]:
    """`(g, grad L_A, v -> H_F v, v -> H_A v)` of a landscape at theta0, flat (Hessians by
    forward-over-reverse products)."""
    zero, task_grad, align_grad = _landscape_gradients(landscape)

    def product(grad_fn):
        return lambda v: jax.jvp(grad_fn, (zero,), (v,))[1]

    return task_grad(zero), align_grad(zero), product(task_grad), product(align_grad)


def defended_products(task_matvec: Callable[[Array], Array], align_matvec: Callable[[Array], Array],
                      g: Float[Array, " d"], align_grad: Float[Array, " d"],
                      projector: Callable[[Array], Array] | None = None, replay: ArrayLike = 0.0
                      ) -> tuple[Callable[[Array], Array], Float[Array, " d"]]:
    """`(v -> H v, g)` of the fine-tune a defense runs, for `local_models`.

    A static projection P chained after the optimizer moves along `-P grad`, so its
    local model is `P H_F P` and `P g`; replay of alignment data with weight beta
    descends `L_F + beta L_A`: `H_F + beta H_A` and `g + beta grad L_A` (both together:
    `P (H_F + beta H_A) P`, `P (g + beta grad L_A)`). `task_change_*` recover `L_F`'s own
    model from the same Krylov space.
    """
    project = projector if projector is not None else (lambda v: v)
    replay = jnp.asarray(replay, g.dtype)  # a float64 beta would promote float32 vectors (and their jvps)

    def matvec(v):
        pv = project(v)
        return project(task_matvec(pv) + replay * align_matvec(pv))

    return matvec, project(g + replay * align_grad)


def landscape_local_models(landscape: Landscape, num_matvecs: int,
                           projector: Callable[[Array], Array] | None = None, replay: ArrayLike = 0.0
                           ) -> LocalModels:
    """`local_models` of a landscape at theta0, of the fine-tune a defense runs
    (`defended_products`: a static projection P and / or replay weight beta)."""
    g, align_grad, task_matvec, align_matvec = landscape_products(landscape)
    matvec, grad = defended_products(task_matvec, align_matvec, g, align_grad, projector, replay)
    return local_models(num_matvecs)(matvec, align_matvec, grad, align_grad)


class AdamModel(eqx.Module):
    """Adam's flow-limit model of `Delta L_A` at theta0 (`adam_model`).

    slope: `-grad L_A . u` (nats per unit t); curvature: `u^T H_A u` (nats per t^2);
    step_norm: `||u||`, the displacement per unit t (Adam's is ~sqrt(d), GD's `||g||`);
    task_slope, task_curvature: `-g . u` and `u^T H_F u`, the same model of `L_F`
    (`adam_task`: the task progress);
    where `u = g / (sqrt(v) + eps) + wd theta0` is Adam's update per unit lr.
    """

    slope: Float[Array, ""]
    curvature: Float[Array, ""]
    step_norm: Float[Array, ""]
    task_slope: Float[Array, ""]
    task_curvature: Float[Array, ""]


# A coordinate whose gradient is zero at theta0 gets one from the task curvature,
# `-t (H_F u)_i`, growing linearly; over n << 1/(1 - b2) steps Adam's m_hat / sqrt(v_hat)
# of such a gradient tends to sqrt(3) (v_hat averages (c k)^2 over k <= n), and to 1
# later. sqrt(3) errs early: with S on coordinate axes (tests/test_optimizer_claims.py)
# the measured Delta L_A is 0.42-0.75x this model's over 3000-30000 steps, 1.3-2.2x
# the model's with 1 (late, the unsafe side).
STILL_SPEED = 3.0**0.5


def adam_model(align_matvec: Callable[[Array], Array], task_matvec: Callable[[Array], Array],
               align_grad: Float[Array, " d"], grad: Float[Array, " d"], second_moment: Float[Array, " d"],
               params: Float[Array, " d"], eps: ArrayLike, weight_decay: ArrayLike = 0.0,
               projector: Callable[[Array], Array] | None = None, replay: ArrayLike = 0.0) -> AdamModel:
    """`AdamModel` from flat `(d,)` vectors at theta0 (three products: two with H_F, one with H_A).

    Args:
        align_matvec: `v -> H_A v` (the Hessian of L_A, or its GGN / Fisher).
        task_matvec: `v -> H_F v`: where Adam does not move at theta0 (`sqrt(v) <= eps`,
            a zero gradient) it moves as soon as the task curvature gives it a gradient,
            at `STILL_SPEED` along `sign(H_F u)` (`u_i = -STILL_SPEED sign((H_F u)_i)`).
        align_grad: `grad L_A(theta0)`.
        grad: g, the mean task gradient `E_b[g_b]` (Adam's first moment).
        second_moment: `E_b[g_b^2]` over the batches the fine-tune draws (`g^2`
            for full-batch Adam): Adam's second moment once its average settles.
        params: theta0 (flat), which AdamW's decoupled weight decay pulls on.
        eps: Adam's eps (optax's default 1e-8); weight_decay: AdamW's (0 = Adam).
        projector: optional P of a static projection chained after Adam: the step is `P u`.
        replay: weight beta of alignment data replayed into every batch: Adam's gradient is
            `g + beta grad L_A` (`second_moment` must be that gradient's); the task model
            stays `L_F`'s.
    """
    root = jnp.sqrt(second_moment)
    u = (grad + jnp.asarray(replay, grad.dtype) * align_grad) / (root + eps)
    u = jnp.where(root <= eps, -STILL_SPEED * jnp.sign(task_matvec(u)), u) + weight_decay * params
    if projector is not None:
        u = projector(u)
    return AdamModel(-(align_grad @ u), u @ align_matvec(u), jnp.linalg.norm(u), -(grad @ u), u @ task_matvec(u))


def landscape_adam_model(landscape: Landscape, eps: ArrayLike, weight_decay: ArrayLike = 0.0,
                         projector: Callable[[Array], Array] | None = None) -> AdamModel:
    """`adam_model` of full-batch Adam / AdamW on a landscape at theta0 (v = g^2)."""
    g, align_grad, task_matvec, align_matvec = landscape_products(landscape)
    return adam_model(align_matvec, task_matvec, align_grad, g, g**2, ravel_pytree(landscape.theta0)[0], eps,
                      weight_decay, projector)


def adam_sign(model: AdamModel, times: Float[Array, " r"]) -> Float[Array, " r"]:
    """Forecast `Delta L_A(t) = slope t + curvature t^2 / 2` of Adam / AdamW (t = steps x lr)."""
    return model.slope * times + 0.5 * model.curvature * times**2


def adam_task(model: AdamModel, times: Float[Array, " r"]) -> Float[Array, " r"]:
    """`Delta L_F(t) = task_slope t + task_curvature t^2 / 2` on the same path (negative: progress)."""
    return model.task_slope * times + 0.5 * model.task_curvature * times**2


def adam_time_scale(model: AdamModel, threshold: ArrayLike) -> Array:
    """`tau / (|slope| + sqrt(|curvature| tau / 2))`: within 2x of the time `adam_sign` needs to
    reach tau when both terms rise (inf when neither moves L_A); sets the default horizon."""
    rate = jnp.abs(model.slope) + jnp.sqrt(0.5 * jnp.abs(model.curvature) * threshold)
    return jnp.where(rate > 0, threshold / jnp.where(rate > 0, rate, 1.0), jnp.inf)


def _path(models: LocalModels, factors: Float[Array, "r m"]) -> Float[Array, "r m"]:
    """`y = -||g|| Q diag(factor) Q^T e_1` for each row of factors: the displacement in the Krylov basis."""
    return -models.grad_norm * (factors * models.ritz_vectors[0][None, :]) @ models.ritz_vectors.T


def _align_increase(models: LocalModels, factors: Float[Array, "r m"]) -> Float[Array, " r"]:
    """`b.y + y^T M y / 2` with `y = -||g|| Q diag(factor) Q^T e_1` for each row of factors."""
    ys = _path(models, factors)
    return ys @ models.align_grad + 0.5 * jnp.einsum("ri,ij,rj->r", ys, models.align_hess, ys)


def gd_factor(values: Float[Array, " m"], steps: Float[Array, " r"], lr: ArrayLike) -> Float[Array, "r m"]:
    """`lr sum_{j<n} (1 - lr h)^j = (1 - (1 - lr h)^n) / h` per step count and eigenvalue
    (`n lr` at h = 0; expm1/log1p keep it accurate when `lr h` is tiny)."""
    n, h = steps[:, None], values[None, :]
    x = lr * h
    stable = x < 1
    one_minus_power = jnp.where(stable, -jnp.expm1(n * jnp.log1p(-jnp.where(stable, x, 0.0))),
                                1.0 - jnp.power(1.0 - x, n))
    return jnp.where(h == 0, n * lr, one_minus_power / jnp.where(h == 0, 1.0, h))


def _task_change(models: LocalModels, factors: Float[Array, "r m"], replay: ArrayLike) -> Float[Array, " r"]:
    """`Delta L_F` on the same path as `_align_increase`, for models built by
    `defended_products`: on their Krylov space (inside range(P)) `V grad L_F = ||g_def|| e_1 -
    beta V grad L_A` and `V H_F V^T = T - beta V H_A V^T`, so no further products."""
    q, theta = models.ritz_vectors, models.ritz_values
    ys = _path(models, factors)
    e1 = jnp.zeros_like(models.align_grad).at[0].set(1.0)
    grad = models.grad_norm * e1 - replay * models.align_grad
    hess = (q * theta[None, :]) @ q.T - replay * models.align_hess
    return ys @ grad + 0.5 * jnp.einsum("ri,ij,rj->r", ys, hess, ys)


def task_change_gd(models: LocalModels, steps: Float[Array, " r"], lr: ArrayLike,
                   replay: ArrayLike = 0.0) -> Float[Array, " r"]:
    """`Delta L_F` after `steps` GD steps on the local models (negative: task progress); `replay`:
    the beta the models were built with (`defended_products`)."""
    return _task_change(models, gd_factor(models.ritz_values, jnp.asarray(steps, models.grad_norm.dtype), lr), replay)


def task_change_flow(models: LocalModels, times: Float[Array, " r"], replay: ArrayLike = 0.0) -> Float[Array, " r"]:
    """`Delta L_F(t)` under gradient flow on the local models (as `task_change_gd`)."""
    return _task_change(models, flow_factor(models.ritz_values, times), replay)


def quadratic_flow(models: LocalModels, times: Float[Array, " r"]) -> Float[Array, " r"]:
    """Forecast `Delta L_A(t)` under gradient flow on the local models (loss units)."""
    return _align_increase(models, flow_factor(models.ritz_values, times))


def quadratic_gd(models: LocalModels, steps: Float[Array, " r"], lr: ArrayLike) -> Float[Array, " r"]:
    """Forecast `Delta L_A` after `steps` gradient-descent steps of size `lr` on the local models.

    `steps` are integer counts (as floats): where `lr h > 1` the factor `(1 - lr h)^n`
    alternates in sign and is undefined (nan) between integers."""
    return _align_increase(models, gd_factor(models.ritz_values, jnp.asarray(steps, models.grad_norm.dtype), lr))


def taylor(coeffs: Float[Array, " n"], times: Float[Array, " r"]) -> Float[Array, " r"]:
    """`sum_j c_j t^j` at every time."""
    return jax.vmap(lambda t: polynomial_value(coeffs, t))(times)


def paper_bound(sharpness: ArrayLike, coupling: ArrayLike, times: Float[Array, " r"]) -> Float[Array, " r"]:
    """The AIC's quartic lower bound `lambda gamma^2 t^4 / 8`."""
    return jnp.asarray(sharpness) * jnp.asarray(coupling) ** 2 * times**4 / 8.0


def alignment_risk(sharpness_min: ArrayLike, coupling: ArrayLike, eps: ArrayLike,
                   times: Float[Array, " r"]) -> Float[Array, " r"]:
    """`alignment-risk`'s forecast: `drift = max(gamma t^2/2 - eps t, 0)`, `lambda_min drift^2 / 2`.

    Its eps is a first-order overlap in the package's own units (`||P_S g||` as
    a rate); pass `eps * ||g||` for geomsim's dimensionless eps.
    """
    drift = jnp.maximum(jnp.asarray(coupling) * times**2 / 2.0 - jnp.asarray(eps) * times, 0.0)
    return 0.5 * jnp.asarray(sharpness_min) * drift**2


def time_to_failure(times: Float[Array, " r"], forecast: Float[Array, " r"], threshold: ArrayLike) -> Array:
    """First time the forecast reaches `threshold` (log-interpolated; inf if never)."""
    return first_crossing(times, forecast, threshold)


def loglog_at(times: Float[Array, " r"], values: Float[Array, " r"], t: Array) -> Array:
    """A positive sampled curve at time t, interpolated linearly in (log t, log value);
    0 where the curve is <= 0 at either neighbour, nan outside the sampled range."""
    i = jnp.clip(jnp.searchsorted(times, t), 1, times.shape[0] - 1)
    t0, t1, v0, v1 = times[i - 1], times[i], values[i - 1], values[i]
    w = (jnp.log(t) - jnp.log(t0)) / (jnp.log(t1) - jnp.log(t0))
    positive = (v0 > 0) & (v1 > 0)
    logv = (1 - w) * jnp.log(jnp.where(positive, v0, 1.0)) + w * jnp.log(jnp.where(positive, v1, 1.0))
    inside = (t >= times[0]) & (t <= times[-1])
    return jnp.where(inside, jnp.where(positive, jnp.exp(logv), 0.0), jnp.nan)


def rescaled_crossing(times: Float[Array, " r"], curve: Float[Array, " r"], t_n: Array, measured: Array,
                      threshold: Array) -> tuple[Array, Array, Array]:
    """A pilot's correction of one forecast: `(forecast(t_n), measured / forecast(t_n), the
    rescaled curve's first crossing of threshold)`, where `measured` is `Delta L_A` measured
    at `t_n` (the pilot's end).

    `forecast(t_n)` is the curve between its two samples around `t_n`, log-log, when both are
    positive; below the first sample, that sample times `(t_n / t_0)^2` (the onset's t^2) when
    it is positive; nan otherwise and beyond the last. The ratio is nan unless both values are
    positive and finite, and so is the crossing, which is searched from the pilot's own point
    on (the samples up to `t_n` stand at it, so the shapes stay the grid's). Pure; vmap it
    over curves or runs (`geomsim.diagnose.pilot`, the testbed's forecast validation)."""
    inside = loglog_at(times, curve, t_n)
    below = jnp.where(curve[0] > 0, curve[0] * (t_n / times[0]) ** 2, jnp.nan)
    at = jnp.where(t_n < times[0], below, jnp.where(inside > 0, inside, jnp.nan))
    ratio = jnp.where((at > 0) & jnp.isfinite(at) & (measured > 0), measured / at, jnp.nan)  # an overflow: none
    later = times > t_n
    ts = jnp.concatenate([t_n[None], jnp.where(later, times, t_n)])
    values = jnp.concatenate([measured[None], jnp.where(later, ratio * curve, measured)])
    return at, ratio, jnp.where(jnp.isfinite(ratio), first_crossing(ts, values, threshold), jnp.nan)


def forecast_errors(measured_times: Float[Array, " n"], measured: Float[Array, " n"], times: Float[Array, " r"],
                    forecast: Float[Array, " r"], levels: Float[Array, " L"]
                    ) -> tuple[Float[Array, " L"], Float[Array, " L"], Float[Array, " L"]]:
    """How far a forecast is from a measured `Delta L_A` curve, level by level.

    For each level (nats): `t_meas`, the first time the measured curve reaches
    it (inf if never); `log10_error = |log10(forecast(t_meas) / level)|` (inf
    when the forecast is <= 0 there, nan when the level is never reached); and
    `t_ratio = t_fail(forecast) / t_meas` (inf when the forecast never reaches
    the level on `times`, nan when the measurement never does).  Both curves
    are sampled on increasing times (same units); pure, vmap it over runs.
    """
    t_meas = jax.vmap(lambda lv: first_crossing(measured_times, measured, lv))(levels)
    t_fcst = jax.vmap(lambda lv: first_crossing(times, forecast, lv))(levels)
    reached = jnp.isfinite(t_meas)
    at = jax.vmap(lambda t: loglog_at(times, forecast, t))(jnp.where(reached, t_meas, times[0]))
    error = jnp.where(at > 0, jnp.abs(jnp.log10(jnp.where(at > 0, at, 1.0) / levels)), jnp.inf)
    error = jnp.where(reached & ~jnp.isnan(at), error, jnp.nan)
    ratio = jnp.where(reached, t_fcst / jnp.where(reached, t_meas, 1.0), jnp.nan)
    return t_meas, error, ratio
