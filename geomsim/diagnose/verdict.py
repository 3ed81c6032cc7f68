"""The diagnosis's verdict: when the threshold is crossed, at the early end of an interval,
and which of the AIC's three conditions hold on this model.

The interval combines the two errors a forecast has: the spread of the measurement
(`--resamples`: new Lanczos starts and bootstrap draws of the batches; 5% and 95%
quantiles) and the method's own error on measured fine-tunes, a split-conformal
calibration (`geomsim.theory.calibration`) shipped with geomsim from the testbed's
forecast validation (`calibration.json` beside this file, written by
`python -m paper_repro --only forecast`), or the user's own (`--calibration FILE`, the
same schema). Every calibrated method gives an interval; the verdict takes the earliest
lower end of them all (a late forecast is the unsafe error, and which single method is
best depends on the model: docs/theory.md, section 10). A method is calibrated for one
optimizer family (gd; adam for Adam and AdamW); gradient flow has no measured fine-tunes
to calibrate on: without a calibrated method the verdict is the earliest forecast of all
the methods made (each its resamples' 5% quantile, or its point forecast), and the report
says so.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from geomsim.config import ConfigError
from geomsim.theory.calibration import LevelCalibrations, verdict_ends

DEFAULT_CALIBRATION = Path(__file__).with_name("calibration.json")
FAMILIES = {"gd": "gd", "adam": "adam", "adamw": "adam"}  # optimizer -> calibrated family
# The report's reading of the first two AIC conditions (docs/theory.md, section 2), which the
# theory states as "mu << lambda" and "eps small": a decade of spectral gap below lambda_k,
# and at most 10% of the first update's norm (1% of its squared norm) in S. On the testbed's
# 16 polished models mu / lambda_1 is 0.018-0.33 (median 0.047) and eps over the forecast
# runs 3e-4-0.12 (median 0.016); the examples' classifier has mu / lambda_2 = 0.6.
GAP_MAX = 0.1
EPS_MAX = 0.1


def diagnosis_methods(optimizer: str, task_model: str) -> tuple[str, ...]:
    """The forecasts a diagnosis makes (and so the methods its verdict ranges over), by
    optimizer and task model; the testbed's validation scores the verdict of each set."""
    if optimizer in ("adam", "adamw"):
        return ("adam_sign",)
    if task_model == "linearized":
        return ("gauss_newton_gd", "linearized_gd", "taylor", "paper_bound", "alignment_risk")
    bounded = "gauss_newton" if task_model == "gauss_newton" else "quadratic"
    return (f"{bounded}_{optimizer}", "taylor", "paper_bound", "alignment_risk")


def load_calibration(path: str) -> dict[str, Any] | None:
    """The calibration document: `path`, the shipped one for '' or None for 'none';
    one-line ConfigError naming `calibration` when it cannot be read."""
    if path == "none":
        return None
    file = Path(path) if path else DEFAULT_CALIBRATION
    try:
        doc = json.loads(file.read_text())
        for family, entry in doc["families"].items():
            if family not in FAMILIES.values():
                raise KeyError(f"unknown family {family!r}")
            entry["methods"] = {name: LevelCalibrations.from_dict(levels) for name, levels in entry["methods"].items()}
    except FileNotFoundError:
        raise ConfigError(f"calibration: file not found: {file}") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ConfigError(f"calibration: {file} is not a geomsim calibration ({type(err).__name__}: {err})") from None
    return doc


def calibration_document(families: dict[str, dict[str, LevelCalibrations]], source: str) -> dict[str, Any]:
    """The calibration file's content (what `load_calibration` reads): per family (gd, adam)
    each method's per-level calibration, and where it was measured."""
    return {"source": source,
            "families": {family: {"methods": {name: cal.to_dict() for name, cal in methods.items()}}
                         for family, methods in families.items()}}


def verdict(optimizer: str, lr: float, threshold: float, t_fail: dict[str, float], spread: dict[str, Any] | None,
            doc: dict[str, Any] | None, examples_per_step: int | None) -> dict[str, Any]:
    """`{method, t_fail, t_fail_low, t_fail_high, steps, steps_low, steps_high, examples_low,
    pilot_steps, pilot, calibration, resampled}` (t = steps x lr; steps at the given lr, None for
    gradient flow; non-finite numbers become null in JSON).

    Every method forecast here that is calibrated for the optimizer's family gives an
    interval (its resamples' 5%-95% spread, or its point forecast, times its calibrated
    error at the threshold's nearest measured level); the verdict's interval runs from the
    earliest lower end to the latest upper end, and `method` is the one whose lower end
    binds. One method alone is not safe off its calibration set: the quartic bound and
    alignment-risk's formula omit the first-order terms (`c1 = -grad L_A . g`, `c2`) that
    an unpolished model has, and on such a model they cross 5-7x late where the Taylor and
    quadratic models do not. Without a calibrated method (gradient flow, `--calibration
    none`) the same rule over every forecast in `t_fail`, uncorrected: the earliest lower end
    binds. (Before, the bounded method alone gave it; on a tiny Llama under gradient flow its
    quadratic model never crossed while Taylor, the quartic bound and alignment-risk's formula
    crossed at t = 0.85-1.2, and the verdict said "not forecast to rise" for all of them.)
    """
    family = FAMILIES.get(optimizer)
    calibrated = ((doc or {}).get("families", {}).get(family, {}).get("methods", {})) if family else {}
    spread = spread or {}
    names = sorted(name for name in calibrated if name in t_fail) or sorted(t_fail)
    base_low = {n: spread[n]["q05"] if n in spread else t_fail[n] for n in names}
    base_high = {n: spread[n]["q95"] if n in spread else t_fail[n] for n in names}
    if names[0] in calibrated:
        lows, highs, binding = verdict_ends(base_low, base_high, calibrated, [threshold])
        method, low, high = names[int(binding[0])], float(lows[0]), float(highs[0])
    else:  # ties go to the first name, as in verdict_ends
        method = min(names, key=lambda n: base_low[n])
        low, high = float(base_low[method]), float(max(base_high.values()))
    options = {name: calibrated[name].at(threshold) for name in names if name in calibrated}
    point = t_fail[method]
    stepped = optimizer != "flow"

    def steps(t):
        return t / lr if stepped else None

    level, cal, thin = options.get(method, (None, None, None))
    return {
        "method": method,
        "t_fail": point,
        "t_fail_low": low,
        "t_fail_high": high,
        "steps": steps(point),
        "steps_low": steps(low),
        "steps_high": steps(high),
        "examples_low": (steps(low) * examples_per_step
                         if stepped and examples_per_step and math.isfinite(low) else None),
        "pilot_steps": 0,
        "pilot": None,  # geomsim.diagnose.pilot: "measured" or "rescaled" when a pilot set the verdict
        "calibration": None if cal is None else {
            **cal.to_dict(), "level": level, "fallback": thin, "family": family, "source": doc.get("source", ""),
            "methods": sorted(options)},
        "resampled": method in spread,
    }


def aic_conditions(aic: dict[str, Any], t_fail: float, optimizer: str) -> list[dict[str, Any]]:
    """The AIC's three conditions (docs/theory.md, section 2) on this model, each with the
    measured numbers behind it: `{name, holds, measured, criterion}`."""
    gap, eps, gamma, grad_norm = aic["gap_ratio"], aic["eps"], aic["coupling"], aic["grad_norm"]
    finite = all(v is not None for v in (gap, eps, gamma, grad_norm))
    out = [
        {"name": "sharp, low-rank alignment",
         "holds": bool(gap is not None and gap <= GAP_MAX * (1 + 1e-9)),
         "measured": f"lambda_k = {aic['sharpness']:.4g}, mu = lambda_(k+1) = {aic['mu']:.4g}, mu / lambda_k = "
                     f"{gap:.3g}" if gap is not None else "mu / lambda_k not finite",
         "criterion": f"mu / lambda_k <= {GAP_MAX:g}"},
        {"name": "first-order orthogonality",
         "holds": bool(eps is not None and eps <= EPS_MAX * (1 + 1e-9)),  # round-off at the boundary
         "measured": f"eps = ||P_S g|| / ||g|| = {eps:.4g}" if eps is not None else "eps not finite",
         "criterion": f"eps <= {EPS_MAX:g}"},
    ]
    if not finite or gamma <= 0:
        out.append({"name": "curvature coupling", "holds": False,
                    "measured": f"gamma = ||P_S H_F g|| = {gamma}", "criterion": "gamma > 0"})
        return out
    # The S-displacement along the flow is -t P_S g + (t^2 / 2) P_S H_F g + ...: the
    # curvature term overtakes the first-order one at t_x = 2 ||P_S g|| / gamma.
    crossover = 2.0 * eps * grad_norm / gamma
    if FAMILIES.get(optimizer) == "adam" or not math.isfinite(t_fail):
        holds, criterion = True, "gamma > 0"
    else:
        holds = crossover <= t_fail
        criterion = (f"gamma > 0 and the curvature drift into S overtakes the first-order drift before the "
                     f"forecast crossing: t_x = 2 ||P_S g|| / gamma <= t_fail = {t_fail:.4g}")
    out.append({"name": "curvature coupling", "holds": bool(holds),
                "measured": f"gamma = ||P_S H_F g|| = {gamma:.4g}, t_x = {crossover:.4g}", "criterion": criterion})
    return out
