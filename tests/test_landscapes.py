"""The quadratic-cubic landscape verifies itself; the protocol and registry work."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geomsim.landscapes import (
    FunctionLandscape,
    available_landscapes,
    dense_alignment_basis,
    quadratic_cubic,
    register_landscape,
    resolve_landscape,
)
from geomsim.sweep.run import precision
from geomsim.theory import dense_aic, dense_matrices


# A few shapes (each new shape recompiles every eager op), free values otherwise.
@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    shape=st.sampled_from([(6, 1), (6, 4), (13, 3), (24, 2)]),
    sharpness=st.floats(0.5, 200.0),
    coupling=st.floats(0.0, 3.0),
    mu_frac=st.floats(0.0, 0.2),
    eps=st.floats(0.0, 0.9),
    grad_norm=st.floats(0.1, 10.0),
    spread=st.floats(1.0, 5.0),
)
def test_built_landscape_measures_what_was_requested(seed, shape, sharpness, coupling, mu_frac, eps, grad_norm, spread):
    dim, rank = shape
    mu = mu_frac * sharpness
    land = quadratic_cubic(
        jax.random.key(seed), dim=dim, rank=rank, sharpness=sharpness, coupling=coupling,
        mu=mu, eps=eps, grad_norm=grad_norm, sharpness_spread=spread,
        cubic_coupling=0.3, align_cubic=0.7,
    )
    aic = dense_aic(land, rank)
    np.testing.assert_allclose(aic.sharpness, sharpness, rtol=1e-10)
    np.testing.assert_allclose(aic.mu, mu, rtol=1e-10, atol=1e-12 * sharpness)
    np.testing.assert_allclose(aic.eps, eps, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(aic.coupling, coupling, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(aic.grad_norm, grad_norm, rtol=1e-12)
    # The measured subspace is the configured one (mu < sharpness leaves a gap).
    proj_err = land.basis - (land.basis @ aic.basis.T) @ aic.basis  # rows: U - U P
    assert float(jnp.max(jnp.abs(proj_err))) < 1e-8


def test_coupling_with_task_curvature_on_s_stays_exact(key):
    for rank in (1, 3):
        land = quadratic_cubic(key, dim=12, rank=rank, sharpness=3.0, coupling=0.8, eps=0.2, task_curvature_s=0.5)
        aic = dense_aic(land, rank)
        np.testing.assert_allclose(aic.coupling, 0.8, rtol=1e-10)


def test_cubic_coupling_is_exact_third_order_drive(key):
    land = quadratic_cubic(key, dim=10, rank=2, sharpness=5.0, coupling=0.0, cubic_coupling=0.7, eps=0.3)
    g = land.grad_task
    # D^3 L_F[g, g] = d/dx (g^T H_F(x) g) at x = 0.
    drive = jax.grad(lambda x: g @ jax.hessian(land.task_loss)(x) @ g)(jnp.zeros(10))
    np.testing.assert_allclose(jnp.linalg.norm(land.basis @ drive), 0.7, rtol=1e-10)


def test_alignment_cubic_rotates_the_sharp_subspace(key):
    land = quadratic_cubic(key, dim=10, rank=2, sharpness=5.0, coupling=0.3, align_cubic=2.0)
    basis0 = dense_alignment_basis(land, 2)
    later = land.theta0 - 0.3 * land.grad_task
    hess = jax.hessian(land.align_loss)(later)
    _, vecs = jnp.linalg.eigh(hess)
    basis1 = vecs[:, ::-1][:, :2]
    overlap = jnp.linalg.svd(basis0 @ basis1, compute_uv=False)
    assert float(overlap.min()) < 0.999  # S moved
    # ...and without the cubic term it does not.
    flat = quadratic_cubic(key, dim=10, rank=2, sharpness=5.0, coupling=0.3)
    hess = jax.hessian(flat.align_loss)(later)
    np.testing.assert_allclose(hess, flat.hess_align, atol=1e-12)


def test_builder_vmaps_over_parameters_and_keys():
    keys = jax.random.split(jax.random.key(1), 3)
    sharp = jnp.array([1.0, 10.0, 100.0])
    coup = jnp.array([0.1, 0.2, 0.3])
    lands = jax.vmap(lambda k, s, c: quadratic_cubic(k, dim=8, rank=2, sharpness=s, coupling=c))(keys, sharp, coup)
    assert lands.hess_align.shape == (3, 8, 8)
    gam = jax.vmap(lambda L: dense_aic(L, 2).coupling)(lands)
    np.testing.assert_allclose(gam, coup, rtol=1e-10)


def test_float32_landscape_is_float32():
    with precision(False):
        land = quadratic_cubic(jax.random.key(0), dim=8, rank=2)
        assert land.hess_align.dtype == jnp.float32


def test_function_landscape_matches_builtin(key):
    land = quadratic_cubic(key, dim=8, rank=2, sharpness=4.0, coupling=0.5, cubic_coupling=0.2)
    wrapped = FunctionLandscape(
        theta0=land.theta0, align_fn=lambda x: land.align_loss(x), task_fn=lambda x: land.task_loss(x)
    )
    for a, b in zip(dense_matrices(land), dense_matrices(wrapped), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-12)


def test_pytree_parameters_work_through_the_protocol():
    params = {"w": jnp.ones((2, 3)), "b": jnp.zeros(3)}

    def align(p):
        return 2.0 * jnp.sum((p["w"] - 1.0) ** 2)

    def task(p):
        return jnp.sum(p["b"]) + jnp.sum(p["w"] * p["b"][None, :] ** 2)

    land = FunctionLandscape(theta0=params, align_fn=align, task_fn=task)
    aic = dense_aic(land, rank=6)
    np.testing.assert_allclose(aic.sharpness, 4.0)


def test_registry_names_and_import_paths():
    assert "quadratic_cubic" in available_landscapes()
    assert resolve_landscape("quadratic_cubic") is quadratic_cubic
    assert resolve_landscape("geomsim.landscapes.quadratic_cubic:quadratic_cubic") is quadratic_cubic
    register_landscape("my_land", quadratic_cubic)
    assert resolve_landscape("my_land") is quadratic_cubic
    with pytest.raises(ValueError, match="landscape: unknown name"):
        resolve_landscape("nope")
    with pytest.raises(ValueError, match="cannot import module"):
        resolve_landscape("no_such_module_xyz:f")
    with pytest.raises(ValueError, match="has no callable"):
        resolve_landscape("geomsim.landscapes:missing")


def test_rank_bounds_are_checked():
    with pytest.raises(ValueError, match="rank must be in"):
        quadratic_cubic(jax.random.key(0), dim=4, rank=3)


def test_closed_form_task_gradient_equals_autodiff(key):
    land = quadratic_cubic(key, dim=12, rank=3, sharpness=5.0, coupling=0.4, eps=0.1, cubic_coupling=0.8)
    for i in range(3):
        delta = jax.random.normal(jax.random.fold_in(key, i), (12,))
        auto = jax.grad(land.displaced_task_loss)(delta)
        np.testing.assert_allclose(land.task_gradient(delta), auto, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [("eps", 1.5, "in \\[0, 1\\)"), ("sharpness", 0.0, "> 0"), ("coupling", -0.1, ">= 0"),
     ("mu", float("nan"), ">= 0"), ("sharpness_spread", 0.5, ">= 1"), ("task_curvature_min", 2.0, "<= task_curvature")],
)
def test_out_of_range_arguments_raise_one_line_errors(field, value, allowed):
    with pytest.raises(ValueError, match=f"quadratic_cubic: {field} must be {allowed}") as err:
        quadratic_cubic(jax.random.key(0), dim=8, rank=2, **{field: value})
    assert "\n" not in str(err.value)


def test_traced_out_of_range_values_are_reported_not_built_as_nan():
    build = jax.jit(lambda eps: quadratic_cubic(jax.random.key(0), dim=8, rank=2, eps=eps).grad_task)
    assert np.all(np.isfinite(build(0.5)))
    with pytest.raises(Exception, match="quadratic_cubic: eps must be in"):
        jax.block_until_ready(build(1.5))
    # Without runtime checks (the sweep validates on the host) the program carries no callback.
    unchecked = jax.jit(lambda s: quadratic_cubic(jax.random.key(0), dim=8, rank=2, sharpness=s,
                                                  runtime_checks=False).hess_align)
    assert "callback" not in unchecked.lower(1.0).as_text()
    assert "callback" in jax.jit(lambda s: quadratic_cubic(jax.random.key(0), dim=8, rank=2,
                                                           sharpness=s).hess_align).lower(1.0).as_text()
