"""Closed-form laws: thresholds, crossover, discrete-GD correction."""

import jax.numpy as jnp
import numpy as np

from geomsim.dynamics import descend, log_record_steps, make_optimizer
from geomsim.landscapes import quadratic_cubic
from geomsim.theory import (
    crossover_time,
    discrete_gd_quartic,
    falling_factorial_basis,
    first_crossing,
    quartic_law,
    quartic_time_to_failure,
    time_to_threshold,
)


def test_time_to_failure_inverts_the_quartic_law():
    c4 = quartic_law(20.0, 0.3)
    t_star = quartic_time_to_failure(c4, 1e-3)
    np.testing.assert_allclose(t_star, (8 * 1e-3 / (20.0 * 0.09)) ** 0.25, rtol=1e-12)
    np.testing.assert_allclose(c4 * t_star**4, 1e-3, rtol=1e-12)
    assert jnp.isinf(quartic_time_to_failure(0.0, 1e-3))


def test_time_to_threshold_on_polynomials():
    coeffs = jnp.array([0.0, 0.0, 1e-4, 0.0, 2.0])
    t = time_to_threshold(coeffs, 1e-2, 10.0)
    np.testing.assert_allclose(1e-4 * t**2 + 2.0 * t**4, 1e-2, rtol=1e-4)
    assert jnp.isinf(time_to_threshold(coeffs, 1e9, 1.0))


def test_first_crossing_interpolates_power_laws_exactly():
    ts = jnp.geomspace(1e-3, 1.0, 31)
    vals = 3.0 * ts**4
    np.testing.assert_allclose(first_crossing(ts, vals, 1e-4), (1e-4 / 3.0) ** 0.25, rtol=1e-10)
    assert jnp.isinf(first_crossing(ts, vals, 10.0))


def test_crossover_time():
    np.testing.assert_allclose(crossover_time(1e-4, 0.25), 0.02)


def test_discrete_gd_law_is_exact_at_leading_order(key):
    land = quadratic_cubic(key, dim=16, rank=2, sharpness=10.0, coupling=0.5)
    lr = 1e-3
    rec = np.array([2, 3, 5, 10, 20])
    traj = descend(land, make_optimizer("gd", lr), rec, lr, land.basis)
    pred = discrete_gd_quartic(quartic_law(10.0, 0.5), traj.steps, lr)
    # Relative deviation is O(n lr ||H_F||), so it shrinks with n lr.
    rel = np.abs(np.asarray(traj.align_increase / pred) - 1.0)
    assert rel[0] < 1e-2 and np.all(rel < 3 * rec * lr)
    # One step is exactly orthogonal: no alignment loss at all.
    one = descend(land, make_optimizer("gd", lr), np.array([1]), lr, land.basis)
    assert abs(float(one.align_increase[0])) < 1e-20


def test_falling_factorial_basis_limits():
    n = jnp.array([1.0, 2.0, 1e6])
    b4 = falling_factorial_basis(n, 0.5, 4)
    np.testing.assert_allclose(b4[:2], [0.0, (0.5**2 * 2.0) ** 2])
    np.testing.assert_allclose(b4[2] / (0.5 * 1e6) ** 4, 1.0, rtol=1e-5)
    np.testing.assert_allclose(falling_factorial_basis(n, 0.5, 3), (0.5 * n) ** 3)
    assert log_record_steps(100, 10)[0] == 1
