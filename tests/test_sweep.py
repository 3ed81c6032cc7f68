"""The sweep end to end: outputs, controls, bad input, resume, determinism."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from geomsim.io import read_csv, read_table
from geomsim.sweep import ConfigError, SweepConfig, make_config, parse_values, run_sweep
from geomsim.sweep.cli import main
from geomsim.sweep.run import RESULT_COLUMNS

SMALL = dict(sharpness="1,30", coupling="0.05,0.8", steps=3000, lr=3e-4, records=80, dim=12, rank=2, chunk=3)


def small(**kw):
    return make_config(None, {**SMALL, **kw})


@pytest.fixture(scope="module")
def quartic_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    return run_sweep(small(), out, progress=False)


def test_outputs_columns_and_law(quartic_run):
    res = quartic_run.results
    for col in RESULT_COLUMNS:
        assert col in res, col
    assert len(res["status"]) == 4
    assert np.all(res["status"] == "ok")
    np.testing.assert_allclose(res["exponent"], 4.0, atol=0.1)
    np.testing.assert_allclose(res["c4_ratio"], 1.0, rtol=0.05)
    np.testing.assert_allclose(res["coupling_meas"], res["coupling"], rtol=1e-8)
    np.testing.assert_allclose(res["sharpness_meas"], res["sharpness"], rtol=1e-8)
    # Time to failure: measured within 5% of the quartic prediction where reached.
    reached = np.isfinite(res["t_fail_meas"])
    assert reached.any()
    np.testing.assert_allclose(res["t_fail_meas"][reached], res["t_fail_pred"][reached], rtol=0.05)
    out = quartic_run.out_dir
    meta = json.loads((out / "meta.json").read_text())
    assert meta["state"] == "complete" and meta["config"]["dim"] == 12
    assert meta["versions"]["jax"] and meta["wall_seconds"] > 0
    for stem in ("fig_curves", "fig_collapse", "fig_exponent", "fig_c4", "fig_local_slope"):
        assert (out / f"{stem}.png").stat().st_size > 1000
        assert not (out / f"{stem}.pdf").exists()  # PNG unless --figures says otherwise
    disk = read_csv(out / "results.csv")
    np.testing.assert_array_equal(disk["exponent"], res["exponent"])
    curves = read_table(out / "curves.parquet")
    assert set(np.unique(curves["run"])) == {0, 1, 2, 3}
    assert curves.keys() == quartic_run.curves.keys()
    for name, column in quartic_run.curves.items():  # Parquet gives back the very floats written
        np.testing.assert_array_equal(curves[name], column, strict=True)


def test_a_non_finite_measurement_makes_the_run_nan_naming_it(quartic_run):
    from geomsim.sweep.run import _rows, grid_axes

    config = small()
    chunks = sorted((quartic_run.out_dir / "chunks").glob("chunk_*.npz"))
    parts = [dict(np.load(p)) for p in chunks]
    raw = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    s, c, k = grid_axes(config)
    raw = {name: v[: len(s)] for name, v in raw.items()}
    assert _rows(config, raw, s, c, k)["status"].tolist() == quartic_run.results["status"].tolist()
    raw["coupling_meas"][1] = np.nan
    raw["taylor"][2, 3] = np.inf
    rows = _rows(config, raw, s, c, k)
    assert rows["status"][:3].tolist() == ["ok", "nan", "nan"]
    assert rows["reason"][1:3].tolist() == ["non-finite coupling_meas (1 NaN)",
                                            "non-finite taylor coefficients (1 inf of 7 values)"]


def test_resume_redoes_nothing_and_matches(tmp_path, quartic_run):
    out = tmp_path / "run"
    config = small()
    run_sweep(config, out, progress=False, plots=False)
    reference = (out / "results.csv").read_bytes()
    # Simulate an interruption: the last chunk and the tables are missing.
    chunks = sorted((out / "chunks").iterdir())
    first_mtime = chunks[0].stat().st_mtime_ns
    chunks[-1].unlink()
    (out / "results.csv").unlink()
    result = run_sweep(config, out, resume=True, progress=False, plots=False)
    assert result.meta["chunks_computed"] == 1 and result.meta["chunks_resumed"] == len(chunks) - 1
    assert chunks[0].stat().st_mtime_ns == first_mtime
    assert (out / "results.csv").read_bytes() == reference
    # Same config and seed in a fresh folder: the same numbers, bit for bit.
    assert (quartic_run.out_dir / "results.csv").read_bytes() == reference


def test_resume_refuses_a_different_config(tmp_path):
    out = tmp_path / "run"
    run_sweep(small(), out, progress=False, plots=False)
    with pytest.raises(ConfigError, match="resume: .* different config"):
        run_sweep(small(seed=3), out, resume=True, progress=False, plots=False)
    with pytest.raises(ConfigError, match="already holds sweep results"):
        run_sweep(small(), out, progress=False, plots=False)


def test_negative_controls_through_the_sweep(tmp_path):
    base = dict(sharpness="10", coupling="0.5", steps=4000, lr=2.5e-4, records=90, dim=12, rank=2)
    mu = run_sweep(make_config(None, {**base, "mu": 1e-3}), tmp_path / "mu", progress=False, plots=False)
    np.testing.assert_allclose(mu.results["exponent"], 2.0, atol=0.1)
    assert np.isnan(mu.results["c4_fit"]).all()
    cubic = run_sweep(make_config(None, {**base, "coupling": "0", "cubic_coupling": 0.5}),
                      tmp_path / "cubic", progress=False, plots=False)
    np.testing.assert_allclose(cubic.results["exponent"], 6.0, atol=0.1)
    none = run_sweep(make_config(None, {**base, "coupling": "0"}), tmp_path / "none", progress=False, plots=False)
    assert none.results["status"][0] == "no_onset"
    assert "noise floor" in none.results["reason"][0]


def test_divergence_is_reported_per_run(tmp_path):
    res = run_sweep(make_config(None, {**SMALL, "lr": 3.0, "steps": 400}), tmp_path / "div", progress=False)
    assert set(res.results["status"]) <= {"diverged", "nan"}
    assert all(r for r in res.results["reason"])
    assert res.meta["figures"]  # figures still drawn, with the failures counted, not plotted


def test_flow_and_other_optimizers_run(tmp_path):
    flow = run_sweep(small(optimizer="flow", sharpness="5", coupling="0.5"), tmp_path / "f", progress=False, plots=False)
    np.testing.assert_allclose(flow.results["exponent"], 4.0, atol=0.05)
    np.testing.assert_allclose(flow.results["c4_ratio"], 1.0, rtol=0.01)
    adam = run_sweep(small(optimizer="adam", sharpness="5", coupling="0.5"), tmp_path / "a", progress=False, plots=False)
    assert adam.results["status"][0] in ("ok", "no_onset")
    # Adam's flow-limit forecast (paper_repro's optim_adam: measured / forecast 0.999-1.022 over 32 runs).
    assert 0.95 <= adam.results["t_fail_meas"][0] / adam.results["t_fail_pred"][0] <= 2.0
    sgd = run_sweep(small(optimizer="sgd", noise=1e-4, seeds=2, sharpness="5", coupling="0.5"),
                    tmp_path / "s", progress=False, plots=False)
    assert list(sgd.results["seed_index"]) == [0, 1]


def test_float32_sweep_runs_and_reports(tmp_path):
    res = run_sweep(small(float64=False, sharpness="30", coupling="0.8"), tmp_path / "f32", progress=False, plots=False)
    assert res.results["status"][0] in ("ok", "no_onset")
    assert res.meta["config"]["float64"] is False


# --- configuration parsing and bad input ---

def test_parse_values():
    assert parse_values("x", "3") == (3.0,)
    assert parse_values("x", "1,2.5") == (1.0, 2.5)
    np.testing.assert_allclose(parse_values("x", "1:100:3"), [1, 10, 100])
    assert parse_values("x", [1, 2]) == (1.0, 2.0)
    assert parse_values("x", 0.5) == (0.5,)


@pytest.mark.parametrize(
    "flags,field",
    [
        (["--sharpness", "-1"], "sharpness"),
        (["--rank", "40", "--dim", "10"], "rank"),
        (["--eps", "1.0"], "eps"),
        (["--eps", "-0.1"], "eps"),
        (["--optimizer", "lbfgs"], "optimizer"),
        (["--coupling", "1:x:3"], "coupling"),
        (["--coupling", "0:1:3"], "coupling"),
        (["--sharpness", "1:10"], "sharpness"),
        (["--steps", "abc"], "steps"),
        (["--lr", "0"], "lr"),
        (["--mu", "nan"], "mu"),
        (["--landscape", "nope"], "landscape"),
        (["--config", "/nonexistent/x.toml"], "config"),
        (["--resume"], "resume"),
        (["--defense", "lora"], "defense"),
        (["--defense", "static_projection", "--optimizer", "flow"], "defense"),
        (["--defense-every", "0"], "defense_every"),
    ],
)
def test_bad_input_is_one_clear_line(flags, field, capsys):
    assert main([*flags, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("python -m geomsim.sweep: error: " + field)


def test_toml_config_and_overrides(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('sharpness = [2.0, 4.0]\ncoupling = "0.1:1:3"\nsteps = 500\n[landscape_options]\ngrad_norm = 2.0\n')
    config = make_config(cfg, {"steps": "600"})
    assert config.sharpness == (2.0, 4.0) and len(config.coupling) == 3
    assert config.steps == 600 and config.landscape_options == {"grad_norm": 2.0}
    bad = tmp_path / "bad.toml"
    bad.write_text("sharpness = [1,\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        make_config(bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("sharpnes = 3\n")
    with pytest.raises(ConfigError, match="sharpnes: unknown key"):
        make_config(unknown)
    opts = tmp_path / "opts.toml"
    opts.write_text("[landscape_options]\nbogus = 1\n")
    with pytest.raises(ConfigError, match="landscape_options.bogus"):
        make_config(opts)


def test_help_documents_every_flag():
    out = subprocess.run([sys.executable, "-m", "geomsim.sweep", "--help"], capture_output=True, text=True, check=True)
    for field in SweepConfig.__dataclass_fields__:
        if field != "landscape_options":
            assert "--" + field.replace("_", "-") in out.stdout
    for flag in ("--config", "--out", "--resume"):
        assert flag in out.stdout


def test_sharded_over_devices_gives_the_same_numbers(tmp_path, quartic_run):
    """Two forced host devices shard each chunk's grid axis; results are unchanged."""
    script = (
        "import os, sys; os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=2'\n"
        "import geomsim, jax; assert len(jax.devices()) == 2\n"
        # The same XLA pipeline as this process (conftest may disable optimisations).
        f"jax.config.update('jax_disable_most_optimizations', {jax.config.read('jax_disable_most_optimizations')})\n"
        "from geomsim.sweep import make_config, run_sweep\n"
        f"cfg = make_config(None, {SMALL!r})\n"
        "res = run_sweep(cfg, sys.argv[1], progress=False, plots=False)\n"
        "assert res.meta['devices'] == 2\n"
    )
    out = tmp_path / "sharded"
    subprocess.run([sys.executable, "-c", script, str(out)], check=True, timeout=300)
    sharded = read_csv(out / "results.csv")
    for col in ("exponent", "c4_fit", "c4_pred", "t_fail_meas"):
        np.testing.assert_allclose(sharded[col], quartic_run.results[col], rtol=1e-12)


ROTATING = dict(sharpness="3,30", coupling="0.2", steps=20000, lr=1e-5, dim=16, rank=2, records=60,
                landscape_options={"align_rotate": 3.0, "rotate_coupling": 0.4})


@pytest.mark.parametrize(("defense", "power"), [("none", 4), ("static_projection", 5), ("curvature_projection", None)])
def test_defenses_in_the_sweep_follow_their_derived_laws(tmp_path, defense, power):
    res = run_sweep(make_config(None, {**ROTATING, "defense": defense}), tmp_path, progress=False, plots=False).results
    assert list(res["defense"]) == [defense] * 2
    if power is None:  # S0 plus the growth direction: nothing left to open, no onset above round-off
        assert list(res["status"]) == ["no_onset"] * 2
        assert all("never rose above the noise floor" in r for r in res["reason"])
        return
    assert np.all(res["status"] == "ok")
    np.testing.assert_allclose(res["exponent"], power, atol=0.05)
    np.testing.assert_array_equal(res["power"], power)
    np.testing.assert_allclose(res["prefactor_ratio"], 1.0, rtol=0.01)


def test_bounded_forecast_gives_the_time_to_failure_where_the_quartic_term_alone_does_not(tmp_path):
    # mu > 0 opens a t^2 term: the quartic-only time is late, the local-model forecast is exact (quadratic L_F).
    res = run_sweep(small(mu=0.05, threshold=1e-7), tmp_path, progress=False, plots=False).results
    reached = np.isfinite(res["t_fail_meas"])
    assert reached.all()
    np.testing.assert_allclose(res["t_fail_pred"], res["t_fail_meas"], rtol=0.01)
    assert np.all(res["t_fail_quartic"] > 1.1 * res["t_fail_meas"])
    curves = read_table(tmp_path / "curves.parquet")
    assert "forecast" in curves
