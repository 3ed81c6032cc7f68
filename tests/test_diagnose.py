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
    for name in ("report.md", "fig_forecast.png", "fig_spectrum.png"):
        assert (tmp_path / name).exists(), name
    assert not (tmp_path / "fig_forecast.pdf").exists()  # --figures png is the default
    assert "Verdict" in (tmp_path / "report.md").read_text()
    assert "t_fail" in capsys.readouterr().out


@pytest.mark.parametrize("model", ["tiny_mlp", "tiny_flax"])
def test_gd_forecast_on_equinox_and_flax_models(model, tmp_path):
    assert main(["--model", f"geomsim.diagnose.examples:{model}", "--rank", "2", "--optimizer", "gd", "--lr", "0.05",
                 "--out", str(tmp_path), "--quiet"]) == 0
    report = loads_strict((tmp_path / "report.json").read_text())
    assert report["forecast"]["bounded_method"] == "quadratic_gd"
    values = np.asarray(report["forecast"]["align_increase"]["quadratic_gd"], dtype=float)
    assert np.all(np.isfinite(values)) and report["krylov_depth"] >= 8


# (ggn, gauss_newton) is the fisher case's twin: test_ggn_and_fisher_agree_for_a_categorical_model.
@pytest.mark.parametrize(("operator", "task_model"), [("hessian", "hessian"), ("fisher", "gauss_newton")])
def test_aligned_model_forecasts_are_exact_on_quadratic_losses(operator, task_model, tmp_path):
    """Linear outputs + Gaussian likelihood: Hessian = GGN = Fisher, L_F exactly quadratic,
    so the bounded forecast must equal the exact flow's Delta L_A whatever the operators."""
    from jax.flatten_util import ravel_pytree

    from tests.diagnose_models import linear_regression

    assert main(["--model", "tests.diagnose_models:linear_regression", "--rank", "2", "--operator", operator,
                 "--task-model", task_model, "--horizon", "5", "--out", str(tmp_path), "--quiet"]) == 0
    report = loads_strict((tmp_path / "report.json").read_text())
    method = report["forecast"]["bounded_method"]
    assert method == ("gauss_newton_flow" if task_model == "gauss_newton" else "quadratic_flow")
    model = linear_regression()
    flat0, unravel = ravel_pytree(model.params)

    def task(x):
        return model.task_loss(unravel(flat0 + x))

    def align(x):
        return model.align_loss(unravel(flat0 + x)) - model.align_loss(model.params)

    zero = jax.numpy.zeros_like(flat0)
    t = jax.numpy.asarray(report["forecast"]["t"])
    exact = jax.vmap(align)(exact_quadratic_flow(jax.grad(task)(zero), jax.hessian(task)(zero), t))
    np.testing.assert_allclose(report["forecast"]["align_increase"][method], exact, rtol=1e-8, atol=1e-14)
    # The dense spectrum of the alignment Hessian (= its GGN and Fisher here).
    top = np.linalg.eigvalsh(np.asarray(jax.hessian(align)(zero)))[::-1]
    np.testing.assert_allclose(report["aic"]["eigenvalues"][:3], top[:3], rtol=1e-8)


def test_ggn_and_fisher_agree_for_a_categorical_model_and_resamples_spread(tmp_path):
    reports = []
    for operator, resamples in (("ggn", "0"), ("fisher", "6")):
        out = tmp_path / operator
        assert main(["--model", "geomsim.diagnose.examples:tiny_flax_classifier", "--rank", "2", "--operator",
                     operator, "--task-model", "gauss_newton", "--resamples", resamples, "--out", str(out),
                     "--quiet"]) == 0
        reports.append(loads_strict((out / "report.json").read_text()))
    ggn, fisher = reports
    for key in ("sharpness", "coupling", "eps"):
        np.testing.assert_allclose(ggn["aic"][key], fisher["aic"][key], rtol=1e-8)
    np.testing.assert_allclose(ggn["t_fail"]["gauss_newton_flow"], fisher["t_fail"]["gauss_newton_flow"], rtol=1e-8)
    assert ggn["task_ritz_min"] >= -1e-10  # the Gauss-Newton task model is PSD
    spread = fisher["t_fail_spread"]["gauss_newton_flow"]
    assert spread["q05"] < spread["q95"]  # four task batches drawn with replacement move the forecast
    assert spread["q05"] <= spread["median"] <= spread["q95"]
    assert ggn["t_fail_spread"] is None
    assert "5% .. 95%" in (tmp_path / "fisher" / "report.md").read_text()


@pytest.mark.parametrize(("flags", "field"), [
    ([], "model"),
    (["--model", "no_such_module_xyz:f"], "model"),
    (["--model", "tests.diagnose_models:not_a_landscape"], "model"),
    (["--model", "geomsim.diagnose.examples:quadratic", "--rank", "50"], "rank"),
    (["--model", "geomsim.diagnose.examples:quadratic", "--optimizer", "sgd"], "optimizer"),
    (["--model", "geomsim.diagnose.examples:quadratic", "--minibatch"], "minibatch"),
    (["--model", "geomsim.diagnose.examples:quadratic", "--optimizer", "gd", "--minibatch"],
     "minibatch: needs an AlignedModel"),
    (["--model", "geomsim.diagnose.examples:quadratic", "--optimizer", "adam", "--adam-eps", "0"], "adam_eps"),
    (["--model", "geomsim.diagnose.examples:quadratic", "--threshold", "0"], "threshold"),
    (["--model", "geomsim.diagnose.examples:quadratic", "--operator", "ggn"], "operator"),
    (["--model", "geomsim.diagnose.examples:quadratic", "--task-model", "gauss_newton"], "task_model"),
    (["--model", "geomsim.diagnose.examples:quadratic", "--operator", "kfac"], "operator"),
    (["--hf", "tests/hf_fixtures/llama"], "align"),
    (["--hf", "tests/hf_fixtures/llama", "--model", "geomsim.diagnose.examples:quadratic"], "hf"),
    (["--hf", "no/such/folder", "--align", "a.jsonl", "--task", "b.jsonl"], "hf: no/such/folder: not a folder"),
    (["--hf", "tests/hf_fixtures/llama", "--align", "a.jsonl", "--task", "b.jsonl"], "hf: tests/hf_fixtures/llama/"
     "tokenizer.json: missing"),
    (["--model", "geomsim.diagnose.examples:quadratic", "--lora-rank", "4"], "params"),
    (["--hf", "x", "--align", "a", "--task", "b", "--dtype", "float16"], "dtype"),
    (["--model", "geomsim.diagnose.examples:quadratic", "--calibration", "no/such.json"], "calibration: file not found"),
    (["--model", "geomsim.diagnose.examples:tiny_classifier", "--task-model", "linearized"], "task_model: linearized"),
    (["--model", "geomsim.diagnose.examples:quadratic", "--task-model", "linearized", "--optimizer", "gd"],
     "task_model: linearized needs an AlignedModel"),
    (["--model", "geomsim.diagnose.examples:quadratic", "--calibration", "pyproject.toml"], "calibration: pyproject"),
    (["--model", "geomsim.diagnose.examples:quadratic", "--defenses", "none,replay"], "defenses: none means"),
    (["--model", "geomsim.diagnose.examples:quadratic", "--defenses", "lora"], "defenses"),
    (["--model", "geomsim.diagnose.examples:quadratic", "--defenses", "replay,replay"], "defenses: each at most"),
    (["--model", "geomsim.diagnose.examples:quadratic", "--replay", "0"], "replay"),
    (["--model", "geomsim.diagnose.examples:quadratic", "--pilot-steps", "-1"], "pilot_steps"),
    (["--model", "geomsim.diagnose.examples:quadratic", "--optimizer", "adam", "--b2", "1"], "b2"),
    (["--model", "geomsim.diagnose.examples:quadratic", "--min-task-progress", "1.5"], "min_task_progress"),
])
def test_bad_input_is_one_line_naming_the_flag(flags, field, tmp_path, capsys):
    assert main([*flags, "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"python -m geomsim.diagnose: error: {field}"), err


def test_flax_nnx_models_are_accepted(tmp_path):
    """An nnx module (split by as_functional) diagnoses to the equinox twin's numbers."""
    reports = []
    for name in ("tiny_classifier", "tiny_nnx_classifier"):
        assert main(["--model", f"geomsim.diagnose.examples:{name}", "--rank", "2", "--operator", "fisher",
                     "--out", str(tmp_path / name), "--quiet"]) == 0
        reports.append(loads_strict((tmp_path / name / "report.json").read_text()))
    for field in ("sharpness", "coupling", "eps", "mu"):
        assert np.isclose(reports[0]["aic"][field], reports[1]["aic"][field], rtol=1e-8), field


@pytest.mark.parametrize("choice, suffixes", [("both", {".png", ".pdf"}), ("none", set())])
def test_figures_flag_chooses_the_files_and_a_new_threshold_reuses_the_program(choice, suffixes, tmp_path):
    """`--figures both|none` (report.json first either way); a second threshold is an input
    of the compiled measurement, not a recompile, and moves t_fail as the curves say."""
    from geomsim.diagnose import run as diagnose_run

    reports, programs = [], []
    for threshold in ("1e-2", "2e-2"):
        out = tmp_path / threshold
        assert main(["--model", "geomsim.diagnose.examples:quadratic", "--rank", "2", "--threshold", threshold,
                     "--figures", choice, "--out", str(out), "--quiet"]) == 0
        assert {p.suffix for p in out.glob("fig_*")} == suffixes
        reports.append(loads_strict((out / "report.json").read_text()))
        programs.append(diagnose_run._measure._cached._cache_size())
    assert programs[1] == programs[0]  # the second threshold compiled nothing new
    low, high = (r["t_fail"]["quadratic_flow"] for r in reports)
    assert low < high  # a larger threshold is crossed later
    assert reports[0]["aic"]["sharpness"] == reports[1]["aic"]["sharpness"]
    assert reports[1]["aic"]["threshold"] == 2e-2


def test_adam_forecast_against_minibatch_adam_on_a_network(tmp_path):
    """`--optimizer adam --minibatch` on the 4-batch classifier against optax.adam drawing one
    task batch per step (8 seeds): the crossing of 1e-2 nats is forecast within 2x and at most
    10% late (measured: 1.01x the median measured step; 0.52x with full-batch v = g^2, whose
    smaller second moment overstates the noisy coordinates' steps)."""
    import optax
    from jax.flatten_util import ravel_pytree

    from geomsim.diagnose.examples import tiny_classifier

    lr, steps, threshold = 1e-2, 300, 1e-2
    ratios = {}
    for flag in ("--minibatch", "--no-minibatch"):
        assert main(["--model", "geomsim.diagnose.examples:tiny_classifier", "--optimizer", "adam", "--lr", str(lr),
                     "--threshold", str(threshold), flag, "--figures", "none", "--out", str(tmp_path / flag),
                     "--quiet"]) == 0
        report = loads_strict((tmp_path / flag / "report.json").read_text())
        assert set(report["t_fail"]) == {"adam_sign"} and report["adam"]["step_norm"] > 0
        ratios[flag] = report["t_fail"]["adam_sign"] / lr  # forecast steps
    model = tiny_classifier()
    flat0, unravel = ravel_pytree(model.params)
    a0 = model.align_loss(model.params)
    data = model.task_batches.data
    opt = optax.adam(lr)

    def run(key):
        def step(carry, i):
            x, state = carry
            g = jax.grad(lambda y: model.batch_loss(unravel(y), jax.tree.map(lambda d: d[i], data)))(x)
            update, state = opt.update(g, state, x)
            x = x + update
            return (x, state), model.align_loss(unravel(x)) - a0

        return jax.lax.scan(step, (flat0, opt.init(flat0)), jax.random.randint(key, (steps,), 0, 4))[1]

    curves = np.asarray(jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(0), 8)))
    assert np.all(curves.max(axis=1) >= threshold)
    measured = np.median(np.argmax(curves >= threshold, axis=1) + 1)
    ratio = {flag: value / measured for flag, value in ratios.items()}
    assert 0.5 <= ratio["--minibatch"] <= 1.1, ratio
    assert ratio["--no-minibatch"] < ratio["--minibatch"], ratio  # without the noise in v: earlier still
