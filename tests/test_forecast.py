"""Forecasts against ground truth: exact flow and exact GD on quadratic landscapes, closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from geomsim.defenses import project_off, static_projection
from geomsim.dynamics import descend, log_record_steps
from geomsim.dynamics.flow import exact_quadratic_flow
from geomsim.landscapes import quadratic_cubic
from geomsim.theory import align_coefficients
from geomsim.theory.forecast import (
    adam_model,
    adam_sign,
    adam_task,
    adam_time_scale,
    alignment_risk,
    forecast_errors,
    landscape_adam_model,
    landscape_local_models,
    local_models,
    paper_bound,
    quadratic_flow,
    quadratic_gd,
    task_change_gd,
    taylor,
    time_to_failure,
)

DIM = 12


def quadratic(seed=0, **kw):
    """Quadratic L_F and L_A (no cubic terms), with eps and mu so every Taylor order is present."""
    options = dict(dim=DIM, rank=2, sharpness=5.0, coupling=0.6, mu=0.05, eps=0.2)
    return quadratic_cubic(jax.random.key(seed), **{**options, **kw})


def models_of(land, m=DIM):
    g = land.grad_task
    align_grad = jax.grad(land.align_increase)(jnp.zeros_like(g))
    return local_models(m)(lambda v: land.hess_task @ v, lambda v: land.hess_align @ v, g, align_grad)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quadratic_flow_is_exact_on_quadratic_landscapes(seed):
    land = quadratic(seed)
    times = jnp.geomspace(1e-3, 30.0, 25)
    exact = jax.vmap(land.align_increase)(exact_quadratic_flow(land.grad_task, land.hess_task, times))
    forecast = quadratic_flow(models_of(land), times)
    np.testing.assert_allclose(forecast, exact, rtol=1e-8)


@pytest.mark.parametrize("lr", [1e-2, 0.5])
def test_quadratic_gd_is_exact_gradient_descent(lr):
    land = quadratic(3)
    steps = log_record_steps(400, 20)
    measured = descend(land, optax.sgd(lr), steps, lr).align_increase
    forecast = quadratic_gd(models_of(land), jnp.asarray(steps, jnp.float64), lr)
    np.testing.assert_allclose(forecast, measured, rtol=1e-8)


def test_forecast_matches_the_exact_taylor_series_at_small_t():
    land = quadratic(4, mu=0.0, eps=0.0)  # the quartic law's regime: c1 = c2 = c3 = 0
    coeffs = align_coefficients(land, 6)
    times = jnp.geomspace(1e-4, 1e-2, 5)
    np.testing.assert_allclose(quadratic_flow(models_of(land), times), taylor(coeffs, times), rtol=1e-6)
    np.testing.assert_allclose(coeffs[4], 5.0 * 0.6**2 / 8, rtol=1e-10)
    np.testing.assert_allclose(paper_bound(5.0, 0.6, times), coeffs[4] * times**4, rtol=1e-10)


def test_taylor_is_unbounded_where_the_flow_forecast_is_not():
    land = quadratic(5, mu=0.0, eps=0.0, task_curvature_min=0.5, task_curvature_s=1.0)
    assert float(jnp.linalg.eigvalsh(land.hess_task)[0]) > 0  # PSD task Hessian: the flow converges
    times = jnp.asarray([1.0, 10.0, 100.0])
    flow = quadratic_flow(models_of(land), times)
    poly = taylor(align_coefficients(land, 6), times)
    exact = jax.vmap(land.align_increase)(exact_quadratic_flow(land.grad_task, land.hess_task, times))
    np.testing.assert_allclose(flow, exact, rtol=1e-8)
    assert abs(float(poly[-1])) > 1e3 * abs(float(exact[-1]))


def test_a_short_krylov_space_is_a_bounded_approximation():
    land = quadratic(6, task_curvature_min=0.5)
    times = jnp.geomspace(1e-2, 10.0, 10)
    exact = jax.vmap(land.align_increase)(exact_quadratic_flow(land.grad_task, land.hess_task, times))
    errors = [float(jnp.max(jnp.abs(quadratic_flow(models_of(land, m), times) / exact - 1))) for m in (4, 8, DIM)]
    assert errors[2] < 1e-8 and errors[1] < errors[0]


def test_alignment_risk_formula_and_time_to_failure():
    times = jnp.asarray([0.5, 1.0, 2.0, 4.0])
    out = alignment_risk(2.0, 1.0, 0.5, times)
    drift = np.maximum(times**2 / 2 - 0.5 * times, 0.0)
    np.testing.assert_allclose(out, drift**2, rtol=1e-12)
    assert float(out[0]) == 0.0  # the first-order term holds the drift at 0 until t = 2 eps / gamma
    ts = jnp.geomspace(1e-2, 10.0, 200)
    t_fail = time_to_failure(ts, paper_bound(8.0, 1.0, ts), 1.0)
    np.testing.assert_allclose(t_fail, 1.0, rtol=1e-3)  # t^4 = 1
    assert np.isinf(float(time_to_failure(ts, paper_bound(8.0, 1.0, ts), 1e9)))


def test_forecasts_vmap_over_landscapes():
    keys = jax.random.split(jax.random.key(0), 3)

    def one(key):
        land = quadratic_cubic(key, dim=DIM, rank=2, sharpness=5.0, coupling=0.6, mu=0.05, eps=0.2)
        return quadratic_flow(models_of(land), jnp.asarray([0.1, 1.0]))

    batched = jax.jit(jax.vmap(one))(keys)
    looped = jnp.stack([one(k) for k in keys])
    np.testing.assert_allclose(batched, looped, rtol=1e-12)


def test_bad_krylov_depth_is_one_line():
    with pytest.raises(ValueError, match="num_matvecs: must be an integer >= 1"):
        local_models(0)
    land = quadratic()
    with pytest.raises(ValueError, match="num_matvecs: must be <= d"):
        models_of(land, DIM + 1)


@pytest.mark.parametrize("scale", [0.25, 1.0, 7.0])
def test_forecast_errors_against_closed_forms(scale):
    """Measured c t^4 vs forecast scale c t^4: the error at every crossing is |log10 scale|
    and the forecast crosses a level at scale^(-1/4) times the measured time."""
    t_meas = jnp.geomspace(0.1, 10.0, 41)
    t_grid = jnp.geomspace(0.01, 100.0, 401)
    levels = jnp.asarray([1e-3, 1e-2, 1e-1, 1e6])  # the last is never reached
    c = 1e-3
    t_cross, error, ratio = forecast_errors(t_meas, c * t_meas**4, t_grid, scale * c * t_grid**4, levels)
    np.testing.assert_allclose(t_cross[:3], (levels[:3] / c) ** 0.25, rtol=1e-12)
    np.testing.assert_allclose(error[:3], abs(np.log10(scale)), atol=1e-12)
    np.testing.assert_allclose(ratio[:3], scale ** -0.25, rtol=1e-12)
    assert np.isinf(t_cross[3]) and np.isnan(error[3]) and np.isnan(ratio[3])


def test_forecast_errors_of_a_forecast_that_never_rises():
    t = jnp.geomspace(0.1, 10.0, 21)
    _, error, ratio = forecast_errors(t, t**2, t, jnp.zeros_like(t), jnp.asarray([1.0]))
    assert np.isinf(error[0]) and np.isinf(ratio[0])  # zero forecast: infinitely wrong, never fails


@pytest.mark.parametrize("weight_decay", [0.0, 0.3])
def test_adam_sign_is_adams_first_step_exactly(weight_decay):
    """Bias correction makes Adam's first update `-lr (g / (|g| + eps) + wd theta0)`; with a
    quadratic L_A the forecast at t = lr is then the measured number to rounding."""
    land = quadratic(5)
    lr = 0.05
    measured = descend(land, optax.adamw(lr, weight_decay=weight_decay), np.array([1]), lr).align_increase
    forecast = adam_sign(landscape_adam_model(land, 1e-8, weight_decay), jnp.array([lr]))
    np.testing.assert_allclose(forecast, measured, rtol=1e-10)


def _defended_gd(land, basis, beta, lr, steps):
    """An independent loop: GD on L_F + beta L_A with each step projected off `basis`
    (rows; zero rows for none), returning (Delta L_A, Delta L_F) after each of `steps`."""
    def grad(d):
        return jax.grad(lambda x: land.displaced_task_loss(x) + beta * land.align_increase(x))(d)

    def step(d, _):
        d = d - lr * project_off(basis, grad(d))
        return d, (land.align_increase(d), land.displaced_task_loss(d) - land.displaced_task_loss(jnp.zeros(DIM)))

    _, (align, task) = jax.lax.scan(step, jnp.zeros(DIM), None, length=steps)
    return align, task


@pytest.mark.parametrize(("defense", "beta"), [("none", 0.0), ("static_projection", 0.0), ("replay", 0.3),
                                               ("both", 0.3)])
def test_defended_gd_forecast_is_exact_gradient_descent_under_the_defense(defense, beta):
    """The defense table's models: GD under a static projection (off the top-2 H_A
    eigenvectors) and / or replay of L_A with weight beta, on a quadratic landscape, to
    rounding, for both L_A and L_F (the task model from the same Krylov space)."""
    land, lr, n = quadratic(6), 0.05, 300
    top = jnp.linalg.eigh(land.hess_align)[1][:, -2:].T
    basis = top if defense in ("static_projection", "both") else jnp.zeros_like(top)
    align, task = _defended_gd(land, basis, beta, lr, n)
    projector = None if defense in ("none", "replay") else (lambda v: project_off(top, v))
    models = landscape_local_models(land, DIM, projector, beta)
    steps = jnp.arange(1, n + 1, dtype=jnp.float64)
    np.testing.assert_allclose(quadratic_gd(models, steps, lr), align, rtol=1e-8, atol=1e-14)
    np.testing.assert_allclose(task_change_gd(models, steps, lr, beta), task, rtol=1e-8, atol=1e-14)
    if beta:  # negative control: L_F's model without the replay correction is not L_F's
        assert np.max(np.abs(task_change_gd(models, steps, lr) - task)) > 1e-3 * np.max(np.abs(task))
    if defense == "static_projection":  # and the defense matters: the undefended path is elsewhere
        assert np.max(np.abs(quadratic_gd(landscape_local_models(land, DIM), steps, lr) - align)) > 0.1 * np.max(
            np.abs(align))


@pytest.mark.parametrize("weight_decay", [0.0, 0.3])
def test_defended_adam_model_is_the_defended_first_step_exactly(weight_decay):
    """Adam(W) on L_F + beta L_A chained with a static projection: its first step is
    `-lr P u` (bias correction), so on a quadratic landscape both L_A's and L_F's model at
    t = lr are the measured numbers to rounding."""
    land, lr, beta = quadratic(7), 0.05, 0.2
    top = jnp.linalg.eigh(land.hess_align)[1][:, -2:].T
    opt = optax.chain(optax.adamw(lr, weight_decay=weight_decay), static_projection(top))
    theta0 = 0.3 * jnp.ones(DIM)  # parameters theta0 + delta (AdamW's decay pulls on theta0)
    loss = lambda x: land.displaced_task_loss(x - theta0) + beta * land.align_increase(x - theta0)  # noqa: E731
    g = jax.grad(loss)(theta0)
    update, _ = opt.update(g, opt.init(theta0), theta0)
    delta = optax.apply_updates(theta0, update) - theta0
    ga = jax.grad(land.align_increase)(jnp.zeros(DIM))
    model = adam_model(lambda v: land.hess_align @ v, lambda v: land.hess_task @ v, ga, land.grad_task,
                       (land.grad_task + beta * ga) ** 2, theta0, 1e-8, weight_decay,
                       lambda v: project_off(top, v), beta)
    t = jnp.array([lr])
    np.testing.assert_allclose(adam_sign(model, t), land.align_increase(delta), rtol=1e-10)
    np.testing.assert_allclose(adam_task(model, t), land.displaced_task_loss(delta), rtol=1e-10)
    assert np.max(np.abs(top @ delta)) < 1e-12  # the projection held


def test_adam_sign_is_sign_descent_until_a_gradient_changes_sign():
    """b1 = b2 = 0 makes Adam sign descent (`-lr g / (|g| + eps)`, its flow limit at every
    step): the forecast is exact up to the first step at which a coordinate of the task
    gradient changes sign; gradient descent's forecast at the same lr is not (the control)."""
    land = quadratic(6)
    lr = 1e-4  # the smallest coordinate of g changes sign after 19 steps at lr 1e-3
    s = land.grad_task / (jnp.abs(land.grad_task) + 1e-8)
    n = jnp.arange(1, 4001.0)
    grads = land.grad_task[None, :] - lr * n[:, None] * (land.hess_task @ s)[None, :]  # along delta = -n lr s
    flips = np.nonzero(np.any(np.sign(np.asarray(grads)) != np.sign(np.asarray(land.grad_task)), axis=1))[0]
    last = int(flips[0]) if flips.size else 4000  # steps 1..last keep every sign
    assert last >= 100, last  # enough steps for the comparison to mean something
    steps = log_record_steps(last, 12)
    # eps 1e-14: with optax's 1e-8 the step g_n / (|g_n| + eps) varies with |g_n| by ~1e-6.
    measured = descend(land, optax.adam(lr, b1=0.0, b2=0.0, eps=1e-14), steps, lr).align_increase
    model = landscape_adam_model(land, 1e-14)
    np.testing.assert_allclose(adam_sign(model, jnp.asarray(steps * lr)), measured, rtol=1e-9)
    gd = quadratic_gd(models_of(land), jnp.asarray(steps, jnp.float64), lr)
    assert abs(np.log(float(gd[-1]) / float(measured[-1]))) > np.log(2.0)
    # The default horizon's scale is within 2x of the crossing when the curve rises.
    tau = float(measured[-1])
    t_cross = float(time_to_failure(jnp.geomspace(1e-6, 10.0, 4000), adam_sign(model, jnp.geomspace(1e-6, 10.0,
                                                                                                        4000)), tau))
    assert 0.5 <= float(adam_time_scale(model, tau)) / t_cross <= 2.0


def _classifier(hidden: int | None, seed: int = 0):
    """Softmax regression (hidden=None: logits linear in theta) or a tanh network on 24 points,
    3 classes; L_A a cross-entropy on 8 other points. Returns (flat0, logits_fn, task, align)."""
    k = jax.random.split(jax.random.key(seed), 5)
    x, xa = jax.random.normal(k[0], (24, 4)), jax.random.normal(k[1], (8, 4))
    y, ya = jax.random.randint(k[2], (24,), 0, 3), jax.random.randint(k[3], (8,), 0, 3)
    shapes = [(4, 3)] if hidden is None else [(4, hidden), (hidden, 3)]
    sizes = [a * b for a, b in shapes]
    flat0 = 0.5 * jax.random.normal(k[4], (sum(sizes),))

    def logits(flat, inputs):
        mats = [m.reshape(s) for m, s in zip(jnp.split(flat, np.cumsum(sizes)[:-1]), shapes, strict=True)]
        return inputs @ mats[0] if hidden is None else jnp.tanh(inputs @ mats[0]) @ mats[1]

    def ce(z, labels):
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(z), labels[:, None], axis=1))

    return (flat0, lambda f: logits(f, x), lambda z: ce(z, y), lambda f: ce(logits(f, xa), ya))


def _gd_damage(flat0, task, align, lr, steps):
    def step(f, _):
        f = f - lr * jax.grad(task)(f)
        return f, align(f) - align(flat0)

    return jax.lax.scan(step, flat0, None, length=int(steps[-1]))[1][np.asarray(steps) - 1]


def test_linearized_gd_is_exact_gd_on_a_model_linear_in_its_parameters():
    """Softmax regression under cross-entropy: the linearisation is the model, so in the full
    Krylov space the forecast is gradient descent itself, to a long reference run's 1e-10,
    with L_A exact (a cross-entropy, not its quadratic model) along the path."""
    from geomsim.theory.forecast import krylov_basis, linearized_gd

    flat0, logits, ce, align = _classifier(None)
    task = lambda f: ce(logits(f))  # noqa: E731
    g = jax.grad(task)(flat0)
    hvp = lambda v: jax.jvp(jax.grad(task), (flat0,), (v,))[1]  # noqa: E731  (= the GGN: logits linear)
    basis = krylov_basis(flat0.shape[0])(hvp, g)  # the whole space (12 = d)
    steps, lr = np.array([1, 3, 10, 40, 200, 1000]), 0.5
    forecast = linearized_gd(logits, ce, align, flat0, basis, steps, lr)
    np.testing.assert_allclose(forecast, _gd_damage(flat0, task, align, lr, steps), rtol=1e-9, atol=1e-12)


def test_linearized_gd_on_a_network_is_exact_for_one_step_and_then_departs():
    """A tanh network: one step is -lr g whatever the model (g is the Krylov space's first row),
    so the first forecast is exact; by 2000 steps the linearisation has drifted (negative
    control: a forecast that matched GD there would not be a linearisation)."""
    from geomsim.theory.forecast import krylov_basis, linearized_gd

    flat0, logits, ce, align = _classifier(8, seed=1)
    task = lambda f: ce(logits(f))  # noqa: E731
    g = jax.grad(task)(flat0)
    hvp = lambda v: jax.jvp(jax.grad(task), (flat0,), (v,))[1]  # noqa: E731
    basis = krylov_basis(16)(hvp, g)
    steps, lr = np.array([1, 2000]), 0.5
    forecast = linearized_gd(logits, ce, align, flat0, basis, steps, lr)
    measured = _gd_damage(flat0, task, align, lr, steps)
    np.testing.assert_allclose(forecast[0], measured[0], rtol=1e-10)
    assert abs(forecast[1] - measured[1]) > 0.05 * abs(measured[1])


def test_rescaled_crossing_reads_between_below_and_never_past_an_overflow():
    """A pilot's rescaling of one curve, against closed forms on t^2 and t^4 curves."""
    from geomsim.theory.forecast import rescaled_crossing

    t = jnp.geomspace(0.01, 1.0, 17)
    x = jnp.asarray  # scalars as arrays, as the programs take them
    # between samples: 3 t^4 read exactly (a power law is linear in log-log); measured 2x it -> 6 t^4 = 0.5
    at, ratio, cross = rescaled_crossing(t, 3 * t**4, x(0.1), x(6e-4), x(0.5))
    np.testing.assert_allclose([at, ratio, cross], [3e-4, 2.0, (0.5 / 6) ** 0.25], rtol=1e-12)
    # below the first sample: that sample times (t_n / t_0)^2, crossing at the next sample
    at, ratio, cross = rescaled_crossing(t, t**2, x(0.005), x(2.5e-5), x(1e-4))
    np.testing.assert_allclose([at, ratio, cross], [2.5e-5, 1.0, 0.01], rtol=1e-12)
    # no ratio where the forecast or the measurement is not positive, or the forecast overflowed
    for curve, measured in ((0 * t, 1e-3), (t**2, 0.0), (jnp.where(t > 0.05, jnp.inf, t**2), 1e-3)):
        _, ratio, cross = rescaled_crossing(t, curve, x(0.1), x(measured), x(0.5))
        assert np.isnan(ratio) and np.isnan(cross), (curve, measured)
