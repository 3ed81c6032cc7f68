"""Minibatch gradient descent: the batches' noise model (geomsim.theory.minibatch) against
closed forms, and the diagnosis's `--optimizer gd --minibatch` against measured minibatch SGD."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from geomsim.diagnose.cli import main
from geomsim.io import loads_strict
from geomsim.theory.laws import first_crossing
from geomsim.theory.minibatch import batch_noise, noise_draws, noisy_envelope, stepped_crossing


def test_batch_noise_is_the_quadratic_model_of_the_batch_deviations():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    grads = jax.random.normal(k1, (3, 5))
    w = jnp.array([0.5, 0.3, 0.2])
    root = jax.random.normal(k2, (5, 5))
    hess = root @ root.T
    align_grad = jax.random.normal(k3, (5,))
    noise = batch_noise(lambda v: hess @ v, align_grad, grads, w)
    xi = grads - w @ grads  # deviations from the weighted mean gradient
    np.testing.assert_allclose(noise.slope, xi @ align_grad, rtol=1e-12)
    np.testing.assert_allclose(noise.curvature, xi @ hess @ xi.T, rtol=1e-10)
    np.testing.assert_allclose(w @ (noise.curvature), 0.0, atol=1e-10)  # sum_b w_b xi_b = 0


def test_noise_draws_follow_the_multinomial_walk():
    """At step 0 nothing moved; after one step of batch b the displacement is
    `-lr (g_b - g)`, so the draws take exactly the b values of L_A's quadratic model there
    (evaluated densely), at frequencies w_b; after n steps the mean of Q is
    `(lr^2 / 2) n tr(M (diag w - w w^T))` (the linear term averages out)."""
    w = jnp.array([0.5, 0.3, 0.2])
    k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
    grads, root, align_grad = (jax.random.normal(k1, (3, 4)), jax.random.normal(k2, (4, 4)),
                               jax.random.normal(k3, (4,)))
    hess = root @ root.T
    noise = batch_noise(lambda v: hess @ v, align_grad, grads, w)
    lr, n = 0.1, 50
    times = lr * jnp.array([0.5, 1.0, 1.5, n + 0.2])  # steps 0, 1, 1, n
    q = np.asarray(noise_draws(noise, times, lr, jax.random.key(2), 4000))
    assert q.shape == (4000, 4)
    np.testing.assert_array_equal(q[:, 0], 0.0)
    np.testing.assert_array_equal(q[:, 1], q[:, 2])  # no step between them
    displacement = -lr * (grads - w @ grads)  # one step of batch b, beside the mean path's
    one_step = np.asarray(displacement @ align_grad + 0.5 * jnp.einsum("bd,de,be->b", displacement, hess,
                                                                         displacement))
    which = np.abs(q[:, 1:2] - one_step[None, :]).argmin(axis=1)
    np.testing.assert_allclose(q[:, 1], one_step[which], rtol=1e-10)
    freq = np.bincount(which, minlength=3) / q.shape[0]
    np.testing.assert_allclose(freq, w, atol=4 * np.sqrt(0.25 / q.shape[0]))
    cov = jnp.diag(w) - jnp.outer(w, w)
    expected = 0.5 * lr**2 * n * jnp.trace(noise.curvature @ cov)
    standard_error = q[:, 3].std() / np.sqrt(q.shape[0])
    assert abs(q[:, 3].mean() - float(expected)) < 4 * standard_error, (q[:, 3].mean(), expected)


def test_the_envelope_crosses_where_the_quantile_of_first_crossings_does():
    times = jnp.linspace(0.01, 1.0, 60)
    curve = times**2
    draws = 0.1 * jax.random.normal(jax.random.key(3), (1000, 60)).cumsum(axis=1) / 8
    envelope = np.asarray(noisy_envelope(curve, draws, 0.05))
    for threshold in (0.05, 0.2, 0.5):
        paths = np.asarray(curve + draws)
        crossed = (paths >= threshold).any(axis=1)
        first = np.where(crossed, (paths >= threshold).argmax(axis=1), 10**9)
        k = int(np.argmax(envelope >= threshold))
        # the envelope reaches the threshold at the first time >= 5% of draws have (the
        # quantile's linear interpolation: within a draw of it)
        assert np.mean(first <= k) >= 0.05 - 1e-3 and np.mean(first <= k - 1) < 0.05 + 1e-3, threshold
    assert np.all(np.diff(envelope) >= 0)  # a running maximum's quantile never falls


def test_the_crossing_is_read_at_whole_steps():
    """Draws move at whole steps: a crossing between two grid times is the first step after
    the earlier one (not a log-interpolated time up to a grid interval later)."""
    lr = 0.1
    times = jnp.array([0.05, 0.08, 0.13, 0.21, 0.34])  # steps 0, 0, 1, 2, 3
    envelope = jnp.array([0.0, 0.0, 2.0, 3.0, 4.0])
    assert float(stepped_crossing(times, envelope, 1.0, lr)) == pytest.approx(0.1)  # step 1, not t in (0.08, 0.13)
    assert float(stepped_crossing(times, envelope, 3.9, lr)) == pytest.approx(0.3)  # step 3, not t = 0.326
    # the earlier of the two where the interpolated time is (a mean path may cross between steps)
    assert float(stepped_crossing(times, envelope, 2.5, lr)) == pytest.approx(float(first_crossing(times, envelope,
                                                                                                 2.5)))
    assert float(stepped_crossing(times, envelope, 0.0, lr)) == pytest.approx(0.05)  # above from the start
    assert float(stepped_crossing(times, envelope, 9.0, lr)) == np.inf


@pytest.fixture(scope="module")
def measured_sgd():
    """Minibatch SGD on the examples' 4-batch classifier: one batch drawn at random per
    step, 256 draw sequences, Delta L_A per step."""
    from geomsim.diagnose.examples import tiny_classifier

    model = tiny_classifier()
    flat0, unravel = ravel_pytree(model.params)
    a0 = model.align_loss(model.params)
    data = model.task_batches.data

    def run(order, lr):
        def step(x, i):
            g = jax.grad(lambda y: model.batch_loss(unravel(y), jax.tree.map(lambda d: d[i], data)))(x)
            x = x - lr * g
            return x, model.align_loss(unravel(x)) - a0

        return jax.lax.scan(step, flat0, order)[1]

    program = jax.jit(jax.vmap(run, (0, None)))
    orders = jax.random.randint(jax.random.key(5), (256, 400), 0, 4)
    return lambda lr: np.asarray(program(orders, lr))


@pytest.mark.parametrize(("lr", "threshold"), [(0.05, 0.1), (0.01, 0.01), (0.05, 0.01)])
def test_minibatch_gd_forecast_against_minibatch_sgd_on_a_network(measured_sgd, lr, threshold, tmp_path):
    """`--optimizer gd --minibatch` against 256 measured minibatch SGD runs: the forecast
    crossing (where 5% of draw sequences cross) is late for at most 10% of the runs, by 2x
    for none, and within 2x of their 5% quantile; the mean path's crossing, the full-batch
    forecast, is late for over 40%: the negative control (benchmarks/minibatch_noise.py
    gives the numbers, on draws of its own)."""
    out = tmp_path / "mb"
    assert main(["--model", "geomsim.diagnose.examples:tiny_classifier", "--rank", "2", "--optimizer", "gd", "--lr",
                 str(lr), "--threshold", str(threshold), "--minibatch", "--figures", "none", "--defenses", "none",
                 "--out", str(out), "--quiet"]) == 0
    report = loads_strict((out / "report.json").read_text())
    assert report["minibatch"]["batches"] == 4 and report["minibatch"]["quantile"] == 0.05
    curves = measured_sgd(lr)
    crossing = np.where((curves >= threshold).any(axis=1), (curves >= threshold).argmax(axis=1) + 1, np.inf)
    early = np.quantile(crossing, 0.05)
    forecast = report["t_fail"]["quadratic_gd"] / lr  # steps
    mean_path = report["minibatch"]["t_fail_mean_path"]["quadratic_gd"] / lr
    assert np.mean(crossing < forecast) <= 0.10 and not np.any(crossing < forecast / 2), (forecast, early)
    assert 0.5 <= forecast / early <= 2.0, (forecast, early)
    assert np.mean(crossing < mean_path) >= 0.40, (mean_path, np.median(crossing))
    assert "simulated draw sequences" in (out / "report.md").read_text()


def test_too_many_batch_gradients_is_one_line(monkeypatch, tmp_path, capsys):
    """gd's batch noise holds one gradient per task batch: past its memory budget the
    diagnosis stops before measuring, with one line naming the flag (here the budget is
    100 bytes or one Krylov vector; the classifier's 4 batches x 68 parameters take more)."""
    from geomsim.diagnose import run

    monkeypatch.setattr(run, "NOISE_BYTES", 100)
    assert main(["--model", "geomsim.diagnose.examples:tiny_classifier", "--optimizer", "gd", "--minibatch",
                 "--krylov", "1", "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m geomsim.diagnose: error: minibatch: gd's batch noise"), err
