"""Trajectories: exact flow vs ODE integration, GD vs its closed form, vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from geomsim.dynamics import descend, exact_quadratic_flow, gradient_flow, log_record_steps, make_optimizer, ode_flow
from geomsim.landscapes import quadratic_cubic


def test_exact_flow_solves_the_ode(key):
    land = quadratic_cubic(key, dim=12, rank=2, sharpness=5.0, coupling=0.6, task_curvature_s=-0.3)
    ts = jnp.geomspace(1e-4, 2.0, 9)
    exact = exact_quadratic_flow(land.grad_task, land.hess_task, ts)
    # d delta / dt = -(g + H delta), by central finite differences in t.
    h = 1e-6
    fd = (exact_quadratic_flow(land.grad_task, land.hess_task, ts + h)
          - exact_quadratic_flow(land.grad_task, land.hess_task, ts - h)) / (2 * h)
    rhs = -(land.grad_task[None, :] + exact @ land.hess_task.T)
    np.testing.assert_allclose(fd, rhs, rtol=1e-6, atol=1e-8)


def test_ode_solver_resolves_the_subspace_component_at_early_times(key):
    """theory.md's pitfall: the S-part is O(t^2) while delta is O(t)."""
    land = quadratic_cubic(key, dim=16, rank=3, sharpness=10.0, coupling=0.5)
    ts = jnp.geomspace(1e-4, 1.0, 25)
    exact = gradient_flow(land, ts, land.basis, method="exact")
    ode = gradient_flow(land, ts, land.basis, method="ode")
    # Round-off in the S-part is ~1e-16 ||delta||, i.e. ~1e-8 relative at t = 1e-4.
    np.testing.assert_allclose(ode.subspace_norm, exact.subspace_norm, rtol=5e-8)
    np.testing.assert_allclose(ode.align_increase, exact.align_increase, rtol=1e-7)
    # ...and the ratio to the quartic law is 1 at early times (not 0.67).
    np.testing.assert_allclose(ode.align_increase[0] / (10.0 * 0.25 / 8 * ts[0] ** 4), 1.0, rtol=1e-3)


def test_auto_flow_uses_ode_when_task_is_cubic(key):
    land = quadratic_cubic(key, dim=10, rank=2, sharpness=3.0, coupling=0.0, cubic_coupling=0.5)
    assert land.quadratic_task() is None
    with pytest.raises(ValueError, match="quadratic task"):
        gradient_flow(land, jnp.array([0.1]), method="exact")
    # Converged: halving the tolerance changes nothing that matters.
    ts = jnp.geomspace(1e-3, 0.5, 8)
    a = ode_flow(land, ts, rtol=1e-10, atol=1e-14)
    b = ode_flow(land, ts, rtol=1e-13, atol=1e-17)
    sa, sb = jnp.linalg.norm(a @ land.basis.T, axis=1), jnp.linalg.norm(b @ land.basis.T, axis=1)
    np.testing.assert_allclose(sa, sb, rtol=1e-6)


def test_gradient_descent_matches_its_closed_form(key):
    land = quadratic_cubic(key, dim=10, rank=2, sharpness=3.0, coupling=0.4, mu=0.1, eps=0.1)
    lr, n = 0.05, 37
    traj = descend(land, make_optimizer("gd", lr), np.array([n]), lr, land.basis)
    step = jnp.eye(10) - lr * land.hess_task
    delta = jnp.zeros(10)
    for _ in range(n):
        delta = step @ delta - lr * land.grad_task
    np.testing.assert_allclose(traj.delta_norm[0], jnp.linalg.norm(delta), rtol=1e-12)
    np.testing.assert_allclose(traj.align_increase[0], land.align_increase(delta), rtol=1e-12)
    np.testing.assert_allclose(traj.time[0], n * lr)


def test_record_grid_does_not_change_the_trajectory(key):
    land = quadratic_cubic(key, dim=10, rank=2, sharpness=3.0, coupling=0.4)
    a = descend(land, make_optimizer("momentum", 1e-2), np.array([5, 50, 100]), 1e-2, land.basis)
    b = descend(land, make_optimizer("momentum", 1e-2), np.arange(1, 101), 1e-2, land.basis)
    np.testing.assert_array_equal(a.align_increase, b.align_increase[np.array([4, 49, 99])])


def test_any_optax_transformation_and_pytree_params():
    from geomsim.landscapes import FunctionLandscape

    params = {"a": jnp.ones(3), "b": jnp.full((2, 2), 0.5)}
    land = FunctionLandscape(
        theta0=params,
        align_fn=lambda p: jnp.sum((p["a"] - 1) ** 2),
        task_fn=lambda p: jnp.sum(p["a"] * jnp.sum(p["b"])) + jnp.sum(p["b"] ** 2),
    )
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(1e-2))
    traj = descend(land, opt, np.array([1, 10]), 1e-2)
    assert traj.align_increase.shape == (2,)
    assert jnp.all(jnp.isnan(traj.subspace_norm))  # no basis given
    assert float(traj.align_increase[1]) > 0


def test_vmap_over_seeds_equals_a_loop():
    rec = log_record_steps(200, 12)

    def run(k):
        land = quadratic_cubic(k, dim=8, rank=2, sharpness=2.0, coupling=0.3)
        return descend(land, make_optimizer("sgd", 1e-2, key=k, noise=0.1), rec, 1e-2, land.basis).align_increase

    keys = jax.random.split(jax.random.key(5), 3)
    batched = jax.jit(jax.vmap(run))(keys)
    for i in range(3):
        np.testing.assert_allclose(batched[i], jax.jit(run)(keys[i]), rtol=1e-12)
    assert not np.allclose(batched[0], batched[1])


def test_make_optimizer_rejects_unknown_names():
    with pytest.raises(ValueError, match="optimizer: unknown 'lbfgs'"):
        make_optimizer("lbfgs", 0.1)
    with pytest.raises(ValueError, match="PRNG key"):
        make_optimizer("sgd", 0.1)


def test_log_record_steps():
    steps = log_record_steps(10_000, 120)
    assert steps[0] == 1 and steps[-1] == 10_000
    assert np.all(np.diff(steps) > 0)
    with pytest.raises(ValueError):
        log_record_steps(0, 10)


def test_grid_flow_matches_the_exact_flow_in_the_subspace(key):
    """Fixed Tsit5 steps on a geometric grid resolve the O(t^2) S-part (ratio 1.5, as the testbed sweep)."""
    land = quadratic_cubic(key, dim=14, rank=2, sharpness=8.0, coupling=0.6, task_curvature=3.0)
    ts = jnp.asarray(np.geomspace(1e-4, 2.0, int(np.ceil(np.log(2e4) / np.log(1.5))) + 1))
    exact = gradient_flow(land, ts, land.basis, method="exact")
    grid = gradient_flow(land, ts, land.basis, method="grid")
    np.testing.assert_allclose(grid.subspace_norm, exact.subspace_norm, rtol=2e-5)
    np.testing.assert_allclose(grid.align_increase, exact.align_increase, rtol=5e-5)


def test_grid_flow_converges_on_a_cubic_task_and_agrees_with_small_step_gd(key):
    land = quadratic_cubic(key, dim=10, rank=2, sharpness=3.0, coupling=0.4, cubic_coupling=0.5, align_cubic=0.3)
    coarse_t = np.geomspace(1e-3, 1.0, 18)
    fine_t = np.geomspace(1e-3, 1.0, 120)
    extra = lambda d: {"s": jnp.sum((land.basis @ d) ** 2)}  # noqa: E731
    coarse = gradient_flow(land, jnp.asarray(coarse_t), land.basis, method="grid", extra=extra)
    fine = gradient_flow(land, jnp.asarray(fine_t), land.basis, method="grid", extra=extra)
    np.testing.assert_allclose(coarse.extra["s"][-1], fine.extra["s"][-1], rtol=1e-6)
    np.testing.assert_allclose(coarse.align_increase[-1], fine.align_increase[-1], rtol=1e-6)
    # An independent integrator: GD with a tiny step reaches the same point (error O(lr)).
    lr = 1e-4
    gd = descend(land, make_optimizer("gd", lr), np.array([10_000]), lr, land.basis)
    np.testing.assert_allclose(gd.subspace_norm[0], fine.subspace_norm[-1], rtol=2e-4)
