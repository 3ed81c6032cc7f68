"""Taylor coefficients from autodiff match closed forms and the exact flow."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geomsim.dynamics import exact_quadratic_flow
from geomsim.landscapes import FunctionLandscape, quadratic_cubic
from geomsim.theory import (
    align_coefficients,
    path_coefficients,
    polynomial_value,
    quadratic_prefactor,
    quartic_law,
    quartic_prefactor,
    sextic_prefactor,
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quartic_coefficient_matches_closed_form(seed):
    land = quadratic_cubic(jax.random.key(seed), dim=20, rank=3, sharpness=7.0, coupling=0.4, sharpness_spread=3.0)
    c = align_coefficients(land, 6)
    np.testing.assert_allclose(c[:4], 0.0, atol=1e-14)
    closed = quartic_prefactor(land.grad_task, land.hess_align, land.hess_task)
    np.testing.assert_allclose(c[4], closed, rtol=1e-12)
    # Coupling enters along the least-sharp direction: the AIC bound is attained.
    np.testing.assert_allclose(c[4], quartic_law(7.0, 0.4), rtol=1e-12)


def test_sextic_coefficient_in_cubic_only_control(key):
    land = quadratic_cubic(key, dim=16, rank=2, sharpness=9.0, coupling=0.0, cubic_coupling=0.6)
    c = align_coefficients(land, 6)
    np.testing.assert_allclose(c[:6], 0.0, atol=1e-14)
    g = land.grad_task
    drive = jax.grad(lambda x: g @ jax.hessian(land.task_loss)(x) @ g)(jnp.zeros(16))
    np.testing.assert_allclose(c[6], sextic_prefactor(drive, land.hess_align), rtol=1e-12)
    np.testing.assert_allclose(c[6], 9.0 * 0.6**2 / 72.0, rtol=1e-12)


@pytest.mark.parametrize("mu,eps", [(0.05, 0.0), (0.0, 0.1), (0.02, 0.2)])
def test_quadratic_coefficient_with_eps_or_mu(mu, eps):
    land = quadratic_cubic(jax.random.key(3), dim=16, rank=3, sharpness=4.0, coupling=0.5, mu=mu, eps=eps)
    c = align_coefficients(land, 4)
    np.testing.assert_allclose(c[1], 0.0, atol=1e-14)
    np.testing.assert_allclose(c[2], quadratic_prefactor(land.grad_task, land.hess_align), rtol=1e-12)
    assert c[2] > 0


def test_jet_and_nested_jvp_agree_on_a_cubic_landscape(key):
    land = quadratic_cubic(key, dim=10, rank=2, sharpness=3.0, coupling=0.7, mu=0.1, eps=0.2,
                           cubic_coupling=0.5, align_cubic=1.5)
    # Order 5: nested jvp costs 2^order, and order 5 already exercises both cubic terms.
    np.testing.assert_allclose(
        align_coefficients(land, 5, method="jet"), align_coefficients(land, 5, method="jvp"), rtol=1e-10, atol=1e-14
    )


def test_path_coefficients_are_the_flow_series(key):
    land = quadratic_cubic(key, dim=10, rank=2, sharpness=3.0, coupling=0.7, eps=0.1, cubic_coupling=0.4)
    a = path_coefficients(land, 3)
    g, h = land.grad_task, land.hess_task
    drive = jax.grad(lambda x: g @ jax.hessian(land.task_loss)(x) @ g)(jnp.zeros(10))
    np.testing.assert_allclose(a[1], -g, atol=1e-14)
    np.testing.assert_allclose(a[2], h @ g / 2, atol=1e-14)
    np.testing.assert_allclose(a[3], -(h @ h @ g + drive) / 6, atol=1e-13)


def test_taylor_polynomial_converges_to_the_exact_flow(key):
    """Independent check: exact quadratic flow vs the order-6 polynomial, error ~ t^7."""
    land = quadratic_cubic(key, dim=12, rank=2, sharpness=5.0, coupling=0.6, mu=0.01, eps=0.05)
    c = align_coefficients(land, 6)
    ts = jnp.array([1e-2, 2e-2, 4e-2])
    deltas = exact_quadratic_flow(land.grad_task, land.hess_task, ts)
    exact = jax.vmap(land.align_increase)(deltas)
    err = jnp.abs(polynomial_value(c, ts) - exact)
    assert float(err[0]) < 1e-9 * float(exact[0])
    # Error ratio for doubling t is ~2^7 (the first neglected order).
    ratio = float(err[2] / err[1])
    assert 2**6 < ratio < 2**8


def test_general_nonpolynomial_landscape():
    """A tanh/log model (not quadratic): jet vs jvp vs finite differences of the ODE."""
    w0 = jnp.array([0.3, -0.2, 0.5, 0.1])

    def align(w):
        return jnp.log1p(jnp.exp(-3.0 * jnp.tanh(w[0] + w[1] * w[2])))

    def task(w):
        return jnp.sum(jnp.sin(w) ** 2) + 0.3 * w[3] * w[0] ** 2

    land = FunctionLandscape(theta0=w0, align_fn=align, task_fn=task)
    c_jet = align_coefficients(land, 5, method="jet")
    c_jvp = align_coefficients(land, 4, method="jvp")
    np.testing.assert_allclose(c_jet[:5], c_jvp, rtol=1e-9, atol=1e-13)
    # Compare with a Richardson-extrapolated RK4 integration at small t.
    from geomsim.dynamics import ode_flow

    ts = jnp.array([0.01, 0.02])
    deltas = ode_flow(land, ts)
    vals = jax.vmap(land.align_increase)(deltas)
    np.testing.assert_allclose(polynomial_value(c_jet, ts), vals, rtol=1e-9)
