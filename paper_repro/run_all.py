"""`python -m paper_repro`: regenerate all figures and check them against the theory.

For every `experiments/*.toml` (a sweep config plus a `[repro]` table with the
expected numbers) this runs the sweep, copies its figures to `figures/<name>/`,
summarises the numbers each figure shows, and checks them.  Composite figures
(negative controls, optimizers side by side) are drawn from those runs.  All
numbers go to `figures/manifest.json`; the exit status is non-zero if any check
fails.

Usage: python -m paper_repro [--only NAME ...] [--runs DIR] [--figures DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
import tomllib
from pathlib import Path

if __package__ in (None, ""):  # `python paper_repro/run_all.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def check(numbers: dict, expect: dict) -> list[str]:
    """Failures of `numbers` against a `[repro].expect` table (empty list = pass)."""
    if expect.get("report_only"):
        return []
    failures = []
    runs = numbers["runs"]
    if "status" in expect:
        n = numbers["status_counts"].get(expect["status"], 0)
        if n != runs:
            failures.append(f"expected every run to have status {expect['status']!r}, got {numbers['status_counts']}")
        return failures
    n_ok = numbers["status_counts"].get("ok", 0)
    if n_ok < expect.get("min_ok_fraction", 1.0) * runs:
        failures.append(f"only {n_ok}/{runs} runs ok")
    if "exponent" in expect and "exponent" in numbers:
        lo, hi = numbers["exponent"]["min"], numbers["exponent"]["max"]
        tol = expect.get("exponent_tol", 0.1)
        if lo < expect["exponent"] - tol or hi > expect["exponent"] + tol:
            failures.append(f"exponents in [{lo:.3f}, {hi:.3f}], expected {expect['exponent']} +- {tol}")
    elif "exponent" in expect:
        failures.append("no exponent was fitted")
    if "c4_ratio_tol" in expect:
        ratio = numbers.get("c4_ratio")
        tol = expect["c4_ratio_tol"]
        if ratio is None or ratio["min"] < 1 - tol or ratio["max"] > 1 + tol:
            failures.append(f"c4_fit/c4_pred {ratio}, expected within {tol:.0%} of 1")
    if "prefactor_ratio_tol" in expect:
        ratio = numbers.get("prefactor_ratio")
        tol = expect["prefactor_ratio_tol"]
        if ratio is None or ratio["min"] < 1 - tol or ratio["max"] > 1 + tol:
            failures.append(f"prefactor / exact c_p {ratio}, expected within {tol:.0%} of 1")
    return failures


def testbed_numbers(summary: dict) -> dict:
    """The numbers the testbed figures show (a subset of its summary.json)."""
    early = summary["early"]["per_task"]
    return {
        "parameters": summary["parameters"],
        "stages": summary["stages"],
        "rank90": [r["rank90"] for r in summary["spectrum"]["per_seed"]],
        "correlation": summary["correlation"],
        "degradation": summary["degradation"],
        "time_to_threshold": summary["time_to_threshold"],
        "early_exponents": {
            task: {
                "align_increase": [r["align_exponent"] for r in rows],
                "s_part": [r["s_part_exponent"] for r in rows],
                "taylor_rel_error_first": [r["taylor_rel_error_first"] for r in rows],
            }
            for task, rows in early.items()
        },
        "orthogonality": summary["orthogonality"],
        "lora": summary["lora"],
        "timings": summary["timings"],
        "wall_seconds": summary["wall_seconds"],
    }


def check_testbed(summary: dict, expect: dict) -> list[str]:
    """Failures of the testbed's mathematical checks (see experiments/testbed.toml)."""
    failures = []
    harm_aligned = summary["stages"]["align"]["harm_rate"]
    if harm_aligned > expect.get("max_harm_rate_aligned", 1.0):
        failures.append(f"aligned models still answer {harm_aligned:.1%} of harmful prompts")
    harm_pre = summary["stages"]["pretrain"]["harm_rate"]
    if harm_pre < expect.get("min_harm_rate_pretrained", 0.0):
        failures.append(f"pretrained models answer only {harm_pre:.1%} of harmful prompts")
    frac = max(r["rank90"] for r in summary["spectrum"]["per_seed"]) / summary["parameters"]
    if frac > expect.get("max_rank90_fraction", 1.0):
        failures.append(f"90% of the alignment trace needs {frac:.2%} of the dimensions")
    errors = [r["taylor_rel_error_first"] for rows in summary["early"]["per_task"].values() for r in rows]
    if np.median(errors) > expect.get("max_taylor_rel_error_first_median", np.inf):
        failures.append(f"Taylor polynomial off by {np.median(errors):.1%} (median) at the first early time")
    for task, o in summary["orthogonality"].items():
        if o["prediction_rel_error_median"] > expect.get("max_s_prediction_error_median", np.inf):
            failures.append(f"{task}: ||P_S delta|| prediction off by {o['prediction_rel_error_median']:.1%} (median)")
    return failures


def testbed_sweep_numbers(summary: dict) -> dict:
    """The manifest entry of the transformer sweep (figures/manifest.json `testbed_sweep`)."""
    arms = summary["arms"]
    return {
        "grid": {k: summary["grid"][k] for k in ("sharpness_levels", "coupling_levels", "seeds")},
        "lambda_spread": summary["lambda_spread"],
        "gamma_spread": summary["gamma_spread"],
        "lambda": summary["lambda"],
        "gamma": summary["gamma"],
        "polish": summary["polish"],
        **arms,
        "task_accuracy_min": summary["adam"]["task_accuracy_min"],
        "adam": summary["adam"],
        "spearman": {name: {k: v[k] for k in ("rho", "ci95", "n_pairs", "ci_excludes_zero")}
                     for name, v in summary["spearman"].items()},
        "spearman_all": summary["spearman_all"],
        "parameters": summary["parameters"],
        "timings": summary["timings"],
        "wall_seconds": summary["wall_seconds"],
    }


def check_testbed_sweep(summary: dict, expect: dict) -> list[str]:
    """Failures of what the sweep must show by construction (see experiments/testbed_sweep.toml)."""
    failures = []
    grad = summary["polish"]["align_grad_norm_max_polished"]
    if grad > expect.get("max_polished_grad_norm", np.inf):
        failures.append(f"polish left ||grad L_A|| = {grad:.2e}")
    for name in ("lambda", "gamma"):
        spread = summary[f"{name}_spread"]
        if spread < expect.get(f"min_{name}_spread", 0.0):
            failures.append(f"{name} spans only {spread:.1f}x")
    s_part = summary["arms"]["polished_eps0"]["s_part"]
    if "s_part_exponent" in expect:
        e, tol = s_part["exponent_median"], expect.get("s_part_exponent_tol", 0.1)
        if e is None or abs(e - expect["s_part_exponent"]) > tol:
            failures.append(f"S-part exponent (polished, eps = 0) median {e}, expected {expect['s_part_exponent']} +- {tol}")
    if "c4_ratio_tol" in expect:
        r = s_part["c4_ratio_median"]
        if r is None or abs(r - 1) > expect["c4_ratio_tol"]:
            failures.append(f"S-part c4_fit / c4_pred median {r}, expected within {expect['c4_ratio_tol']:.0%} of 1")
    return failures


def _copy_figures(out: Path, names: list[str], target: Path, figures_dir: Path) -> list[str]:
    target.mkdir(parents=True, exist_ok=True)
    files = []
    for fig in names:
        shutil.copyfile(out / fig, target / fig)
        files.append(str((target / fig).relative_to(figures_dir.parent)))
    return files


# Experiments that report numbers without checks: kind -> (module, config class, run function,
# summary keys that go into the manifest).
REPORT_ONLY_KINDS = {
    "testbed_defenses": ("geomsim.testbed.sweep.defenses", "TestbedDefenseConfig", "run_testbed_defenses",
                         ("grid", "accuracy_target", "fixed_step", "defenses", "forecast_ranking")),
    "testbed_forecast": ("geomsim.testbed.sweep.forecast", "TestbedForecastConfig", "run_testbed_forecast",
                         ("runs", "finite_runs", "grid", "threshold", "levels", "methods",
                          "task_hessian_indefinite_fraction", "verdict")),
}


def write_calibration(summary: dict, experiment: Path, target: Path) -> str:
    """Ship the validation's per-level split-conformal calibration of every method as
    diagnose's default (`geomsim.diagnose.verdict`): the GD methods for gd, adam_sign for
    adam and adamw."""
    from geomsim.diagnose.verdict import calibration_document
    from geomsim.io import write_json
    from geomsim.testbed.sweep.forecast import ADAM_METHODS, GD_METHODS
    from geomsim.theory.calibration import LevelCalibrations

    families = {family: {n: LevelCalibrations.from_dict(summary["methods"][n]["calibration"]) for n in names}
                for family, names in (("gd", GD_METHODS), ("adam", ADAM_METHODS))}
    grid, runs = summary["grid"], summary["runs"]
    source = (f"{experiment.relative_to(ROOT)}: the testbed transformer's {runs} GD fine-tunes (lr = 1/||H_F||, "
              f"2000 steps) and {runs} Adam fine-tunes, {grid['sharpness_levels']} sharpness levels x "
              f"{grid['coupling_levels']} mixtures x {grid['seeds']} seeds")
    write_json(target, calibration_document(families, source))
    return str(target.relative_to(ROOT))


PACKAGE_FORECAST = ROOT / "benchmarks" / "results" / "alignment_risk_testbed.json"


def package_forecast_numbers() -> dict:
    """`alignment-risk` itself on the same runs (benchmarks/alignment_risk_testbed.py needs
    torch, so it is not rerun here: its committed results are merged into the entry)."""
    if not PACKAGE_FORECAST.exists():
        return {}
    import json

    data = json.loads(PACKAGE_FORECAST.read_text())
    return {"alignment_risk_package": {
        "source": f"{PACKAGE_FORECAST.relative_to(ROOT)} ({data['package']}, {data['date'][:10]})",
        "headline_safety_loss": data["summary"]["headline"]["safety_loss"],
        "by_safety_loss": data["summary"]["alignment_risk_package"],
        "seconds_per_run_median": data["wall_seconds_per_run_median"],
    }}


def draw_package_comparison(out: Path, summary: dict, target: Path, figures_dir: Path) -> list[str]:
    """Forecast / measured crossing steps per run at each level: geomsim's methods (this
    run) beside alignment-risk itself with each safety loss (its committed results)."""
    if not PACKAGE_FORECAST.exists():
        return []
    import json

    import numpy as np

    from geomsim.io import read_csv
    from geomsim.plotting.testbed_forecast_figures import plot_ratios

    package = json.loads(PACKAGE_FORECAST.read_text())
    extra = {level: {f"package ({loss})": np.array(
        [np.inf if (v := r["package"][loss]["t_ratio_interpolated"][f"{level:g}"]) is None else v
         for r in package["per_run"] if r["measured_steps_to"][f"{level:g}"] is not None], dtype=float)
        for loss in package["summary"]["alignment_risk_package"]} for level in summary["levels"]}
    files = plot_ratios({"forecast_runs": read_csv(out / "forecast_runs.csv")}, summary, target, extra=extra,
                        stem="fig_forecast_vs_package",
                        title="geomsim's forecasts and alignment-risk itself on the same 64 GD fine-tunes")
    return [str(p.relative_to(figures_dir.parent)) for p in files]


def run_experiment(path: Path, runs_dir: Path, figures_dir: Path):
    from geomsim.sweep import make_config, run_sweep

    with open(path, "rb") as handle:
        raw = tomllib.load(handle)
    repro = raw.pop("repro", {})
    name = path.stem
    out = runs_dir / name
    expect = repro.get("expect", {})
    if repro.get("kind") == "testbed_sweep":
        import jax

        from geomsim.config import build
        from geomsim.testbed.sweep import TestbedSweepConfig
        from geomsim.testbed.sweep.run import run_testbed_sweep

        jax.config.update("jax_enable_x64", True)
        result = run_testbed_sweep(build(TestbedSweepConfig, None, raw), out, progress=False, plots=True)
        files = _copy_figures(out, result.summary["figures"], figures_dir / name, figures_dir)
        numbers = testbed_sweep_numbers(result.summary)
        failures = check_testbed_sweep(result.summary, expect)
        wall = result.summary["wall_seconds"]
    elif repro.get("kind") in REPORT_ONLY_KINDS:
        import importlib

        import jax

        from geomsim.config import build

        module_name, cls_name, run_name, keys = REPORT_ONLY_KINDS[repro["kind"]]
        module = importlib.import_module(module_name)
        jax.config.update("jax_enable_x64", True)
        if raw.get("calibration"):  # a calibration file scored on these runs: a path in this repository
            raw["calibration"] = str(ROOT / raw["calibration"])
        summary = getattr(module, run_name)(build(getattr(module, cls_name), None, raw), out, progress=False,
                                            plots=True)
        files = _copy_figures(out, summary["figures"], figures_dir / name, figures_dir)
        numbers = {k: summary[k] for k in keys}
        if repro["kind"] == "testbed_forecast":
            if "external_calibration" in summary:
                numbers["external_calibration"] = {**summary["external_calibration"],
                                                   "file": raw["calibration"].removeprefix(str(ROOT) + "/")}
            if repro.get("write_calibration"):
                files.append(write_calibration(summary, path, ROOT / repro["write_calibration"]))
            if repro.get("package_comparison"):
                numbers.update(package_forecast_numbers())
                files += draw_package_comparison(out, summary, figures_dir / name, figures_dir)
        failures = [] if expect.get("report_only") else [f"{repro['kind']}: only report_only is supported"]
        wall, result = summary["wall_seconds"], summary
    elif repro.get("kind") == "testbed":
        from geomsim.testbed.config import make_testbed_config
        from geomsim.testbed.run import run_testbed

        result = run_testbed(make_testbed_config(None, raw), out, progress=False, plots=True)
        files = _copy_figures(out, result.summary["figures"], figures_dir / name, figures_dir)
        numbers = testbed_numbers(result.summary)
        failures = check_testbed(result.summary, expect)
        wall = result.summary["wall_seconds"]
    else:
        if out.exists():
            shutil.rmtree(out)
        result = run_sweep(make_config(None, raw), out, progress=False, plots=True)
        files = _copy_figures(out, result.meta["figures"], figures_dir / name, figures_dir)
        from geomsim.sweep.statistics import sweep_statistics

        numbers = sweep_statistics(result.results)
        failures = check(numbers, expect)
        wall = result.meta["wall_seconds"]
    entry = {
        "title": repro.get("title", name),
        "config": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path),
        "files": files,
        "numbers": numbers,
        "expect": expect,
        "pass": not failures,
        "failures": failures,
        "wall_seconds": wall,
    }
    return name, entry, result


def main(argv: list[str] | None = None) -> int:
    from geomsim.plotting.formats import figure_formats

    with figure_formats("both"):  # figures/ keeps the PDFs for papers
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m paper_repro", description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="experiment names (file stems) to run; default all")
    parser.add_argument("--experiments", default=str(ROOT / "experiments"), help="folder of *.toml configs")
    parser.add_argument("--runs", default=str(ROOT / "runs" / "paper_repro"), help="where raw sweep outputs go")
    parser.add_argument("--figures", default=str(ROOT / "figures"), help="where figures and manifest.json go")
    args = parser.parse_args(argv)

    import geomsim  # noqa: F401  (runtime flags before JAX starts)
    from geomsim._runtime import enable_compilation_cache

    enable_compilation_cache()
    from geomsim.io import environment_versions, write_json
    from paper_repro.composites import COMPOSITES

    figures_dir, runs_dir = Path(args.figures), Path(args.runs)
    paths = sorted(Path(args.experiments).glob("*.toml"))
    if args.only:
        paths = [p for p in paths if p.stem in args.only]
        missing = set(args.only) - {p.stem for p in paths}
        if missing:
            print(f"paper_repro: error: no experiment named {sorted(missing)}", file=sys.stderr)
            return 2
    manifest_path = figures_dir / "manifest.json"
    manifest = {"figures": {}}
    if manifest_path.exists() and args.only:
        import json

        manifest = json.loads(manifest_path.read_text())
    t0 = time.perf_counter()
    results = {}
    for i, path in enumerate(paths, 1):
        print(f"[{i}/{len(paths)}] {path.stem} ...", file=sys.stderr, flush=True)
        name, entry, result = run_experiment(path, runs_dir, figures_dir)
        manifest["figures"][name] = entry
        results[name] = result
        verdict = "ok" if entry["pass"] else "FAIL: " + "; ".join(entry["failures"])
        print(f"      {entry['title']}: {verdict} ({entry['wall_seconds']:.1f} s)", file=sys.stderr)
    for composite in COMPOSITES:
        if all(n in results for n in composite.needs):
            name, entry = composite.draw(results, figures_dir)
            manifest["figures"][name] = entry
            verdict = "ok" if entry["pass"] else "FAIL: " + "; ".join(entry["failures"])
            print(f"      {entry['title']}: {verdict}", file=sys.stderr)
    manifest["generated"] = time.strftime("%Y-%m-%d %H:%M:%S")
    manifest["versions"] = environment_versions()
    manifest["wall_seconds"] = round(time.perf_counter() - t0, 1)
    write_json(manifest_path, manifest)
    failed = [n for n, e in manifest["figures"].items() if not e["pass"]]
    print(f"wrote {manifest_path} ({len(manifest['figures'])} figures, {len(failed)} failing)", file=sys.stderr)
    if failed:
        print(f"paper_repro: checks failed for {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
