"""The diagnosis's defense table: each defended forecast is the library's model of that
defense on the diagnosed model (exact GD under a defense: tests/test_forecast.py), and the
recommendation follows its rule."""

import math

import jax.numpy as jnp
import numpy as np

from geomsim.defenses import project_off
from geomsim.diagnose.cli import main
from geomsim.diagnose.defenses import DEFENSES, defense_table, forecastable
from geomsim.diagnose.examples import quadratic
from geomsim.io import loads_strict
from geomsim.theory.forecast import landscape_local_models, quadratic_gd, task_change_gd, time_to_failure


def _report(tmp_path, *flags):
    assert main([*flags, "--out", str(tmp_path), "--quiet", "--figures", "none"]) == 0
    return loads_strict((tmp_path / "report.json").read_text())


def test_each_defended_forecast_is_that_defenses_model_of_the_diagnosed_landscape(tmp_path):
    report = _report(tmp_path, "--model", "geomsim.diagnose.examples:quadratic", "--rank", "2", "--optimizer", "gd",
                     "--lr", "0.05", "--horizon", "20", "--replay", "0.3")
    table = report["defenses"]
    rows = {r["defense"]: r for r in table["rows"]}
    assert [r["defense"] for r in table["rows"]] == ["none", "static_projection", "curvature_projection", "replay"]
    # none is the diagnosis's own bounded forecast
    assert rows["none"]["t_fail"] == report["t_fail"]["quadratic_gd"] and rows["none"]["task_progress"] == 1.0
    land, lr = quadratic(), 0.05
    t = jnp.asarray(report["forecast"]["t"])
    top = jnp.linalg.eigh(land.hess_align)[1][:, -2:].T  # S0: the top-2 alignment eigenvectors, dense
    steps = t / lr
    t_ref = jnp.asarray([table["t_ref"]])
    for name, projector, beta in (("static_projection", lambda v: project_off(top, v), 0.0), ("replay", None, 0.3)):
        models = landscape_local_models(land, 12, projector, beta)
        curve = quadratic_gd(models, steps, lr)
        np.testing.assert_allclose(table["align_increase"][name], curve, rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(rows[name]["t_fail"], time_to_failure(t, curve, 1e-2), rtol=1e-6)
        np.testing.assert_allclose(rows[name]["task_at_ref"], task_change_gd(models, t_ref / lr, lr, beta)[0],
                                   rtol=1e-6)
    # L_A is quadratic here: no curvature grows along the path (D^3 L_A = 0), so the
    # curvature-aware projection adds nothing to S0 (a control for the growth solve)
    np.testing.assert_allclose(table["align_increase"]["curvature_projection"], table["align_increase"][
        "static_projection"], rtol=1e-9, atol=1e-14)
    # the defenses do something: projecting S0 off delays the crossing, replay too
    assert rows["static_projection"]["delay"] > 1.2 and rows["replay"]["delay"] > 1.0
    assert table["recommended"] in ("static_projection", "curvature_projection", "replay")
    assert "Which defense holds" in (tmp_path / "report.md").read_text()


def test_on_a_network_the_growth_directions_move_the_curvature_aware_forecast(tmp_path):
    report = _report(tmp_path, "--model", "geomsim.diagnose.examples:tiny_classifier", "--rank", "2",
                     "--optimizer", "adam", "--lr", "1e-3", "--defenses", "static_projection,curvature_projection")
    curves = report["defenses"]["align_increase"]
    assert set(curves) == {"none", "static_projection", "curvature_projection"}
    assert not np.allclose(curves["curvature_projection"], curves["static_projection"], rtol=1e-3)
    assert report["defenses"]["method"] == "adam_sign"
    assert report["defenses"]["rows"][0]["t_fail"] == report["t_fail"]["adam_sign"]
    none = _report(tmp_path / "none", "--model", "geomsim.diagnose.examples:quadratic", "--defenses", "none")
    assert none["defenses"] is None and "Which defense" not in (tmp_path / "none" / "report.md").read_text()


def _measured(**rows):
    return {name: {"t_fail": t, "task_at_ref": task, "align_at_ref": 0.0} for name, (t, task) in rows.items()}


def test_the_recommendation_is_the_latest_crossing_that_keeps_the_task_progress():
    # replay crosses latest but keeps 40% of the progress: static_projection is recommended
    table = defense_table(_measured(none=(1.0, -1.0), static_projection=(3.0, -0.9), replay=(9.0, -0.4)),
                          1.0, "quadratic_gd", 0.5, 0.1)
    assert table["recommended"] == "static_projection" and "3" in table["reason"]
    rows = {r["defense"]: r for r in table["rows"]}
    assert rows["replay"]["task_progress"] == 0.4 and rows["replay"]["delay"] == 9.0
    assert rows["replay"]["replay"] == 0.1 and rows["static_projection"]["replay"] is None
    # with a lower bar replay is; never crossing beats any finite crossing
    assert defense_table(_measured(none=(1.0, -1.0), static_projection=(3.0, -0.9), replay=(9.0, -0.4)),
                         1.0, "q", 0.3, 0.1)["recommended"] == "replay"
    assert defense_table(_measured(none=(1.0, -1.0), static_projection=(math.inf, -0.6), replay=(9.0, -0.9)),
                         1.0, "q", 0.5, 0.1)["recommended"] == "static_projection"
    # no defense delays the crossing: none recommended, and said so
    table = defense_table(_measured(none=(1.0, -1.0), static_projection=(0.5, -0.9)), 1.0, "q", 0.5, 0.1)
    assert table["recommended"] is None and "delays" in table["reason"]
    # the undefended run never crosses: nothing to recommend; delays undefined
    table = defense_table(_measured(none=(math.inf, -1.0), replay=(math.inf, -0.9)), 2.0, "q", 0.5, 0.1)
    assert table["recommended"] is None and "not forecast to cross" in table["reason"]
    assert table["rows"][1]["delay"] is None
    # Adam's model has no restoring force: replay is not forecast for it, and the table says why
    assert forecastable("gd")[0] == DEFENSES and "replay" not in forecastable("adamw")[0]
    assert "restoring force" in forecastable("adam")[1]["replay"]
    # a task model that does not fall has no progress to keep
    table = defense_table(_measured(none=(1.0, 0.2), replay=(5.0, 0.1)), 1.0, "q", 0.5, 0.1)
    assert table["rows"][1]["task_progress"] is None and table["recommended"] is None


def test_the_defense_program_compiles_once_for_a_new_threshold_or_replay(tmp_path):
    from geomsim.diagnose import defenses

    sizes = []
    for replay in ("0.1", "0.2"):
        _report(tmp_path / replay, "--model", "geomsim.diagnose.examples:quadratic", "--rank", "2", "--replay", replay,
                "--defenses", "replay")
        sizes.append(defenses.defense_program._cached._cache_size())
    assert sizes[0] == sizes[1]
