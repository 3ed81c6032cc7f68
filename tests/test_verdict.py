"""The diagnosis's verdict: the early end of a calibrated interval, in steps, and the AIC's
three conditions with their numbers (geomsim.diagnose.verdict)."""

import math

import numpy as np

from geomsim.diagnose.cli import main
from geomsim.diagnose.verdict import (
    DEFAULT_CALIBRATION,
    aic_conditions,
    calibration_document,
    diagnosis_methods,
    load_calibration,
    verdict,
)
from geomsim.io import loads_strict, write_json
from geomsim.theory.calibration import Calibration, LevelCalibrations

T_FAIL = {"quadratic_gd": 2.0, "taylor": 1.0, "paper_bound": 4.0, "alignment_risk": math.inf}


def _levels(*lows, fallback=None):
    """A method calibrated at 1e-3, 1e-2, 1e-1 nats with these lower bounds (upper: +0.5)."""
    return LevelCalibrations((1e-3, 1e-2, 1e-1), tuple(Calibration(lo, 0.5, 0.05, 40, 2, 0, 0.3) for lo in lows),
                             fallback or (False,) * len(lows))


def _doc(**methods):
    """What `load_calibration` returns for a file with these gd methods."""
    return {"source": "a test", "families": {"gd": {"methods": methods}}}


def test_the_earliest_calibrated_lower_end_binds_at_the_nearest_level():
    doc = _doc(alignment_risk=_levels(-0.1, -0.1, -0.1), taylor=_levels(-1.0, -0.2, -0.3),
               quadratic_gd=_levels(-2.0, -0.05, -2.0))
    # at 2e-2 nats the nearest level is 1e-2: taylor 1.0 x 10^-0.2 against quadratic_gd 2.0 x 10^-0.05
    v = verdict("gd", 0.1, 2e-2, T_FAIL, None, doc, 32)
    assert v["method"] == "taylor" and v["calibration"]["level"] == 1e-2 and v["t_fail"] == 1.0
    np.testing.assert_allclose([v["t_fail_low"], v["steps_low"], v["examples_low"]],
                               [10**-0.2, 10**-0.2 / 0.1, 320 * 10**-0.2], rtol=1e-12)
    assert v["t_fail_high"] == math.inf  # alignment_risk never crosses: no upper end
    assert v["calibration"]["methods"] == ["alignment_risk", "quadratic_gd", "taylor"] and v["pilot_steps"] == 0 and v["pilot"] is None
    # at 1e-3 quadratic_gd's bound is the earlier one
    v = verdict("gd", 0.1, 1e-3, T_FAIL, None, doc, None)
    assert v["method"] == "quadratic_gd" and v["t_fail_low"] == 2.0 * 10**-2.0
    # halfway between two levels in log10: the one with the lower bound
    assert verdict("gd", 0.1, 10**-1.5, T_FAIL, None, _doc(taylor=_levels(-1.0, -0.2, -0.3)),
                   None)["calibration"]["level"] == 1e-1
    # the resamples' spread widens the interval before the calibration does
    spread = {"taylor": {"q05": 0.5, "median": 1.0, "q95": 3.0}}
    v = verdict("gd", 0.1, 1e-2, {"taylor": 1.0}, spread, doc, None)
    np.testing.assert_allclose([v["t_fail_low"], v["t_fail_high"]], [0.5 * 10**-0.2, 3.0 * 10**0.5], rtol=1e-12)
    assert v["examples_low"] is None and v["resampled"]


def test_without_a_calibration_the_earliest_forecast_of_all_methods_binds():
    doc = _doc(quadratic_gd=_levels(-1.0, -1.0, -1.0))
    for optimizer, calibration in (("flow", doc), ("gd", None), ("adam", doc)):
        v = verdict(optimizer, 0.1, 1e-2, T_FAIL, None, calibration, None)
        assert v["calibration"] is None and v["method"] == "taylor"
        assert v["t_fail_low"] == v["t_fail"] == 1.0 and v["t_fail_high"] == math.inf  # alignment_risk: never
    assert verdict("flow", 0.1, 1e-2, T_FAIL, None, doc, 8)["steps_low"] is None
    # A tiny Llama under gradient flow: the bounded model never crosses, the others do (the
    # verdict used to be the bounded method's "not forecast to rise").
    v = verdict("flow", 0.01, 1e-2, {"quadratic_flow": math.inf, "taylor": 0.846, "paper_bound": 0.911,
                                     "alignment_risk": 1.199}, None, None, None)
    assert (v["method"], v["t_fail_low"]) == ("taylor", 0.846)
    # with resamples, each method's 5% quantile: the one with the earlier quantile binds
    spread = {"taylor": {"q05": 0.9, "median": 1.0, "q95": 1.1}, "quadratic_gd": {"q05": 0.5, "median": 2.0, "q95": 4.0}}
    v = verdict("gd", 0.1, 1e-2, {"taylor": 1.0, "quadratic_gd": 2.0}, spread, None, None)
    assert (v["method"], v["t_fail_low"], v["t_fail_high"], v["resampled"]) == ("quadratic_gd", 0.5, 4.0, True)
    # no lower bound (too few calibration runs anywhere): 0, never a late one
    v = verdict("gd", 0.1, 1e-2, T_FAIL, None, _doc(quadratic_gd=_levels(-math.inf, -math.inf, -math.inf)),
                None)
    assert v["t_fail_low"] == 0.0


def test_the_shipped_calibration_loads_and_covers_both_families():
    doc = load_calibration("")
    assert set(doc["families"]) == {"gd", "adam"} and list(doc["families"]["adam"]["methods"]) == ["adam_sign"]
    for family in doc["families"].values():
        for levels in family["methods"].values():
            for cal, fallback in zip(levels.calibrations, levels.fallback, strict=True):
                assert math.isfinite(cal.low) and cal.low <= cal.high, cal
                assert fallback or cal.runs - cal.censored >= 19, cal  # 19 crossings give a 5% bound at all
    assert load_calibration("none") is None and DEFAULT_CALIBRATION.exists()


def test_aic_conditions_name_the_numbers_behind_each():
    aic = {"sharpness": 5.0, "mu": 0.05, "gap_ratio": 0.01, "eps": 0.1 + 1e-16, "coupling": 0.6, "grad_norm": 1.0}
    sharp, orthogonal, coupled = aic_conditions(aic, t_fail=0.5, optimizer="gd")
    assert sharp["holds"] and orthogonal["holds"] and coupled["holds"]  # eps = 0.1 up to round-off
    assert "t_x = 0.3333" in coupled["measured"]  # 2 eps ||g|| / gamma
    # Negative controls: each condition fails on its own.
    assert not aic_conditions({**aic, "gap_ratio": 0.5}, 0.5, "gd")[0]["holds"]
    assert not aic_conditions({**aic, "eps": 0.3}, 0.5, "gd")[1]["holds"]
    assert not aic_conditions(aic, 0.2, "gd")[2]["holds"]  # first-order drift still dominates at t_fail
    assert not aic_conditions({**aic, "coupling": 0.0}, 0.5, "gd")[2]["holds"]


def test_a_diagnosis_uses_the_given_calibration_and_says_when_in_steps(tmp_path):
    file = tmp_path / "cal.json"
    write_json(file, calibration_document({"gd": {"quadratic_gd": _levels(-0.5, -0.5, -0.5)}}, "my own fine-tunes"))
    assert main(["--model", "geomsim.diagnose.examples:quadratic", "--rank", "2", "--optimizer", "gd", "--lr",
                 "0.05", "--calibration", str(file), "--figures", "none", "--out", str(tmp_path), "--quiet"]) == 0
    report = loads_strict((tmp_path / "report.json").read_text())
    v = report["verdict"]
    assert set(report["t_fail"]) == set(diagnosis_methods("gd", "hessian"))
    assert v["method"] == "quadratic_gd" and v["calibration"]["source"] == "my own fine-tunes"
    np.testing.assert_allclose(v["t_fail_low"], report["t_fail"]["quadratic_gd"] * 10**-0.5, rtol=1e-12)
    np.testing.assert_allclose(v["steps_low"], v["t_fail_low"] / 0.05, rtol=1e-12)
    assert [c["name"] for c in report["aic_conditions"]] == ["sharp, low-rank alignment", "first-order orthogonality",
                                                             "curvature coupling"]
    text = (tmp_path / "report.md").read_text()
    assert f"**{v['steps_low']:.4g} steps** at lr 0.05 at the earliest" in text
    assert "my own fine-tunes" in text and "| curvature coupling | yes |" in text


def test_on_a_model_off_the_calibration_set_the_verdict_stays_early_where_one_method_is_late(tmp_path):
    """The examples' classifier is not polished (grad L_A != 0): measured under GD (lr 0.05)
    it crosses 0.01 nats at step 6. alignment-risk's formula, which ignores the first-order
    terms, crosses 20x later; the verdict, the earliest calibrated lower end over every
    method, does not. (`--task-model linearized` adds the linearised network's forecast.)"""
    import jax
    from jax.flatten_util import ravel_pytree

    from geomsim.diagnose.examples import tiny_classifier

    lr, tau = 0.05, 1e-2
    assert main(["--model", "geomsim.diagnose.examples:tiny_classifier", "--rank", "2", "--operator", "fisher",
                 "--optimizer", "gd", "--lr", str(lr), "--threshold", str(tau), "--task-model", "linearized",
                 "--figures", "none", "--out", str(tmp_path), "--quiet"]) == 0
    report = loads_strict((tmp_path / "report.json").read_text())
    model = tiny_classifier()
    flat0, unravel = ravel_pytree(model.params)
    a0 = model.align_loss(model.params)

    def step(x, _):
        x = x - lr * jax.grad(lambda y: model.task_loss(unravel(y)))(x)
        return x, model.align_loss(unravel(x)) - a0

    damage = np.asarray(jax.jit(lambda: jax.lax.scan(step, flat0, None, length=60)[1])())
    measured = int(np.argmax(damage >= tau)) + 1  # steps until Delta L_A >= tau
    assert damage.max() >= tau and 3 <= measured <= 12, measured
    assert report["verdict"]["steps_low"] <= measured
    assert report["t_fail"]["alignment_risk"] / lr > 2 * measured  # the late method, on its own
    assert set(report["t_fail"]) == set(diagnosis_methods("gd", "linearized"))  # what the validation scores
    # the linearised network with L_A exact along its path, at whole steps: within 2x here
    assert measured / 2 <= report["t_fail"]["linearized_gd"] / lr <= 2 * measured


def test_a_verdict_before_the_first_step_says_so():
    from geomsim.diagnose.run import _verdict_line

    v = {"t_fail": 0.05, "t_fail_low": 0.02, "t_fail_high": math.inf, "steps": 1.0, "steps_low": 0.4,
         "steps_high": math.inf, "examples_low": None}
    report = {"verdict": v, "threshold": 1e-2, "horizon": 1.0, "config": {"lr": 0.05}}
    assert "**within the first step**" in _verdict_line(report) and "unbounded" in _verdict_line(report)
    report["verdict"] = {**v, "steps_low": 4.0, "t_fail_low": 0.2}
    assert "after **4 steps** at lr 0.05 at the earliest" in _verdict_line(report)
    report["verdict"] = {**v, "t_fail_low": math.inf}
    assert "is not forecast to rise" in _verdict_line(report)
