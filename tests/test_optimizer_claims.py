"""The README's optimizer findings, asserted against closed forms.

* Gradient descent follows the quartic law `lambda gamma^2 t^4 / 8` (eps = mu = 0).
* Adam's onset is `t^2`, and the cause is its coordinate-wise normalisation,
  which gives S a first-order velocity (a) at once when S is not a set of
  coordinate axes: with a constant gradient its first steps move along
  `-sign(g)`, which has a component in S, so `Delta L_A ~ (1/2) sign(g)^T H_A
  sign(g) t^2` even with no coupling at all; (b) otherwise as soon as `H_F`
  rotates the gradient into S: any nonzero gradient coordinate gets an O(lr)
  step however small it is. With S on coordinate axes and no coupling, Adam
  leaves L_A exactly unchanged (the negative control).
* Heavy-ball momentum runs on an effective time `t / (1 - beta)`: its curve
  approaches the GD curve with step `lr / (1 - beta)` as the momentum's warm-up
  lag (`beta / (1 - beta)` steps) becomes a small part of the run.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from geomsim.dynamics import descend, log_record_steps
from geomsim.fitting import FIT_OK, MAX_POWER, fit_onset
from geomsim.landscapes import quadratic_cubic
from geomsim.theory import falling_factorial_basis
from geomsim.theory.forecast import adam_sign, landscape_adam_model

LR = 1e-5
STEPS = 3000
SHARPNESS, COUPLING = 10.0, 0.5


def landscape(coupling=COUPLING, seed=0):
    return quadratic_cubic(jax.random.key(seed), dim=16, rank=2, sharpness=SHARPNESS, coupling=coupling)


def run(land, optimizer, lr=LR, steps=STEPS, records=60):
    traj = descend(land, optimizer, log_record_steps(steps, records), lr, land.basis)
    return np.asarray(traj.time), np.asarray(traj.align_increase)


@pytest.mark.parametrize("seed", [0, 1])
def test_gradient_descent_follows_the_quartic_law(seed):
    t, y = run(landscape(seed=seed), optax.sgd(LR))
    steps = jnp.asarray(t / LR)
    discrete = jnp.stack([falling_factorial_basis(steps, LR, p) for p in range(MAX_POWER + 1)])
    fit = fit_onset(jnp.asarray(t), jnp.asarray(y), floor=1e-30, time_basis=discrete)
    assert int(fit.status) == FIT_OK
    assert abs(float(fit.exponent) - 4.0) < 0.1
    np.testing.assert_allclose(float(fit.prefactor), SHARPNESS * COUPLING**2 / 8, rtol=0.02)


@pytest.mark.parametrize("coupling", [COUPLING, 0.0])
def test_adam_onset_is_quadratic_from_coordinatewise_normalisation(coupling):
    land = landscape(coupling)
    t, y = run(land, optax.adam(LR))
    fit = fit_onset(jnp.asarray(t), jnp.asarray(y), floor=1e-30)
    assert int(fit.status) == FIT_OK
    assert abs(float(fit.exponent) - 2.0) < 0.1, float(fit.exponent)
    direction = jnp.sign(land.grad_task)
    c2 = 0.5 * direction @ land.hess_align @ direction
    np.testing.assert_allclose(float(fit.prefactor), float(c2), rtol=0.05)
    # Same landscape, same time span: gradient descent stays orders of magnitude lower (or at 0).
    _, y_gd = run(land, optax.sgd(LR))
    assert y[-1] > 100 * max(y_gd[-1], 0.0)


def axis_aligned(land):
    """The same landscape in coordinates where S is axes 0..k-1 and g is axis k."""
    g = np.asarray(land.grad_task)
    dim, rank = g.shape[0], land.basis.shape[0]
    q = np.linalg.qr(np.concatenate([np.asarray(land.basis).T, g[:, None]], axis=1))[0]
    rest = np.linalg.svd(np.eye(dim) - q @ q.T)[0][:, : dim - rank - 1]
    rotation = np.concatenate([q, rest], axis=1).T

    def clean(x):  # exact zeros where the rotation leaves round-off: Adam would normalise it to O(1)
        return jnp.asarray(np.where(np.abs(x) < 1e-12, 0.0, x))

    return type(land)(
        theta0=land.theta0,
        hess_align=clean(rotation @ land.hess_align @ rotation.T),
        grad_task=clean(rotation @ g),
        hess_task=clean(rotation @ land.hess_task @ rotation.T),
        basis=clean(land.basis @ rotation.T),
        task_cubic_coef=land.task_cubic_coef,
        task_cubic_dirs=clean(land.task_cubic_dirs @ rotation.T),
        align_cubic_coef=land.align_cubic_coef,
        align_cubic_dirs=clean(land.align_cubic_dirs @ rotation.T),
        rotate_coef=land.rotate_coef,
        rotate_dirs=clean(land.rotate_dirs @ rotation.T),
        task_is_quadratic=land.task_is_quadratic,
    )


def test_adam_on_coordinate_axes_moves_into_s_only_through_the_coupling():
    control = axis_aligned(landscape(coupling=0.0))
    assert np.all(np.asarray(control.grad_task)[:2] == 0.0) and np.asarray(control.grad_task)[2] != 0.0
    _, y = run(control, optax.adam(LR))
    np.testing.assert_array_equal(y, 0.0)  # negative control: no coupling, no S motion, no harm
    t, y = run(axis_aligned(landscape()), optax.adam(LR))
    late = t >= 1e-3
    slope = np.polyfit(np.log(t[late]), np.log(y[late]), 1)[0]
    assert abs(slope - 2.0) < 0.2, slope


def test_adams_forecast_on_coordinate_axes_moves_the_still_coordinates_and_errs_early():
    """g is zero on S: `g / (|g| + eps)` alone would forecast no harm at all (infinitely late).
    The forecast moves those coordinates along sign(H_F u) at sqrt(3): over the second
    half of the run the measured Delta L_A is 0.59-0.71x the forecast (early), i.e.
    the crossing within 2x; with no coupling both stay exactly 0 (the control)."""
    control = axis_aligned(landscape(coupling=0.0))
    t, y = run(control, optax.adam(LR))
    np.testing.assert_array_equal(adam_sign(landscape_adam_model(control, 1e-8), jnp.asarray(t)), 0.0)
    coupled = axis_aligned(landscape())
    t, y = run(coupled, optax.adam(LR))
    forecast = np.asarray(adam_sign(landscape_adam_model(coupled, 1e-8), jnp.asarray(t)))
    late = t >= t[len(t) // 2]
    ratio = y[late] / forecast[late]
    assert np.all((ratio >= 0.25) & (ratio <= 1.0)), ratio  # t^2: a 4x amplitude is a 2x crossing time


def test_momentum_runs_on_effective_time_t_over_one_minus_beta():
    beta = 0.9
    land = landscape()
    record = log_record_steps(STEPS, 40)
    mom = np.asarray(descend(land, optax.sgd(LR, momentum=beta), record, LR).align_increase)
    fast_gd = np.asarray(descend(land, optax.sgd(LR / (1 - beta)), record, LR).align_increase)
    plain_gd = np.asarray(descend(land, optax.sgd(LR), record, LR).align_increase)
    late = record >= 300
    ratio = mom[late] / fast_gd[late]
    # The lag costs a fraction ~ 2 * 4 * beta / ((1 - beta) n) of the quartic; it shrinks as n grows.
    np.testing.assert_allclose(ratio[-1], 1.0, atol=0.05)
    assert np.all(np.diff(ratio) > 0) and np.all(ratio < 1.0)
    # Against plain GD at the same t: (1 / (1 - beta))^4 = 1e4 larger, less that lag.
    assert 0.9e4 < mom[-1] / plain_gd[-1] < 1e4
