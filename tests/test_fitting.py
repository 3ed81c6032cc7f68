"""The onset fit reports the exponent the data have: 2, 4, 6 or anything else."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geomsim.dynamics import descend, gradient_flow, log_record_steps, make_optimizer
from geomsim.fitting import FIT_NO_PLATEAU, FIT_NO_SIGNAL, FIT_OK, fit_onset, local_slopes
from geomsim.landscapes import quadratic_cubic
from geomsim.theory import align_coefficients, falling_factorial_basis

TS = jnp.geomspace(1e-4, 1.0, 120)


@settings(max_examples=30, deadline=None)
@given(power=st.floats(0.5, 8.0), log_pref=st.floats(-8.0, 4.0), bend=st.floats(-0.9, 0.9))
def test_recovers_arbitrary_power_laws(power, log_pref, bend):
    y = 10.0**log_pref * TS**power * (1.0 + bend * TS)
    fit = fit_onset(TS, y)
    assert int(fit.status) == FIT_OK
    assert abs(float(fit.exponent) - power) < 0.05
    assert float(fit.exponent_lo) <= power + 1e-3 and float(fit.exponent_hi) >= power - 1e-3
    if abs(power - round(power)) < 1e-9:
        np.testing.assert_allclose(fit.prefactor, 10.0**log_pref, rtol=1e-2)


@pytest.mark.parametrize("power", [2, 3, 4, 5, 6])
def test_integer_powers_and_prefactors(power):
    y = 0.37 * TS**power * (1.0 - 0.5 * TS)
    fit = fit_onset(TS, y)
    np.testing.assert_allclose(fit.exponent, power, atol=0.03)
    assert int(fit.power) == power
    np.testing.assert_allclose(fit.prefactor, 0.37, rtol=2e-3)


def test_crossover_reports_the_early_power():
    # c2 t^2 + c4 t^4 with the crossover at t = 1e-2: the onset is t^2.
    y = 1e-4 * TS**2 + TS**4
    fit = fit_onset(TS, y)
    np.testing.assert_allclose(fit.exponent, 2.0, atol=0.05)
    assert float(fit.window_hi) < 1e-2


def test_later_saturation_is_not_the_onset():
    y = TS**4 / (1e-8 + TS**4)  # quartic onset, then flat at 1
    fit = fit_onset(TS, y)
    np.testing.assert_allclose(fit.exponent, 4.0, atol=0.05)


def test_no_signal_and_no_plateau():
    assert int(fit_onset(TS, jnp.zeros_like(TS)).status) == FIT_NO_SIGNAL
    assert int(fit_onset(TS, jnp.full_like(TS, 1e-30), floor=1e-20).status) == FIT_NO_SIGNAL
    wiggly = TS**2 * jnp.exp(2.0 * jnp.sin(8 * jnp.log(TS)))
    fit = fit_onset(TS, wiggly)
    assert int(fit.status) == FIT_NO_PLATEAU
    assert jnp.isnan(fit.exponent)


def test_noise_floor_excludes_round_off():
    rng = np.random.default_rng(0)
    y = TS**4 + 1e-14 * rng.standard_normal(TS.shape)  # round-off below ~1e-14
    fit = fit_onset(TS, jnp.asarray(y), floor=1e-12)
    np.testing.assert_allclose(fit.exponent, 4.0, atol=0.02)
    assert float(fit.window_lo) > 1e-3


def test_local_slopes_of_a_power_law():
    s = local_slopes(TS, TS**3)
    assert jnp.all(jnp.isnan(s[:2])) and jnp.all(jnp.isnan(s[-2:]))
    np.testing.assert_allclose(s[2:-2], 3.0, atol=1e-10)


def test_fit_vmaps():
    ys = jnp.stack([TS**2, TS**4, TS**6])
    fits = jax.vmap(lambda y: fit_onset(TS, y))(ys)
    np.testing.assert_allclose(fits.exponent, [2, 4, 6], atol=1e-6)


# --- The negative controls of theory.md, end to end on the landscape ---

def _flow_fit(**kw):
    land = quadratic_cubic(jax.random.key(0), dim=24, rank=3, sharpness=10.0, **kw)
    traj = gradient_flow(land, jnp.geomspace(1e-4, 1.0, 120), land.basis)
    floor = 100 * jnp.finfo(jnp.float64).eps * 10.0 * traj.delta_norm**2
    return fit_onset(traj.time, traj.align_increase, floor), align_coefficients(land, 6)


def test_aic_holds_quartic_with_the_predicted_prefactor():
    fit, c = _flow_fit(coupling=0.5)
    np.testing.assert_allclose(fit.exponent, 4.0, atol=0.05)
    np.testing.assert_allclose(fit.prefactor / c[4], 1.0, rtol=1e-3)


def test_control_cubic_only_coupling_gives_t6():
    fit, c = _flow_fit(coupling=0.0, cubic_coupling=0.5)
    np.testing.assert_allclose(fit.exponent, 6.0, atol=0.05)
    np.testing.assert_allclose(fit.prefactor / c[6], 1.0, rtol=1e-2)


@pytest.mark.parametrize("kw", [dict(mu=1e-3), dict(eps=1e-2)])
def test_control_mu_or_eps_gives_early_t2(kw):
    fit, c = _flow_fit(coupling=0.5, **kw)
    np.testing.assert_allclose(fit.exponent, 2.0, atol=0.05)
    np.testing.assert_allclose(fit.prefactor / c[2], 1.0, rtol=1e-2)


def test_control_no_coupling_gives_no_growth():
    fit, _ = _flow_fit(coupling=0.0)
    assert int(fit.status) == FIT_NO_SIGNAL


def test_discrete_gd_with_falling_factorial_basis():
    land = quadratic_cubic(jax.random.key(1), dim=24, rank=3, sharpness=10.0, coupling=0.5)
    lr = 1e-4
    traj = descend(land, make_optimizer("gd", lr), log_record_steps(10_000, 120), lr, land.basis)
    basis = jnp.stack([falling_factorial_basis(traj.steps, lr, p) for p in range(9)])
    fit = fit_onset(traj.time, traj.align_increase, 0.0, basis)
    np.testing.assert_allclose(fit.exponent, 4.0, atol=0.05)
    np.testing.assert_allclose(fit.prefactor, 10.0 * 0.25 / 8, rtol=5e-3)
