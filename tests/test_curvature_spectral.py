"""SLQ spectral density and stochastic trace / diagonal estimators: exact
quadrature identities and statistical checks that can fail (unbiasedness
within the stated standard error, calibrated error bars)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from matfree.test_util import hermitian_matrix_from_eigenvalues

from geomsim.curvature import (
    MatrixOperator,
    diagonal_estimator,
    hutchinson,
    spectral_density,
    trace_estimator,
    xnystrace,
    xtrace,
)

D = 60


@pytest.fixture(scope="module")
def psd_matrix():
    eigs = jnp.concatenate([jnp.array([20.0, 12.0, 7.0]), jnp.geomspace(2.0, 1e-3, D - 3)])
    return hermitian_matrix_from_eigenvalues(eigs, jax.random.key(0))


@pytest.fixture(scope="module")
def indefinite_matrix():
    eigs = jnp.concatenate([jnp.array([9.0, 6.0]), jnp.linspace(-3.0, 2.0, D - 2)])
    return hermitian_matrix_from_eigenvalues(eigs, jax.random.key(1))


def test_slq_is_gauss_quadrature_per_probe(indefinite_matrix):
    a = indefinite_matrix
    m = 6
    density = jax.jit(spectral_density(4, m))(MatrixOperator(a), jax.random.key(2))
    probes = jax.random.rademacher(jax.random.key(2), (4, D), a.dtype)  # the same probes
    for p in range(2 * m):  # exact for every polynomial degree < 2m
        per_probe = np.sum(np.asarray(density.weights) * np.asarray(density.nodes) ** p, axis=1)
        exact = np.einsum("pi,ij,pj->p", probes, np.linalg.matrix_power(np.asarray(a), p), probes) / D
        np.testing.assert_allclose(per_probe, exact, rtol=1e-9)
    np.testing.assert_allclose(np.sum(density.weights, axis=1), 1.0, rtol=1e-12)


def test_slq_moments_are_unbiased_within_their_standard_error(indefinite_matrix):
    a = indefinite_matrix
    density = jax.jit(spectral_density(200, 8))(MatrixOperator(a), jax.random.key(3))
    for p in (1, 2, 3, 4):
        estimate, stderr = density.moment(p)
        exact = np.trace(np.linalg.matrix_power(np.asarray(a), p)) / D
        assert abs(float(estimate) - exact) < 4 * float(stderr), (p, estimate, exact, stderr)
        assert float(stderr) < 0.2 * abs(exact) + 1e-12  # the error bar is informative


def test_slq_density_integrates_to_one_and_finds_the_outliers(indefinite_matrix):
    density = jax.jit(spectral_density(20, 30))(MatrixOperator(indefinite_matrix), jax.random.key(4))
    grid = jnp.linspace(-5.0, 11.0, 4001)
    phi = density.density(grid, sigma=0.05)
    np.testing.assert_allclose(float(jnp.trapezoid(phi, grid)), 1.0, atol=1e-6)
    near_top = (grid > 8.5) & (grid < 9.5)
    mass = float(jnp.trapezoid(jnp.where(near_top, phi, 0.0), grid))
    np.testing.assert_allclose(mass, 1.0 / D, rtol=0.5)  # one eigenvalue in d: weight ~1/d


def _replicates(estimator, op, n):
    return jax.jit(jax.vmap(lambda k: estimator(op, k)))(jax.random.split(jax.random.key(5), n))


@pytest.mark.parametrize("name", ["hutchinson", "xtrace", "xnystrace"])
def test_trace_estimators_are_unbiased_within_stated_error(name, psd_matrix):
    op = MatrixOperator(psd_matrix, psd=True)
    factory = {"hutchinson": hutchinson, "xtrace": xtrace, "xnystrace": xnystrace}[name]
    reps = _replicates(factory(8), op, 400)
    exact = float(jnp.trace(psd_matrix))
    values, stated = np.asarray(reps.value), np.asarray(reps.stderr)
    spread = values.std(ddof=1)
    # Unbiased: the mean of 400 replicates is within 4 standard errors of the truth.
    assert abs(values.mean() - exact) < 4 * spread / np.sqrt(len(values)), (values.mean(), exact, spread)
    # The per-run error bar is the right size (root-mean-square stated vs observed spread).
    ratio = np.sqrt(np.mean(stated**2)) / spread
    assert 0.5 < ratio < 2.0, ratio
    if name != "hutchinson":  # the low-rank part makes them far more precise here
        hutch = _replicates(hutchinson(8), op, 400)
        assert spread < 0.5 * float(np.std(np.asarray(hutch.value), ddof=1))


def test_auto_dispatch_and_exact_small_cases(psd_matrix, indefinite_matrix):
    auto = trace_estimator(6)
    psd = jax.jit(auto)(MatrixOperator(psd_matrix, psd=True), jax.random.key(6))
    indef = jax.jit(auto)(MatrixOperator(indefinite_matrix), jax.random.key(6))
    assert int(psd.num_matvecs) == 6 and int(indef.num_matvecs) == 12  # XNysTrace vs XTrace
    # Once 2n >= d XTrace materialises the operator: exact.
    exact = jax.jit(xtrace(D // 2))(MatrixOperator(indefinite_matrix), jax.random.key(7))
    np.testing.assert_allclose(exact.value, jnp.trace(indefinite_matrix), rtol=1e-12)
    assert int(exact.num_matvecs) == D


def test_hutchinson_diagonal_has_calibrated_error_bars(indefinite_matrix):
    est = jax.jit(diagonal_estimator(64))(MatrixOperator(indefinite_matrix), jax.random.key(8))
    z = (np.asarray(est.value) - np.diag(np.asarray(indefinite_matrix))) / np.asarray(est.stderr)
    assert 0.6 < np.mean(z**2) < 1.6, np.mean(z**2)


def test_bad_settings_name_the_field():
    with pytest.raises(ValueError, match="^num_samples:"):
        trace_estimator(0)
    with pytest.raises(ValueError, match="^method:"):
        trace_estimator(3, method="exact")
    with pytest.raises(ValueError, match="^num_probes:"):
        spectral_density(0, 3)
    with pytest.raises(ValueError, match="^num_matvecs:"):
        spectral_density(2, 5)(MatrixOperator(jnp.eye(3)), jax.random.key(0))
    with pytest.raises(ValueError, match="^num_samples:"):
        xtrace(5)(MatrixOperator(jnp.eye(3)), jax.random.key(0))
