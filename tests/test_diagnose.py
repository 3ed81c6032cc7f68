"""`python -m geomsim.diagnose` on a user's landscape and on an equinox model."""

import jax
import numpy as np
import pytest

from geomsim.diagnose.cli import main
from geomsim.diagnose.examples import quadratic
from geomsim.dynamics.flow import exact_quadratic_flow
from geomsim.io import loads_strict


def test_report_on_a_quadratic_landscape_is_exact_and_strict(tmp_path, capsys):
    assert main(["--model", "geomsim.diagnose.examples:quadratic", "--rank", "2", "--horizon", "20", "--threshold",
                 "1e-2", "--out", str(tmp_path), "--quiet"]) == 0
    report = loads_strict((tmp_path / "report.json").read_text())
    assert set(report["forecast"]["align_increase"]) == {"quadratic_flow", "taylor", "paper_bound", "alignment_risk"}
    land = quadratic()
    t = jax.numpy.asarray(report["forecast"]["t"])
    exact = jax.vmap(land.align_increase)(exact_quadratic_flow(land.grad_task, land.hess_task, t))
    np.testing.assert_allclose(report["forecast"]["align_increase"]["quadratic_flow"], exact, rtol=1e-8)
    np.testing.assert_allclose(report["aic"]["sharpness"], 5.0, rtol=1e-8)
    np.testing.assert_allclose(report["aic"]["eps"], 0.1, rtol=1e-8)
    assert report["t_fail"]["quadratic_flow"] is not None and report["t_fail"]["quadratic_flow"] < 20
    for name in ("report.md", "fig_forecast.png", "fig_forecast.pdf", "fig_spectrum.png"):
        assert (tmp_path / name).exists(), name
    assert "Verdict" in (tmp_path / "report.md").read_text()
    assert "t_fail" in capsys.readouterr().out


@pytest.mark.parametrize("model", ["tiny_mlp", "tiny_flax"])
def test_gd_forecast_on_equinox_and_flax_models(model, tmp_path):
    assert main(["--model", f"geomsim.diagnose.examples:{model}", "--rank", "2", "--optimizer", "gd", "--lr", "0.05",
                 "--out", str(tmp_path), "--quiet"]) == 0
    report = loads_strict((tmp_path / "report.json").read_text())
    assert report["forecast"]["bounded_method"] == "quadratic_gd"
    values = np.asarray(report["forecast"]["align_increase"]["quadratic_flow"], dtype=float)
    assert np.all(np.isfinite(values)) and report["krylov_depth"] >= 8


@pytest.mark.parametrize(("flags", "field"), [
    ([], "model"),
    (["--model", "no_such_module_xyz:f"], "model"),
    (["--model", "tests.diagnose_models:not_a_landscape"], "model"),
    (["--model", "geomsim.diagnose.examples:quadratic", "--rank", "50"], "rank"),
    (["--model", "geomsim.diagnose.examples:quadratic", "--optimizer", "adam"], "optimizer"),
    (["--model", "geomsim.diagnose.examples:quadratic", "--threshold", "0"], "threshold"),
])
def test_bad_input_is_one_line_naming_the_flag(flags, field, tmp_path, capsys):
    assert main([*flags, "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"python -m geomsim.diagnose: error: {field}"), err
