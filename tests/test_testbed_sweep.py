"""The transformer sharpness x coupling sweep on a tiny config: knobs, tilt, polish, controls, resume, CLI."""

import json
import shlex
import shutil

import jax
import numpy as np
import pytest
from test_readme import RESUMED_COMMANDS, check_command

from geomsim import config as config_layer
from geomsim.config import ConfigError
from geomsim.processes import ProcessGroup
from geomsim.testbed.sweep import TestbedSweepConfig
from geomsim.testbed.sweep import run as sweep_run
from geomsim.testbed.sweep.cli import main
from geomsim.testbed.sweep.run import run_testbed_sweep

from tiny_configs import TESTBED_DEFENSES, TESTBED_FORECAST, TESTBED_SWEEP

TINY = TESTBED_SWEEP


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("testbed_sweep")
    config = config_layer.build(TestbedSweepConfig, None, TINY)
    return config, run_testbed_sweep(config, out, progress=False)


def test_outputs_and_strict_json(tiny):
    _, result = tiny
    out = result.out_dir
    for name in ("models", "runs", "curves", "adam", "points"):
        assert (out / f"{name}.csv").exists()
    for stem in ("fig_sweep_collapse", "fig_sweep_c4", "fig_sweep_exponents", "fig_sweep_controls",
                 "fig_sweep_forecast", "fig_sweep_adam"):
        assert (out / f"{stem}.png").exists()
    summary = json.loads((out / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert summary["grid"] == {"sharpness_levels": [0.3, 0.03], "coupling_levels": [0.1, 1.0], "seeds": 2,
                               "arms": ["polished_eps0", "polished", "as_trained"], "runs": 24}
    assert summary["spearman"]["overlap"]["n_pairs"] == 8
    runs = result.tables["runs"]
    assert sum(summary["status_counts"].values()) == 24 and summary["status_counts"]["nan"] == 0
    assert set(runs["status"]) <= {"ok", "no_onset"}
    np.testing.assert_array_equal(runs["status"] == "ok", runs["s_fit_ok"])
    assert all((st == "ok") == (why == "") for st, why in zip(runs["status"], runs["reason"], strict=True))


def test_run_status_names_the_first_non_finite_quantity():
    from geomsim.fitting.powerlaw import FIT_NO_SIGNAL, FIT_OK, FIT_REASONS
    from geomsim.testbed.sweep.summary import MEASURED_FIELDS, run_status

    law_out = {name: np.ones((4, 5)) if name in ("align_increase", "s_part", "task_loss") else np.ones(4)
               for name in MEASURED_FIELDS}
    law_out["s_part"][1, 2] = np.nan
    law_out["c4"][1] = np.inf  # run 1: s_part comes first in MEASURED_FIELDS
    law_out["c4"][2] = -np.inf
    status, reason = run_status(law_out, np.array([FIT_OK, FIT_OK, FIT_OK, FIT_NO_SIGNAL]))
    assert status.tolist() == ["ok", "nan", "nan", "no_onset"]
    assert reason.tolist() == ["", "non-finite s_part (1 NaN of 5 values)", "non-finite c4 (1 inf)",
                               FIT_REASONS[FIT_NO_SIGNAL]]


def test_polish_reaches_a_stationary_point_and_keeps_the_refusals(tiny):
    _, result = tiny
    models = result.tables["models"]
    before = models["align_grad_norm"][models["state"] == "as_trained"]
    after = models["align_grad_norm"][models["state"] == "polished"]
    assert np.all(after < 1e-3 * before)
    assert np.all(models["harm_rate"][models["state"] == "polished"] == 0.0)


def test_tilt_sets_eps_to_zero_and_keeps_the_coupling(tiny):
    _, result = tiny
    runs = result.tables["runs"]
    eps0, real = runs["arm"] == "polished_eps0", runs["arm"] == "polished"
    assert np.all(runs["eps"][eps0] < 1e-12) and np.all(runs["eps"][real] > 1e-4)
    # H_F is untouched by the tilt: the same ||H_F|| (Lanczos, same key) up to its tolerance.
    np.testing.assert_allclose(runs["task_sharpness"][eps0], runs["task_sharpness"][real], rtol=0.05)


def test_knobs_move_lambda_and_gamma_as_documented(tiny):
    _, result = tiny
    s, runs = result.summary, result.tables["runs"]
    # Lower sigma (more confident refusals) -> flatter alignment: lambda falls with sigma.
    per_level = s["lambda"]["per_level_median"]
    assert per_level[0] > 2 * per_level[1]
    # More of the marker-reading task -> stronger coupling.
    per_mix = s["gamma"]["per_mix_median"]
    assert per_mix[1] > 3 * per_mix[0]
    assert s["lambda_spread"] > 2 and s["gamma_spread"] > 3
    assert np.all(runs["sharpness"] > runs["mu"])


def test_the_law_and_its_controls(tiny):
    _, result = tiny
    arms = result.summary["arms"]
    eps0 = arms["polished_eps0"]["s_part"]
    assert abs(eps0["exponent_median"] - 4) < 0.1
    assert abs(eps0["c4_ratio_median"] - 1) < 0.05
    # Controls: the first-order overlap gives t^2 in S; c1 != 0 gives t^1 in the total.
    assert abs(arms["polished"]["s_part"]["exponent_median"] - 2) < 0.1
    assert abs(arms["as_trained"]["total"]["exponent_median"] - 1) < 0.1
    assert abs(arms["polished"]["total"]["exponent_median"] - 2) < 0.15
    assert 0 <= arms["polished_eps0"]["lower_bound_holds_fraction"] <= 1


def recorded_stage_keys(monkeypatch) -> list:
    """Every stage key the sweep, the defenses and the forecast validation compute, as
    `(own fields, parent keys, key)`."""
    from geomsim.testbed.sweep import defenses, forecast

    calls, real = [], config_layer.stage_key

    def record(config, fields, *parents):
        key = real(config, fields, *parents)
        calls.append((tuple(fields), parents, key))
        return key

    for module in (sweep_run, defenses, forecast):
        monkeypatch.setattr(module, "stage_key", record)
    return calls


def assert_measurements_chain_to_the_models(calls: list) -> None:
    """Each stage after the models' (law, Adam, each defense, the defenses' forecast, the
    forecast chunks) has the spectra's key, `Models.key`, as its one parent: a call site
    that chained to another stage (or to none) would keep stale results after a retrain."""
    model_stages = {sweep_run.ALIGN_FIELDS, sweep_run.POLISH_FIELDS, sweep_run.SPECTRUM_FIELDS}
    [spectrum] = [key for fields, _, key in calls if fields == sweep_run.SPECTRUM_FIELDS]
    measured = [(fields, parents) for fields, parents, _ in calls if fields not in model_stages]
    assert measured, calls
    for fields, parents in measured:
        assert parents == (spectrum,), fields


def test_rerun_resumes_from_the_saved_stages(tiny, monkeypatch):
    config, result = tiny
    calls = recorded_stage_keys(monkeypatch)
    again = run_testbed_sweep(config, result.out_dir, progress=False, plots=False)
    assert set(again.summary["reused"]) >= {"pretrain", "sweep_align", "sweep_polish", "spectrum", "law", "adam"}
    np.testing.assert_array_equal(again.tables["runs"]["s_exponent"], result.tables["runs"]["s_exponent"])
    assert {fields for fields, _, _ in calls} >= {sweep_run.LAW_FIELDS, sweep_run.ADAM_FIELDS}
    assert_measurements_chain_to_the_models(calls)


class Simulated(ProcessGroup):
    """A member of a process group played in this process: its meetings are no-ops, so
    the members run one after another (jax.distributed itself is exercised by
    tests/test_processes.py and the README's process groups)."""

    def barrier(self, name):
        pass

    def agree(self, _name, values):
        return np.asarray(values)

    def check_same(self, field, text, fix=""):
        pass


def test_a_process_group_writes_the_one_process_tables(tiny, tmp_path, monkeypatch):
    """From the fixture's models and Adam chunk, law chunks 2 and 3 are redone: process 1
    takes chunk 3 (round robin) and returns None, then process 0 computes chunk 2,
    merges, and writes the fixture's bytes."""
    config, result = tiny
    out = tmp_path / "group"
    shutil.copytree(result.out_dir / "checkpoints", out / "checkpoints")
    shutil.copytree(result.out_dir / "cache", out / "cache")
    for stem in ("law_001", "law_002"):
        for suffix in (".npz", ".json"):
            (out / "cache" / (stem + suffix)).unlink()
    written = []
    real_cached_arrays = sweep_run.cached_arrays

    def recording(out_dir, name, digest, compute):
        arrays, hit = real_cached_arrays(out_dir, name, digest, compute)
        written.extend([] if hit else [name])
        return arrays, hit

    monkeypatch.setattr(sweep_run, "cached_arrays", recording)
    monkeypatch.setattr(sweep_run, "current_group", lambda: Simulated(1, 2))
    assert run_testbed_sweep(config, out, progress=False, plots=False) is None
    assert written == ["law_002"]
    monkeypatch.setattr(sweep_run, "current_group", lambda: Simulated(0, 2))
    again = run_testbed_sweep(config, out, progress=False, plots=False)
    assert written == ["law_002", "law_001"]
    for name in ("models", "runs", "curves", "adam", "points"):
        assert (out / f"{name}.csv").read_bytes() == (result.out_dir / f"{name}.csv").read_bytes(), name
    assert set(again.summary["reused"]) == {"pretrain", "sweep_align", "sweep_polish", "spectrum", "adam"}


def test_bad_settings_get_one_line_errors(capsys):
    with pytest.raises(ConfigError, match="refusal_sigma: must be in"):
        config_layer.build(TestbedSweepConfig, None, {"refusal_sigma": "0.3,0.7"})
    with pytest.raises(ConfigError, match="num_eigs: must be > rank"):
        config_layer.build(TestbedSweepConfig, None, {"rank": 4, "num_eigs": 4})
    assert main(["--mix", "0.5,2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mix: must be in [0, 1]" in err[0]


def test_needs_float64(tmp_path):
    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(RuntimeError, match="float64"):
            run_testbed_sweep(TestbedSweepConfig(), tmp_path)
    finally:
        jax.config.update("jax_enable_x64", True)


@pytest.fixture(scope="module")
def defended(tiny):
    """Every defense on the tiny sweep's own models (its checkpoints and spectra are reused)."""
    from geomsim.testbed.sweep.defenses import TestbedDefenseConfig, run_testbed_defenses

    _, result = tiny
    config = config_layer.build(TestbedDefenseConfig, None, TESTBED_DEFENSES)
    return config, run_testbed_defenses(config, result.out_dir, progress=False, plots=True), result.out_dir


def test_defenses_run_from_the_sweeps_models_and_report_every_defense(defended):
    from geomsim.io import loads_strict, read_csv

    config, summary, out = defended
    assert set(summary["defenses"]) == set(config.defenses)
    assert {"pretrain", "sweep_align", "sweep_polish", "spectrum"} <= set(summary["reused"])
    assert loads_strict((out / "summary.json").read_text())["defenses"]["none"]["overhead_ratio"] == 1.0
    for stem in ("fig_defense_pareto", "fig_defense_curves"):
        assert (out / f"{stem}.png").exists()
    curves = read_csv(out / "defenses.csv")
    assert set(np.unique(curves["defense"])) == set(config.defenses)
    assert np.all(np.isfinite(curves["align_increase"]))


def test_the_diagnosis_forecast_ranks_the_defenses_it_models(defended):
    """Each point's forecast of the defenses the diagnosis models (geomsim.diagnose.defenses),
    beside the measured damage at the fixed step, and the ranking scored."""
    from geomsim.io import read_csv

    config, summary, out = defended
    ranking = summary["forecast_ranking"]
    modelled = sorted(set(config.defenses) & {"none", "static_projection", "curvature_projection"})  # Adam: no replay
    assert ranking["defenses"] == modelled and ranking["points"] == 8  # 2 levels x 2 mixes x 2 seeds
    assert -1 <= ranking["spearman_median"] <= 1 and 0 <= ranking["same_best_fraction"] <= 1
    table, points = read_csv(out / "defense_forecast.csv"), read_csv(out / "defense_points.csv")
    for name in modelled:  # the measured column is the point's own reading
        mine, theirs = table["defense"] == name, points["defense"] == name
        np.testing.assert_array_equal(table["align_increase_at_fixed"][mine][np.argsort(table["point"][mine])],
                                      points["align_increase_at_fixed"][theirs][np.argsort(points["point"][theirs])])
    forecast = {n: table["forecast_align_at_fixed"][table["defense"] == n] for n in modelled}
    assert np.all(np.isfinite(np.concatenate(list(forecast.values()))))
    for name in set(modelled) - {"none"}:  # each defense changes the forecast
        assert not np.allclose(forecast[name], forecast["none"], rtol=1e-6), name


def test_static_projection_keeps_the_adam_path_out_of_s0(defended):
    from geomsim.io import read_csv

    _, _, out = defended
    curves = read_csv(out / "defenses.csv")
    none, static = curves["defense"] == "none", curves["defense"] == "static_projection"
    # ||P_S0 delta|| with the sweep's S0: float32 round-off under the projection, not under plain Adam.
    assert np.max(curves["subspace_norm"][static]) < 1e-5 * np.max(curves["subspace_norm"][none])
    lora = curves["defense"] == "lora"
    assert np.max(curves["subspace_norm"][lora]) > 0  # LoRA is not a projection


def test_a_rerun_reuses_each_finished_defense_and_redoes_a_stale_one(defended, tmp_path, monkeypatch):
    """Each defense's results (and its measured seconds) are cached under its own digest: a
    rerun loads the finished ones; one whose settings changed (its digest) is recomputed,
    to the same numbers (same program, same keys)."""
    import dataclasses

    from geomsim.io import read_csv
    from geomsim.testbed.sweep.defenses import DEFENSE_FIELDS, REGISTRY, run_testbed_defenses

    config, first, fixture_out = defended
    out = tmp_path / "rerun"
    for name in ("checkpoints", "cache"):
        shutil.copytree(fixture_out / name, out / name)
    stale = out / "cache" / "defense_static_projection.json"
    stale.write_text(stale.read_text().replace('"digest": "', '"digest": "stale-'))
    calls = recorded_stage_keys(monkeypatch)
    again = run_testbed_defenses(config, out, progress=False, plots=False)
    assert len([c for c in calls if c[0][: len(DEFENSE_FIELDS)] == DEFENSE_FIELDS]) == len(config.defenses) + 1
    assert_measurements_chain_to_the_models(calls)
    expected = {f"defense_{name}" for name in config.defenses if name != "static_projection"}
    assert {r for r in again["reused"] if r.startswith("defense_")} == expected
    for name in set(config.defenses) - {"static_projection"}:
        assert again["defenses"][name]["seconds"] == first["defenses"][name]["seconds"]
    old, new = read_csv(fixture_out / "defenses.csv"), read_csv(out / "defenses.csv")
    for key in ("align_increase", "s_part", "subspace_norm", "harm_rate", "task_accuracy"):
        np.testing.assert_array_equal(new[key], old[key])
    # A defense's own settings change its key only: lora_rank reaches lora alone.
    changed = dataclasses.replace(config, lora_rank=config.lora_rank + 1)
    for name, own in ((n, d.own_fields) for n, d in REGISTRY.items()):
        fields = (*DEFENSE_FIELDS, *own)
        same = config_layer.stage_key(config, fields, "parent") == config_layer.stage_key(changed, fields, "parent")
        assert same == (name != "lora"), name


def test_defense_cli_bad_input_is_one_line(capsys):
    from functools import partial

    defense_main = partial(main, command="defenses")

    for flags, field in ((["--defenses", "none,bogus"], "defenses"), (["--defenses", "static_projection"], "defenses"),
                         (["--replay-fraction", "1.5"], "replay_fraction")):
        assert defense_main([*flags, "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"python -m geomsim.testbed defenses: error: {field}"), err


@pytest.mark.parametrize("command", RESUMED_COMMANDS)
def test_readme_command_resumes_from_the_fixtures_folder(command, defended, tmp_path):
    """The README's `testbed sweep --out DIR` and `testbed defenses --out DIR` run as
    tests/test_readme.py runs every command (fresh process, the tiny settings appended),
    into a DIR seeded with the fixtures' checkpoints and cache. The fixtures trained and
    measured with the same settings in-process, so here the CLI parses, finds every stage
    and chunk by its digest, and writes the tables, figures and summary from them."""
    _, _, fixture_out = defended
    tokens = shlex.split(command)
    out = tmp_path / tokens[tokens.index("--out") + 1]
    for name in ("checkpoints", "cache"):
        shutil.copytree(fixture_out / name, out / name)
    check_command(command, tmp_path)
    summary = json.loads((out / "summary.json").read_text())
    # The models were loaded, not retrained, and the defenses' results too (measured in CI on
    # 2026-12-03: under 35 s each here; the sweep command alone took 223 s cold).
    assert "pretrain" in summary["reused"] and summary["figures"], summary.get("reused")
    if "defenses" in tokens:
        assert {f"defense_{name}" for name in summary["defenses"]} <= set(summary["reused"])


@pytest.fixture(scope="module")
def forecasts(tiny):
    """The forecast validation on the tiny sweep's own models."""
    from geomsim.testbed.sweep.forecast import TestbedForecastConfig, run_testbed_forecast

    _, result = tiny
    config = config_layer.build(TestbedForecastConfig, None, TESTBED_FORECAST)
    return config, run_testbed_forecast(config, result.out_dir, progress=False, plots=True), result.out_dir


def test_forecast_validation_scores_every_method_at_every_level(forecasts):
    from geomsim.io import loads_strict, read_csv
    from geomsim.testbed.sweep.forecast import ADAM_METHODS, METHODS

    config, summary, out = forecasts
    assert loads_strict((out / "summary.json").read_text())["runs"] == int(np.prod(config.grid_shape))
    assert set(summary["methods"]) == set(METHODS)
    assert {name for name, d in summary["methods"].items() if d["against"] == "adam"} == set(ADAM_METHODS)
    runs = read_csv(out / "forecast_runs.csv")
    for level in config.levels:
        for name in METHODS:  # each method scored where its own fine-tune (GD or Adam) reaches the level
            reached = np.isfinite(runs[("adam_" if name in ADAM_METHODS else "") + f"steps_to_{level:g}"])
            error = runs[f"{name}_log10_error_{level:g}"]
            assert np.all(np.isnan(error[~reached])) and not np.any(np.isnan(error[reached]))
    # One GD step is delta = -lr g in both local models' Krylov spaces, so both forecasts equal
    # -lr grad L_A.g + (lr^2 / 2) g^T H_A g; where the polish reached grad L_A = 0 (c1 = -grad L_A.g
    # at round-off) that is lr^2 c2, with c2 from Taylor-mode autodiff (an independent path).
    curves = read_csv(out / "forecast_curves.csv")
    first = curves["step"] == 1
    one_step = {name: curves["align_increase"][first & (curves["curve"] == name)]
                for name in ("quadratic_gd", "gauss_newton_gd")}
    np.testing.assert_allclose(one_step["gauss_newton_gd"], one_step["quadratic_gd"], rtol=1e-8)
    lr, stationary = runs["lr"], np.abs(runs["lr"] * runs["c1"]) < 1e-9 * one_step["quadratic_gd"]
    assert stationary.sum() >= len(stationary) // 2, runs["c1"]
    np.testing.assert_allclose(one_step["quadratic_gd"][stationary], (lr**2 * runs["c2"])[stationary], rtol=1e-6)
    # The linearised network's first GD step is -lr g too, and its L_A is exact: the measured first step.
    measured_first = curves["align_increase"][first & (curves["curve"] == "measured")]
    np.testing.assert_allclose(curves["align_increase"][first & (curves["curve"] == "linearized_gd")],
                               measured_first, rtol=1e-7, atol=1e-18)
    for stem in ("fig_forecast_examples", "fig_forecast_ratios", "fig_forecast_verdict"):
        assert (out / f"{stem}.png").exists()
    # Every method calibrated per level, and the verdict (the earliest calibrated lower end)
    # scored across seeds for both optimizer families, its early end in the table.
    assert set(summary["verdict"]) == {"gd", "gd_linearized", "adam"}
    for name, entry in summary["methods"].items():
        assert set(entry["calibration"]) == {f"{lv:g}" for lv in config.levels}, name
        assert set(entry["cross_validated"]["levels"]) == {f"{lv:g}" for lv in config.levels}, name
    for family in ("gd", "gd_linearized", "adam"):
        scores = summary["verdict"][family]["cross_validated"]
        assert scores["runs"] + scores["censored_runs"] > 0
        for level in config.levels:
            steps = runs[f"{family}_verdict_steps_{level:g}"]
            assert np.all(np.isnan(steps) | (steps >= 0)), steps


def _loglog(xs, ys, x):
    """numpy: a sampled curve at x, log-log between its neighbours (0 if either is <= 0),
    nan outside the samples."""
    if not xs[0] <= x <= xs[-1]:
        return np.nan
    i = min(max(int(np.searchsorted(xs, x)), 1), len(xs) - 1)
    if ys[i - 1] <= 0 or ys[i] <= 0:
        return 0.0
    w = (np.log(x) - np.log(xs[i - 1])) / (np.log(xs[i]) - np.log(xs[i - 1]))
    return float(np.exp((1 - w) * np.log(ys[i - 1]) + w * np.log(ys[i])))


def test_the_pilot_scores_equal_a_pilot_written_out_run_by_run(forecasts):
    """`summary.methods[*].pilot`: per run, N = max(1, floor(5% x the forecast's crossing
    step)); the measured crossing where it is <= N; else the forecast rescaled by the
    measured / forecast Delta L_A at N crossing after N; else (no ratio) the zero-step
    crossing. Written out here with numpy, run by run, from the two CSV tables."""
    from geomsim.io import read_csv
    from geomsim.testbed.sweep.forecast import ADAM_METHODS, METHODS
    from geomsim.theory.laws import first_crossing

    config, summary, out = forecasts
    runs, curves = read_csv(out / "forecast_runs.csv"), read_csv(out / "forecast_curves.csv")

    def rows(run, name):
        mine = (curves["run"] == run) & (curves["curve"] == name)
        return np.asarray(curves["step"][mine], float), np.asarray(curves["align_increase"][mine], float)

    for name in METHODS:
        prefix = "adam_" if name in ADAM_METHODS else ""
        entry = summary["methods"][name]["pilot"]
        assert entry["fraction"] == 0.05
        for level in config.levels:
            ratios, crossed = [], []
            for i in np.flatnonzero(np.asarray(runs[f"{prefix}finite"], bool)):
                t_meas, t_fcst = runs[f"{prefix}steps_to_{level:g}"][i], runs[f"{name}_steps_{level:g}"][i]
                if not np.isfinite(t_meas):
                    continue
                ms, m = rows(i, f"{prefix}measured")
                fs, f = rows(i, name)
                t_pilot, hit = t_fcst, False
                if np.isfinite(t_fcst):
                    n = max(1.0, np.floor(0.05 * t_fcst))
                    if t_meas <= n:
                        t_pilot, hit = t_meas, True
                    else:
                        at = (f[0] * (n / fs[0]) ** 2 if f[0] > 0 else np.nan) if n < fs[0] else _loglog(fs, f, n)
                        measured = _loglog(ms, m, n)
                        if 0 < at < np.inf and measured > 0:  # an overflowed forecast: no ratio
                            later = fs > n
                            t_pilot = float(first_crossing(np.r_[n, fs[later]], np.r_[measured, measured / at * f[later]],
                                                           level))
                ratios.append(t_pilot / t_meas)
                crossed.append(hit)
            ratios = np.asarray(ratios)
            mine = entry["levels"][f"{level:g}"]
            assert mine["runs"] == len(ratios), (name, level)
            if not len(ratios):
                continue
            assert mine["within_2x_fraction"] == pytest.approx(np.mean((ratios >= 0.5) & (ratios <= 2))), (name, level)
            assert mine["late_2x_fraction"] == pytest.approx(np.mean(ratios > 2)), (name, level)
            assert mine["crossed_in_pilot_fraction"] == pytest.approx(np.mean(crossed)), (name, level)
            # the zero-step fractions are the method's own
            assert mine["zero_step_within_2x_fraction"] == summary["methods"][name]["levels"][f"{level:g}"][
                "within_2x_fraction"], (name, level)


def test_pilot_scores_on_hand_built_runs_with_every_case():
    """Six hand-built runs at level 0.1 (steps 1..100, 21 log-spaced records; power laws, so
    log-log readings are exact): a rescaled forecast that lands on the measured crossing; a
    forecast that never crosses (stays late); a pilot that crosses (measured); a forecast that
    is 0 at the pilot (no ratio: its zero-step crossing stays); a run whose fine-tune is not
    finite and one that never reaches the level (both left out). The runs table lists the runs
    backwards and the curves table is run by run, not curve by curve."""
    from geomsim.testbed.sweep.forecast import METHODS, pilot_scores
    from geomsim.theory.laws import first_crossing

    s = np.geomspace(1.0, 100.0, 21)
    measured = [0.01 * s**2, 0.01 * s**2, 0.2 * s**2, 0.01 * s**2, 0.01 * s**2, 1e-6 * s**2]
    forecast = [1e-3 * s**2, 0 * s, 1e-4 * s**2, np.where(s >= 50, 1e-4 * s**2, 0.0), 1e-3 * s**2, 1e-3 * s**2]
    order = np.arange(6)[::-1]
    runs = {"run": order, "finite": order != 4, "adam_finite": order != 4}
    for prefix in ("", "adam_"):
        runs[f"{prefix}steps_to_0.1"] = np.array([float(first_crossing(s, measured[i], 0.1)) for i in order])
    for name in METHODS:
        runs[f"{name}_steps_0.1"] = np.array([float(first_crossing(s, forecast[i], 0.1)) for i in order])
    rows = [(i, curve, values) for i in range(6) for curve, values in
            [("measured", measured[i]), ("adam_measured", measured[i]), *((n, forecast[i]) for n in METHODS)]]
    curves = {"run": np.concatenate([np.full(s.size, i) for i, _, _ in rows]),
              "curve": np.concatenate([np.full(s.size, c, dtype=object) for _, c, _ in rows]),
              "step": np.tile(s, len(rows)), "align_increase": np.concatenate([v for _, _, v in rows])}
    t_meas, t3 = np.sqrt(10.0), float(first_crossing(s, forecast[3], 0.1))
    assert 40 < t3 < 60  # run 3's pilot: floor(0.05 t3) = 2 steps, where its forecast is 0
    scores = pilot_scores(runs, curves, (0.1,), 0.1)
    for name in METHODS:
        level = scores[name]["levels"]["0.1"]
        assert level["runs"] == 4, name  # runs 0-3
        # with the pilot: ratios 1 (rescaled 1e-3 s^2 by 10), inf, 1 (measured), t3 / sqrt(10)
        assert level["within_2x_fraction"] == 0.5 and level["late_2x_fraction"] == 0.5
        # without: sqrt(10), inf, sqrt(1000), t3 / sqrt(10): all late
        assert level["zero_step_within_2x_fraction"] == 0.0 and level["zero_step_late_2x_fraction"] == 1.0
        assert level["crossed_in_pilot_fraction"] == 0.25
        # pilot lengths over the measured crossing: 1 / sqrt(10), 1 / 1, 2 / sqrt(10) (none for run 1)
        assert level["pilot_steps_over_measured_median"] == pytest.approx(2 / t_meas, rel=1e-12)
        assert scores[name]["within_2x_fraction"] == 0.5 and scores[name]["fraction"] == 0.05


def test_a_forecast_rerun_loads_its_chunks_chained_to_the_models(forecasts, monkeypatch):
    from geomsim.testbed.sweep.forecast import FORECAST_FIELDS, run_testbed_forecast

    config, summary, out = forecasts
    calls = recorded_stage_keys(monkeypatch)
    again = run_testbed_forecast(config, out, progress=False, plots=False)
    assert "forecast" in again["reused"] and again["methods"].keys() == summary["methods"].keys()
    assert FORECAST_FIELDS in {fields for fields, _, _ in calls}
    assert_measurements_chain_to_the_models(calls)


def test_forecast_cli_bad_input_is_one_line(capsys):
    from functools import partial

    forecast_main = partial(main, command="forecast")

    for flags, field in ((["--threshold", "0.5"], "threshold"), (["--gd-lr-scale", "2.5"], "gd_lr_scale"),
                         (["--arms", "polished,bogus"], "arms"), (["--calibration", "no/such.json"], "calibration")):
        assert forecast_main([*flags, "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"python -m geomsim.testbed forecast: error: {field}"), err
