"""`--pilot-steps`: the pilot is the fine-tune it stands for, an exact forecast is left as it
is, a shape-wrong one is rescaled, a crossing within the pilot is the verdict, and the
verdict never moves later (geomsim.diagnose.pilot)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from geomsim.diagnose import DiagnoseConfig, diagnose
from geomsim.diagnose.examples import quadratic, tiny_classifier
from geomsim.diagnose.pilot import PilotInputs, PilotSettings, run_pilot, with_pilot
from geomsim.io import loads_strict


def _adamw_by_hand(model, lr, eps, wd, steps, b1, b2):
    """AdamW written out (not optax), one task batch per step in turn: (Delta L_A, L_F) per step."""
    flat, unravel = ravel_pytree(model.params)
    m, v, a0 = jnp.zeros_like(flat), jnp.zeros_like(flat), model.align_loss(model.params)
    batches = model.task_batches
    align, task = [], []
    for n in range(steps):
        batch = jax.tree.map(lambda d, n=n: d[n % batches.count], batches.data)
        g = ravel_pytree(jax.grad(lambda p, b=batch: model.batch_loss(p, b))(unravel(flat)))[0]
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g**2
        m_hat, v_hat = m / (1 - b1 ** (n + 1)), v / (1 - b2 ** (n + 1))
        flat = flat - lr * (m_hat / (jnp.sqrt(v_hat) + eps) + wd * flat)
        align.append(model.align_loss(unravel(flat)) - a0)
        task.append(model.task_loss(unravel(flat)))
    return np.asarray(align), np.asarray(task)


def test_the_pilot_is_the_fine_tune_it_stands_for():
    """Minibatch AdamW on the 4-batch classifier against AdamW written out; GD on the
    quadratic landscape against GD written out."""
    model = tiny_classifier()
    assert model.task_batches.stacked and model.task_batches.count == 4
    lr, eps, wd, b1, b2, steps = 3e-2, 1e-8, 1e-2, 0.8, 0.99, 9  # b1, b2 not optax's defaults: they reach it
    numbers = PilotInputs(*map(jnp.asarray, (lr, eps, wd, b1, b2)))
    curve = run_pilot(PilotSettings(steps, "adamw", True), model, numbers)
    align, task = _adamw_by_hand(model, lr, eps, wd, steps, b1, b2)
    np.testing.assert_allclose(curve.align_increase, align, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(curve.task_loss, task, rtol=1e-9)
    assert np.all(np.diff(task) != 0) and align[-1] != 0  # it moved
    # Negative control: full-batch Adam is another fine-tune (every batch each step).
    full = run_pilot(PilotSettings(steps, "adamw", False), model, numbers)
    assert not np.allclose(full.task_loss, task, rtol=1e-6)

    land, lr = quadratic(), 0.01
    curve = run_pilot(PilotSettings(5, "gd", False), land, PilotInputs(*map(jnp.asarray, (lr, 1e-8, 0.0, 0.9, 0.999))))
    theta, expected = land.theta0, []
    for _ in range(5):
        theta = jax.tree.map(lambda x, g: x - lr * g, theta, jax.grad(land.task_loss)(theta))
        expected.append(land.align_loss(theta) - land.align_loss(land.theta0))
    np.testing.assert_allclose(curve.align_increase, expected, rtol=1e-10)


def test_an_exact_forecast_stays_a_shape_wrong_one_is_rescaled_and_a_crossing_is_measured(tmp_path):
    """On quadratic losses the quadratic GD model is exact: measured / forecast = 1 at the
    pilot, and its rescaled crossing is its zero-step one. The quartic bound omits this
    landscape's first- and second-order terms (eps > 0): its ratio is far from 1 and its
    rescaled crossing moves. With a lower threshold the pilot itself crosses, and its
    first measured crossing is the verdict."""
    lr, steps = 0.01, 20
    config = DiagnoseConfig(model="geomsim.diagnose.examples:quadratic", rank=2, optimizer="gd", lr=lr,
                            pilot_steps=steps, defenses=("none",))
    report = diagnose(config, tmp_path / "below", quiet=True)
    pilot = report["pilot"]
    assert pilot["steps"] == steps == report["verdict"]["pilot_steps"] and pilot["crossed_step"] is None
    exact, bound = pilot["methods"]["quadratic_gd"], pilot["methods"]["paper_bound"]
    # 1e-3: the forecast is read between its 64 log-spaced samples (log-log interpolation)
    assert abs(exact["ratio"] - 1) < 1e-3, exact
    assert math.isclose(exact["t_fail_rescaled"], exact["t_fail"], rel_tol=1e-3), exact
    assert bound["ratio"] > 2 and bound["t_fail_rescaled"] < 0.9 * bound["t_fail"], bound
    assert pilot["budget_fraction"] == steps / (report["verdict"]["t_fail"] / lr)
    assert report["verdict"]["pilot"] == ("rescaled" if pilot["moved_verdict"] else None)
    written = loads_strict((tmp_path / "below" / "report.json").read_text())
    assert written["pilot"]["align_increase"] == pilot["align_increase"]
    assert "**Pilot:** 20 real steps" in (tmp_path / "below" / "report.md").read_text()

    low = DiagnoseConfig(**{**config.__dict__, "threshold": 0.5 * pilot["align_increase"][-1]})
    report = diagnose(low, tmp_path / "crossed", quiet=True)
    first = int(np.argmax(np.asarray(pilot["align_increase"]) >= low.threshold)) + 1  # the same 20 steps
    assert report["pilot"]["crossed_step"] == first < steps
    v = report["verdict"]
    assert (v["method"], v["pilot"]) == ("measured", "measured") and v["steps"] == v["steps_low"] == first
    assert v["steps_high"] == first and v["t_fail"] == first * lr
    assert "itself crossed" in (tmp_path / "crossed" / "report.md").read_text()


def test_a_pilot_moves_the_verdict_earlier_never_later():
    chosen = {"method": "taylor", "t_fail": 2.0, "t_fail_low": 1.0, "t_fail_high": 4.0, "steps": 200.0,
              "steps_low": 100.0, "steps_high": 400.0, "examples_low": 800.0, "pilot_steps": 0, "pilot": None}

    def pilot(**rescaled):
        return {"steps": 5, "crossed_step": None, "methods": {
            name: {"t_fail_rescaled": t, "moves_verdict": name != "paper_bound"} for name, t in rescaled.items()}}

    later = pilot(a=1.5, b=math.inf, c=math.nan)
    assert with_pilot(chosen, later, 0.01, True, 8) == {**chosen, "pilot_steps": 5, "pilot": None}
    assert not later["moved_verdict"] and later["zero_step_low"] == 1.0 and later["zero_step_method"] == "taylor"
    earlier = pilot(a=0.5, b=0.7, paper_bound=0.1)  # the quartic bound's rescaled crossing never moves it
    out = with_pilot(chosen, earlier, 0.01, True, 8)
    assert earlier["moved_verdict"] and earlier["budget_fraction"] == 5 / 200
    assert (out["method"], out["pilot"], out["t_fail_low"], out["steps_low"], out["examples_low"]) == (
        "a", "rescaled", 0.5, 50.0, 400.0)
    assert (out["t_fail"], out["t_fail_high"]) == (2.0, 4.0)  # the point forecast and the late end stand


def test_an_adam_pilot_reports_both_ways(tmp_path):
    """Adam's report with a pilot that stays below the threshold and one that crosses it
    (report.md describes Adam's method by its t_fail entry: a pilot's verdict must not break it)."""
    config = DiagnoseConfig(model="geomsim.diagnose.examples:quadratic", rank=2, optimizer="adam", lr=1e-3,
                            pilot_steps=10, defenses=("none",))
    report = diagnose(config, tmp_path / "below", quiet=True)
    assert report["pilot"]["crossed_step"] is None and set(report["pilot"]["methods"]) == {"adam_sign"}
    assert "**Pilot:** 10 real steps" in (tmp_path / "below" / "report.md").read_text()
    rise = report["pilot"]["align_increase"][-1]
    assert rise > 0, rise
    crossed = diagnose(DiagnoseConfig(**{**config.__dict__, "threshold": rise / 2}), tmp_path / "crossed", quiet=True)
    assert crossed["verdict"]["pilot"] == "measured" and crossed["verdict"]["steps"] <= 10
    text = (tmp_path / "crossed" / "report.md").read_text()
    assert "within the pilot" in text and "measured: the pilot's fine-tune" in text
