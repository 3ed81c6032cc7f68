"""The tilted task: eps exactly as set, every derivative of order >= 2 unchanged (dense ground truth)."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from geomsim.landscapes import FunctionLandscape, quadratic_cubic, tilt_overlap


def _landscape(key, eps=0.3):
    return quadratic_cubic(key, dim=9, rank=2, sharpness=4.0, coupling=0.7, eps=eps, mu=0.05,
                           cubic_coupling=0.4, align_cubic=0.5)


def _flat_task(land):
    return lambda x: land.displaced_task_loss(x)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**16), keep=st.floats(0.0, 1.0))
def test_tilt_scales_the_subspace_gradient_exactly(seed, keep):
    land = _landscape(jax.random.key(seed))
    tilted = tilt_overlap(land, land.basis, keep)
    zero = jnp.zeros(9)
    g, gt = land.task_gradient(zero), tilted.task_gradient(zero)
    basis = land.basis
    np.testing.assert_allclose(jnp.linalg.norm(basis @ gt), keep * jnp.linalg.norm(basis @ g), rtol=1e-12, atol=1e-15)
    perp = lambda v: v - basis.T @ (basis @ v)  # noqa: E731
    np.testing.assert_allclose(perp(gt), perp(g), atol=1e-14)
    # The closed-form gradient is the gradient of the tilted loss.
    np.testing.assert_allclose(jax.grad(_flat_task(tilted))(zero), gt, atol=1e-13)


def test_tilt_leaves_hessian_and_third_derivatives_unchanged(key):
    land = _landscape(key)
    tilted = tilt_overlap(land, land.basis, 0.0)
    x = 0.3 * jax.random.normal(jax.random.fold_in(key, 1), (9,))
    v = jax.random.normal(jax.random.fold_in(key, 2), (9,))
    for point in (jnp.zeros(9), x):
        np.testing.assert_allclose(jax.hessian(_flat_task(tilted))(point), jax.hessian(_flat_task(land))(point),
                                   atol=1e-12)

    def third(f):
        return jax.jvp(lambda y: jax.jvp(lambda z: jax.jvp(f, (z,), (v,))[1], (y,), (v,))[1], (x,), (v,))[1]

    np.testing.assert_allclose(third(_flat_task(tilted)), third(_flat_task(land)), rtol=1e-12)
    # The alignment loss and the quadratic-task closed form follow.
    np.testing.assert_allclose(tilted.align_increase(x), land.align_increase(x), rtol=1e-14)
    assert tilted.quadratic_task() is None  # the cubic task stays cubic


def test_tilt_is_exact_on_a_quadratic_task_and_gives_eps_zero(key):
    land = quadratic_cubic(key, dim=8, rank=2, sharpness=3.0, coupling=0.5, eps=0.4)
    tilted = tilt_overlap(land, land.basis, 0.0)
    g, h = tilted.quadratic_task()
    np.testing.assert_allclose(h, land.hess_task)
    assert float(jnp.linalg.norm(land.basis @ g)) < 1e-14
    # keep = 1 is the task itself (a negative control: nothing moves).
    same = tilt_overlap(land, land.basis, 1.0)
    np.testing.assert_allclose(same.task_gradient(jnp.zeros(8)), land.task_gradient(jnp.zeros(8)), atol=0)


def test_tilt_works_on_pytree_parameters():
    theta0 = {"a": jnp.ones(3), "b": jnp.arange(2.0)}

    def task(p):
        return jnp.sum(jnp.sin(p["a"])) + jnp.sum(p["b"] ** 3) + p["a"][0] * p["b"][1]

    land = FunctionLandscape(theta0=theta0, align_fn=lambda p: jnp.sum(p["a"] ** 2), task_fn=task)
    basis = jnp.eye(5)[:2]
    tilted = tilt_overlap(land, basis, 0.25)
    g = jax.flatten_util.ravel_pytree(jax.grad(task)(theta0))[0]
    gt = jax.flatten_util.ravel_pytree(jax.grad(tilted.task_loss)(theta0))[0]
    np.testing.assert_allclose(gt[:2], 0.25 * g[:2], rtol=1e-14)
    np.testing.assert_allclose(gt[2:], g[2:], rtol=1e-14)
