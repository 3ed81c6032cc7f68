"""Gauss-Newton polish: exact on linear problems, quadratic convergence on nonlinear ones."""

import jax
import jax.numpy as jnp
import numpy as np

from geomsim.testbed.polish import gauss_newton


def test_one_step_gives_the_minimum_norm_solution_of_a_linear_system(key):
    a = jax.random.normal(key, (5, 12))
    b = jax.random.normal(jax.random.fold_in(key, 1), (5,))
    x0 = {"x": jax.random.normal(jax.random.fold_in(key, 2), (12,))}

    def residual(p, row):
        coeffs, rhs = row
        return coeffs @ p["x"] - rhs

    out, norms = gauss_newton([(residual, (a, b))], x0, steps=1, damping=0.0)
    # Minimum-norm correction: x = x0 + pinv(A) (b - A x0).
    expected = x0["x"] + jnp.linalg.pinv(a) @ (b - a @ x0["x"])
    np.testing.assert_allclose(out["x"], expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(norms[0], jnp.linalg.norm(a @ x0["x"] - b), rtol=1e-12)


def test_nonlinear_residuals_in_two_groups_converge_quadratically(key):
    # Underdetermined: 3 + 2 equations in 8 unknowns, two residual shapes.
    w = jax.random.normal(key, (3, 8))
    v = jax.random.normal(jax.random.fold_in(key, 1), (2, 2, 8))

    def scalar_group(p, row):
        return jnp.tanh(row @ p) - 0.3

    def vector_group(p, rows):
        return jnp.sin(rows @ p) - jnp.array([0.1, -0.2])

    x0 = 0.1 * jax.random.normal(jax.random.fold_in(key, 2), (8,))
    out, norms = gauss_newton([(scalar_group, w), (vector_group, v)], x0, steps=7)
    final = jnp.concatenate([jax.vmap(scalar_group, (None, 0))(out, w), jax.vmap(vector_group, (None, 0))(out, v).ravel()])
    assert float(jnp.linalg.norm(final)) < 1e-13
    n = np.asarray(norms)
    assert n[0] > 1e-2 and np.all(np.diff(n[n > 1e-12]) < 0)


def test_masked_residuals_are_ignored(key):
    w = jax.random.normal(key, (4, 6))
    mask = jnp.array([True, True, False, False])

    def residual(p, example):
        row, m = example
        return jnp.where(m, row @ p - 1.0, 0.0)

    out, _ = gauss_newton([(residual, (w, mask))], jnp.zeros(6), steps=2, damping=1e-12)
    np.testing.assert_allclose(w[:2] @ out, 1.0, rtol=1e-10)
    # Minimum norm: the solution lies in the span of the two active rows only.
    coeffs, *_ = jnp.linalg.lstsq(w[:2].T, out)
    np.testing.assert_allclose(w[:2].T @ coeffs, out, atol=1e-10)
