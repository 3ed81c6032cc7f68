"""The `alignment-risk` package itself on the 64 GD fine-tunes of the testbed forecast validation.

    python benchmarks/alignment_risk_testbed.py --out-dir /tmp/fc --json benchmarks/results/alignment_risk_testbed.json
                                                [--runs N] [--config experiments/forecast.toml] [--threads 1]

`python -m geomsim.testbed forecast` (geomsim/testbed/sweep/forecast.py, config
experiments/forecast.toml) measures, for every (sharpness level, mixture weight a,
seed) of the sweep grid, full-batch GD from the polished transformer theta0 on
`L_F = (1 - a) answer_loss(base) + a answer_loss(other)` with `lr = gd_lr_scale /
||H_F(theta0)||`, and records the rise of `L_A = refusal_kl(align_prompts, target)`.
It scores geomsim's forecasts, among them its port of alignment-risk's formula fed
with geomsim's Hessian quantities.  This script runs the package ITSELF
(`AlignmentRiskPipeline.run`, its own Fisher subspace and curvature estimates) on
the same runs and scores its forecast against the same measured curves:

* the model: the PyTorch twin of the polished transformer (benchmarks/torch_twin.py),
  float64, checked against the JAX model run by run: L_A and L_F agree to ~1e-15
  nats, ||grad L_F|| to ~1e-14 relative;
* safety data: the 128 alignment prompts (one batch).  Safety loss (`refusal_kl`,
  the headline): per prompt the binary KL between the level's target refusal
  probability and p(REFUSE | prompt), i.e. L_A; the package builds its empirical
  Fisher from these per-sample gradients.  At the polished model every prompt is
  calibrated (p_i = target to ~1e-15), so those gradients are round-off and so is
  its Fisher.  Two variants show what it gives with other safety losses (same data,
  same settings otherwise): `refusal_nll`, -log p(REFUSE | prompt) (the refusal as
  the label), and `bernoulli_fisher`, every prompt twice with labels refuse /
  not-refuse and loss weights sqrt(2 target), sqrt(2 (1 - target)) (its empirical
  Fisher is then exactly the Bernoulli Fisher of the refusal decision, which is
  H_A at a calibrated model; max_samples 256 to take all of them);
* fine-tune data and loss: the run's two fine-tuning sets (16 + 16 sequences, one
  full batch), the mixture loss;
* settings: `FisherConfig(top_rank=1)` (geomsim's rank for these runs; the other
  Fisher settings are the package's defaults: max_samples 128 = all prompts,
  target_explained_variance 0.9, gradient_collection "loop", subspace_method "svd",
  device "auto"), `PipelineConfig(learning_rate=lr)` (the run's GD step),
  `ForecastConfig(max_steps=4 x gd_steps, step_size=1.0, collapse_loss_threshold=
  threshold)`; everything else default (adaptive curvature refinement on: with one
  fine-tune batch it would re-evaluate the same batch).
  step_size stays 1: the package already scales its rates by learning_rate
  (`epsilon = lr x epsilon_hat`, `gamma = lr^2 x gamma_hat`), so its forecast step n
  is t = n x lr, geomsim's time; step_size = lr as well would count lr twice (that
  setting is reported per run and variant in `step_size_equal_lr_variant`);
* scores, as `geomsim.theory.forecast.forecast_errors` scores geomsim's forecasts:
  per level, the package's crossing step (first step with estimated_loss >= level,
  its own collapse rule; null if never within max_steps) over the measured crossing
  step (forecast_runs.csv), and |log10(estimated_loss at the measured crossing /
  level)| (log-log interpolated on its integer-step grid); summaries per level as
  figures/manifest.json `forecast` (reached_runs, medians, within-2x fraction).
  In the JSON a non-finite number is null (geomsim.io.jsoncodec): a null t_ratio is
  "never measured" where measured_steps_to is null and "the forecast never crossed"
  where it is not (`forecast_never_crossed` counts those per level).

Needs torch and alignment-risk.  alignment-risk (every release up to 1.14.1)
declares torch<2.7 and matplotlib<3.11, which pip cannot resolve together with the
bench extra's torch==2.13.0, so it is installed without its dependencies (it
imports and runs with torch 2.13.0 and matplotlib 3.11):
    pip install torch==2.13.0 && pip install --no-deps alignment-risk==1.14.1
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from geomsim import config as config_layer  # noqa: E402
from geomsim.io.jsoncodec import dumps  # noqa: E402
from geomsim.models import Transformer  # noqa: E402
from geomsim.sweep.progress import Progress  # noqa: E402
from geomsim.tasks.language import REFUSE  # noqa: E402
from geomsim.testbed.sweep import law, stages  # noqa: E402
from geomsim.testbed.sweep.forecast import TestbedForecastConfig, run_index  # noqa: E402
from geomsim.testbed.sweep.run import prepare_models, select  # noqa: E402
from geomsim.theory.forecast import alignment_risk, forecast_errors  # noqa: E402

MODEL_STAGES = ("pretrain", "sweep_align", "sweep_polish", "spectrum")


# --- the validation's runs, rebuilt ------------------------------------------------------------------


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def load_runs(out_dir: Path, config_path: Path):
    """The config, the models (from the validation's checkpoints) and its per-run table and measured curves."""
    cfg = config_layer.build(TestbedForecastConfig, config_path)
    notes = []
    summary_path = out_dir / "summary.json"
    geomsim_summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    if geomsim_summary is not None:
        ran = config_layer.build(TestbedForecastConfig, None, geomsim_summary["config"])
        if config_layer.digest(ran) != config_layer.digest(cfg):
            raise SystemExit(f"{config_path}: settings differ from the run in {out_dir} (summary.json config)")
    reused: list[str] = []
    t0 = time.perf_counter()
    models = prepare_models(cfg, out_dir, Progress(4, "models", enabled=False), {}, reused)
    missing = [s for s in MODEL_STAGES if s not in reused]
    if missing:
        notes.append(f"stages recomputed (not found in {out_dir}): {missing}")
    load_seconds = time.perf_counter() - t0
    table = read_csv(out_dir / "forecast_runs.csv")
    curves: dict[int, list[tuple[float, float]]] = {}
    for row in read_csv(out_dir / "forecast_curves.csv"):
        if row["curve"] == "measured":
            curves.setdefault(int(row["run"]), []).append((float(row["step"]), float(row["align_increase"])))
    return cfg, models, table, curves, geomsim_summary, load_seconds, notes


def run_inputs(cfg: TestbedForecastConfig, models, index: int, run: tuple[str, int, int, int]) -> dict:
    """One run's theta0, target, fine-tuning sets and mixture weight, as `run_testbed_forecast` builds them."""
    arm, level, mix_i, seed = run
    if arm != "polished":
        raise SystemExit(f"run {index}: arm {arm!r}; only the polished arm is mirrored here")
    data = models.data
    return dict(
        theta0=jax.tree.map(lambda p: p[level, seed], models.polished),
        target=float(stages.targets(cfg)[level]),
        base=select(data.task_train["base"], seed), other=select(data.task_train["other"], seed),
        mix=float(np.asarray(cfg.mix)[mix_i]),
        basis=np.asarray(models.spec["polished_basis"][level, seed, 0]),  # geomsim's top Hessian direction of L_A
    )


# --- the torch side ----------------------------------------------------------------------------------


def torch_losses(torch, target: float, mix: float):
    """The package's safety losses (by variant) and fine-tune loss on the twin (whose forward flattens to (B*T, V))."""
    import torch.nn.functional as F

    def refusal_log_odds(model, prompts):
        logits = model(prompts).reshape(*prompts.shape, -1)[:, -1, :]
        logp = torch.log_softmax(logits, dim=-1)
        hit = torch.arange(logits.shape[-1], device=logits.device) == REFUSE
        return logp[:, REFUSE] - torch.logsumexp(logp.masked_fill(hit, -torch.inf), dim=-1)

    def refusal_kl(model, batch):  # L_A per prompt, as geomsim's refusal_kl
        s = refusal_log_odds(model, batch["prompts"])
        kl = (target * (np.log(target) - F.logsigmoid(s))
              + (1.0 - target) * (np.log1p(-target) - F.logsigmoid(-s)))
        return kl.mean()

    def refusal_nll(model, batch):  # -log p(REFUSE | prompt): the refusal label as the safety target
        return -F.logsigmoid(refusal_log_odds(model, batch["prompts"])).mean()

    def labelled_nll(model, batch):  # weight x NLL of a binary label (bernoulli_fisher's pairs)
        s = refusal_log_odds(model, batch["prompts"])
        nll = torch.where(batch["label"], -F.logsigmoid(s), -F.logsigmoid(-s))
        return (batch["weight"] * nll).mean()

    def answer_loss(model, tokens, mask):
        inputs = tokens[:, :-1]
        logp = torch.log_softmax(model(inputs).reshape(*inputs.shape, -1), dim=-1)
        nll = -torch.gather(logp, -1, tokens[:, 1:, None])[..., 0]
        m = mask[:, 1:]
        return torch.where(m, nll, torch.zeros_like(nll)).sum() / m.sum().clamp(min=1)

    def mixture(model, batch):
        return ((1.0 - mix) * answer_loss(model, batch["base_tokens"], batch["base_mask"])
                + mix * answer_loss(model, batch["other_tokens"], batch["other_mask"]))

    safety = {"refusal_kl": refusal_kl, "refusal_nll": refusal_nll, "bernoulli_fisher": labelled_nll}
    return safety, mixture


def safety_batches(torch, prompts, target: float) -> dict:
    """One safety batch per variant.  bernoulli_fisher: every prompt twice, labelled refuse with loss weight
    sqrt(2 target) and not-refuse with sqrt(2 (1 - target)), so the mean of the per-sample gradient outer
    products is exactly the Bernoulli Fisher (1/m) sum_i target (1 - target) grad s_i grad s_i^T (at p_i =
    target, geomsim's H_A)."""
    m = prompts.shape[0]
    weight = torch.cat([torch.full((m,), np.sqrt(2 * target)), torch.full((m,), np.sqrt(2 * (1 - target)))])
    label = torch.cat([torch.ones(m, dtype=torch.bool), torch.zeros(m, dtype=torch.bool)])
    plain = {"prompts": prompts}
    return {"refusal_kl": plain, "refusal_nll": plain,
            "bernoulli_fisher": {"prompts": torch.cat([prompts, prompts]), "weight": weight.double(), "label": label}}


VARIANTS = ("refusal_kl", "refusal_nll", "bernoulli_fisher")
PRIMARY = "refusal_kl"  # the safety loss of the brief: L_A itself


def to_torch(torch, x, dtype=None):
    arr = np.array(x)  # a writable copy
    return torch.from_numpy(arr.astype(np.int64) if dtype is None and arr.dtype.kind in "iu" else arr)


# --- scores and summaries ----------------------------------------------------------------------------


def first_step(loss: np.ndarray, level: float) -> int | None:
    """The package's own crossing rule (forecast_stability's collapse_step) at `level`."""
    hits = np.flatnonzero(loss >= level)
    return int(hits[0]) if hits.size else None


def _median(values) -> float | None:
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    return float(np.median(values)) if values.size else None


def summarise(per_run: list[dict], variant: str, levels, threshold, finite) -> dict:
    """Per level as `summarise_forecasts` (figures/manifest.json `forecast`), plus the headline at `threshold`."""
    per_level = {}
    for level in levels:
        key = f"{level:g}"
        steps = np.array([r["measured_steps_to"][key] for r in per_run], dtype=float)
        reached = finite & np.isfinite(steps)
        ratio = np.array([r["package"][variant]["t_ratio"][key] for r in per_run], dtype=float)[reached]
        error = np.array([r["package"][variant]["log10_error"][key] for r in per_run], dtype=float)[reached]
        per_level[key] = {
            "reached_runs": int(reached.sum()),
            "log10_error_median": _median(error),
            "t_fail_ratio_median": _median(ratio),
            "within_2x_fraction": float(np.mean((ratio >= 0.5) & (ratio <= 2.0))) if ratio.size else None,
            "forecast_never_crossed": int(np.sum(np.isinf(ratio))),
        }
        if np.isinf(per_level[key]["t_fail_ratio_median"] or 0.0):
            per_level[key]["t_fail_ratio_median_reason"] = "inf: the forecast never crossed in most reaching runs"
    head = per_level[f"{threshold:g}"]
    return {"t_fail_ratio_median": head["t_fail_ratio_median"], "within_2x_fraction": head["within_2x_fraction"],
            "forecast_never_crossed": head["forecast_never_crossed"],
            "log10_error_median": {k: d["log10_error_median"] for k, d in per_level.items()}, "levels": per_level}


def _ranks(x: np.ndarray) -> np.ndarray:
    return np.argsort(np.argsort(x)).astype(float)


def agreement(theirs: np.ndarray, ours: np.ndarray) -> dict:
    """How one package quantity compares with geomsim's, run by run."""
    ok = np.isfinite(theirs) & np.isfinite(ours) & (ours != 0)
    ratio = theirs[ok] / ours[ok]
    if not ratio.size:
        return {"runs": 0}
    out = {"runs": int(ok.sum()), "ratio_median": float(np.median(ratio)),
           "ratio_p10": float(np.percentile(ratio, 10)), "ratio_p90": float(np.percentile(ratio, 90)),
           "ratio_min": float(ratio.min()), "ratio_max": float(ratio.max())}
    if ok.sum() > 2:
        out["spearman"] = float(np.corrcoef(_ranks(theirs[ok]), _ranks(ours[ok]))[0, 1])
    return out


# --- main --------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default="/tmp/fc", help="a finished `python -m geomsim.testbed forecast` run")
    parser.add_argument("--config", default=str(HERE.parent / "experiments" / "forecast.toml"))
    parser.add_argument("--json", default=str(HERE / "results" / "alignment_risk_testbed.json"))
    parser.add_argument("--runs", type=int, default=None, help="only the first N runs (a quick check)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()

    import torch
    from alignment_risk import __version__ as peer_version
    from alignment_risk.fisher import FisherConfig
    from alignment_risk.forecast import ForecastConfig, forecast_stability
    from alignment_risk.pipeline import AlignmentRiskPipeline, PipelineConfig
    from torch_twin import TorchTransformer, load_equinox_weights, torch_to_jax_flat

    torch.set_num_threads(args.threads)
    out_dir = Path(args.out_dir)
    cfg, models, table, curves, geomsim_summary, load_seconds, notes = load_runs(out_dir, Path(args.config))
    data = models.data
    runs = run_index(cfg)
    n = len(runs) if args.runs is None else min(args.runs, len(runs))
    levels = tuple(float(x) for x in cfg.levels)
    keys = [f"{lv:g}" for lv in levels]
    max_steps = int(round(cfg.forecast_span * cfg.gd_steps))
    model_config = data.bed.model_config
    static = eqx.partition(Transformer(model_config, key=jax.random.key(0)), eqx.is_inexact_array)[1]
    prompts = to_torch(torch, data.align_prompts)
    num_prompts = int(prompts.shape[0])

    @jax.jit
    def jax_losses(theta0, target, base, other, mix):
        return data.align_loss(theta0, target), law.mixture_task(data, base, other, mix)(theta0)

    def pipeline_config(variant: str, lr: float) -> PipelineConfig:
        # Rank 1 (geomsim's); bernoulli_fisher has two samples per prompt, all of them used.
        fisher = (FisherConfig(top_rank=1, max_samples=2 * num_prompts) if variant == "bernoulli_fisher"
                  else FisherConfig(top_rank=1))
        return PipelineConfig(fisher=fisher, learning_rate=lr, forecast=ForecastConfig(
            max_steps=max_steps, step_size=1.0, collapse_loss_threshold=cfg.threshold))

    per_run = []
    walls: dict[str, list[float]] = {v: [] for v in VARIANTS}
    t_all = time.perf_counter()
    for i in range(n):
        row = table[i]
        arm, level_i, mix_i, seed = runs[i]
        if (int(row["level"]), float(row["mix"]), int(row["seed"])) != (level_i, float(cfg.mix[mix_i]), seed):
            raise SystemExit(f"run {i}: forecast_runs.csv row {row['run']} is another grid point")
        inp = run_inputs(cfg, models, i, runs[i])
        lr = float(row["lr"])
        eqx_model = eqx.combine(inp["theta0"], static)
        safety_losses, task_loss = torch_losses(torch, inp["target"], inp["mix"])
        safety = safety_batches(torch, prompts, inp["target"])
        task_batch = {"base_tokens": to_torch(torch, inp["base"].tokens),
                      "base_mask": to_torch(torch, inp["base"].answer_mask),
                      "other_tokens": to_torch(torch, inp["other"].tokens),
                      "other_mask": to_torch(torch, inp["other"].answer_mask)}

        # The twin against the JAX model (both float64): L_A, L_F and ||grad L_F||.
        twin = load_equinox_weights(TorchTransformer(model_config).double(), eqx_model)
        la, lf = (float(v) for v in jax_losses(inp["theta0"], inp["target"], inp["base"], inp["other"], inp["mix"]))
        with torch.no_grad():
            tla, tlf = float(safety_losses[PRIMARY](twin, safety[PRIMARY])), float(task_loss(twin, task_batch))
        grads = torch.autograd.grad(task_loss(twin, task_batch), list(twin.parameters()))
        grad_norm = float(torch.sqrt(sum((g ** 2).sum() for g in grads)))

        meas = np.asarray(curves[i], np.float64)
        csv_meas = np.array([float(row[f"steps_to_{k}"]) for k in keys])
        sharp, coupling = float(row["sharpness"]), float(row["coupling"])
        eps_abs = float(row["eps"]) * float(row["grad_norm"])
        record = {
            "run": i, "level": level_i, "sigma": float(row["sigma"]), "mix": inp["mix"], "seed": seed, "lr": lr,
            "measured_steps_to": dict(zip(keys, csv_meas, strict=True)),
            "geomsim": {"sharpness": sharp, "coupling": coupling, "eps_abs": eps_abs,
                        "grad_norm": float(row["grad_norm"]),
                        "alignment_risk_t_ratio": {k: float(row[f"alignment_risk_t_ratio_{k}"]) for k in keys},
                        "alignment_risk_log10_error": {k: float(row[f"alignment_risk_log10_error_{k}"])
                                                       for k in keys}},
            "twin": {"align_loss_gap": abs(tla - la), "task_loss_gap": abs(tlf - lf),
                     "grad_norm_rel_gap": abs(grad_norm - float(row["grad_norm"])) / float(row["grad_norm"])},
            "package": {},
        }
        for variant in VARIANTS:
            twin = load_equinox_weights(TorchTransformer(model_config).double(), eqx_model)  # a fresh model
            pipeline = AlignmentRiskPipeline(pipeline_config(variant, lr))
            t0 = time.perf_counter()
            report = pipeline.run(twin, [safety[variant]], safety_losses[variant], [task_batch], task_loss)
            wall = time.perf_counter() - t0
            walls[variant].append(wall)

            sub, cur, fc = report.subspace, report.curvature, report.forecast
            lam = pipeline._stable_lambda_min(sub)  # what its forecast used (rank 1: the Fisher eigenvalue)
            loss = np.asarray(fc.estimated_loss, np.float64)
            steps = np.asarray(fc.steps)
            crossing = {k: first_step(loss, lv) for k, lv in zip(keys, levels, strict=True)}
            if crossing[f"{cfg.threshold:g}"] != fc.collapse_step:
                notes.append(f"run {i} {variant}: own crossing rule {crossing[f'{cfg.threshold:g}']} != "
                             f"collapse_step {fc.collapse_step}")
            # Scored as geomsim's forecasts are: forecast_errors on the measured curve (steps 1.. of its grid).
            t_meas, err, ratio_interp = (np.asarray(x) for x in forecast_errors(
                jnp.asarray(meas[:, 0]), jnp.asarray(meas[:, 1]), jnp.asarray(steps[1:], jnp.float64),
                jnp.asarray(loss[1:]), jnp.asarray(levels)))
            same = (np.isinf(csv_meas) & np.isinf(t_meas)) | np.isclose(csv_meas, t_meas, rtol=1e-9)
            if not np.all(same):
                notes.append(f"run {i}: measured crossing {t_meas} != forecast_runs.csv {csv_meas}")
            ratio = {k: np.nan if not np.isfinite(tm) else (np.inf if crossing[k] is None else crossing[k] / tm)
                     for k, tm in zip(keys, csv_meas, strict=True)}
            # geomsim's port of the formula on the package's numbers (t = steps x lr) against its curve.
            port = np.asarray(alignment_risk(lam, cur.gamma_hat, cur.epsilon_hat,
                                             jnp.asarray(steps * lr, jnp.float64)))
            pos = loss > 0
            formula_rel = float(np.max(np.abs(port[pos] - loss[pos]) / loss[pos])) if pos.any() else 0.0
            # The brief's literal setting (step_size = lr as well as learning_rate = lr): lr counted twice.
            literal = forecast_stability(lam, lr**2 * cur.gamma_hat, lr * cur.epsilon_hat,
                                         ForecastConfig(max_steps=max_steps, step_size=lr,
                                                        collapse_loss_threshold=cfg.threshold))
            # Its Fisher direction against geomsim's top Hessian direction of L_A (JAX flat order).
            v = sub.fisher_eigenvectors[:, 0].double()
            v_flat = torch_to_jax_flat(twin, eqx_model, [v[s.start:s.end].reshape(s.shape)
                                                         for s in sub.parameter_slices])
            u = inp["basis"]
            overlap = float(abs(v_flat @ u) / (np.linalg.norm(v_flat) * np.linalg.norm(u)))
            record["package"][variant] = {
                "wall_seconds": wall, "lambda_min": lam,
                "fisher_eigenvalues": sub.fisher_eigenvalues.double().tolist(),
                "gamma_hat": cur.gamma_hat, "epsilon_hat": cur.epsilon_hat,
                "acceleration_norm": cur.acceleration_norm,
                "projected_acceleration_norm": cur.projected_acceleration_norm,
                "initial_overlap": report.initial_risk.projected_ratio, "warning": report.warning,
                "collapse_step": fc.collapse_step, "crossing_step": crossing, "t_ratio": ratio,
                "t_ratio_interpolated": dict(zip(keys, ratio_interp, strict=True)),
                "log10_error": dict(zip(keys, err, strict=True)),
                "max_estimated_loss": float(loss.max()),
                "fisher_hessian_direction_overlap": overlap,
                "formula_check_max_rel_diff": formula_rel,
                "step_size_equal_lr_variant": {"collapse_step": literal.collapse_step,
                                               "max_estimated_loss": float(literal.estimated_loss.max())},
            }
        per_run.append(record)
        pk = record["package"]
        print(f"run {i:2d} (level {level_i}, a={inp['mix']:g}, seed {seed}) measured {csv_meas}; geomsim H "
              f"{sharp:.3g}, coupling {coupling:.3g}, |P g| {eps_abs:.3g}; "
              + "; ".join(f"{v}: {pk[v]['wall_seconds']:.2f} s, lambda {pk[v]['lambda_min']:.3g}, gamma_hat "
                          f"{pk[v]['gamma_hat']:.3g}, eps_hat {pk[v]['epsilon_hat']:.3g}, crossing "
                          f"{list(pk[v]['crossing_step'].values())}" for v in VARIANTS),
              file=sys.stderr, flush=True)

    finite = np.array([table[r["run"]]["finite"] == "True" for r in per_run])
    g = {k: np.array([r["geomsim"][k] for r in per_run], float) for k in ("sharpness", "coupling", "eps_abs")}
    twin_gaps = {k: float(max(r["twin"][k] for r in per_run)) for k in per_run[0]["twin"]}

    def agreements(variant):
        col = {k: np.array([r["package"][variant][k] for r in per_run], float)
               for k in ("lambda_min", "gamma_hat", "epsilon_hat")}
        root = np.sqrt(col["lambda_min"])
        return {
            "lambda_min / sharpness": agreement(col["lambda_min"], g["sharpness"]),
            "gamma_hat / coupling": agreement(col["gamma_hat"], g["coupling"]),
            "epsilon_hat / (eps * grad_norm)": agreement(col["epsilon_hat"], g["eps_abs"]),
            "(gamma_hat / sqrt(lambda_min)) / coupling": agreement(col["gamma_hat"] / root, g["coupling"]),
            "(epsilon_hat / sqrt(lambda_min)) / (eps * grad_norm)": agreement(col["epsilon_hat"] / root, g["eps_abs"]),
            "fisher_hessian_direction_overlap_median": float(np.median(
                [r["package"][variant]["fisher_hessian_direction_overlap"] for r in per_run])),
        }

    summaries = {v: summarise(per_run, v, levels, cfg.threshold, finite) for v in VARIANTS}
    out = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "torch_threads": args.threads,
        "loadavg_at_end": os.getloadavg(),
        "package": f"alignment-risk {peer_version}", "torch": torch.__version__, "jax": jax.__version__,
        "dtype": "float64",
        "source": {"out_dir": str(out_dir), "config": str(args.config), "runs": n, "of_runs": len(runs),
                   "model_load_seconds": load_seconds},
        "settings": {
            "model": "benchmarks/torch_twin.py TorchTransformer (float64) with the polished weights",
            "safety_data": f"the {num_prompts} alignment prompts, one batch",
            "safety_loss": {
                "refusal_kl": "the headline (the brief's): L_A per prompt, binary KL(target || p(REFUSE | prompt))",
                "refusal_nll": "variant: -log p(REFUSE | prompt), the refusal label as safety target",
                "bernoulli_fisher": "variant: every prompt twice, refuse / not-refuse labels with loss weights "
                                    "sqrt(2 target), sqrt(2 (1 - target)): its empirical Fisher is the exact "
                                    "Bernoulli Fisher of the refusal decision (= H_A at a calibrated model); "
                                    f"max_samples {2 * num_prompts}",
            },
            "fine_tune": f"the run's base + other fine-tuning sets ({cfg.task_size} + {cfg.task_size} sequences), "
                         "one full batch; loss (1 - a) answer_loss(base) + a answer_loss(other)",
            "fisher": {"top_rank": 1, "others": "package defaults (max_samples 128 = all prompts, "
                       "target_explained_variance 0.9, gradient_collection loop, subspace_method svd, device auto)"},
            "learning_rate": "the run's GD lr (forecast_runs.csv lr)",
            "forecast": {"max_steps": max_steps, "step_size": 1.0, "collapse_loss_threshold": cfg.threshold,
                         "time": "its step n is t = n x lr (its rates are scaled by learning_rate)"},
            "deviation": "step_size = 1, not lr: with learning_rate = lr the package already scales epsilon_hat by "
                         "lr and gamma_hat by lr^2, so step_size = lr too would make t = n x lr^2 (reported as "
                         "step_size_equal_lr_variant)",
            "everything_else": "package defaults (mode full, adaptive curvature refinement on: with one fine-tune "
                               "batch it re-evaluates the same batch)",
        },
        "checks": {
            "twin_max_gaps": twin_gaps,
            "formula_check_max_rel_diff": float(max(r["package"][v]["formula_check_max_rel_diff"]
                                                    for r in per_run for v in VARIANTS)),
            "notes": notes,
        },
        "wall_seconds_per_run_median": {v: float(np.median(w)) for v, w in walls.items()},
        "wall_seconds_per_run_range": {v: [float(min(w)), float(max(w))] for v, w in walls.items()},
        "wall_seconds_script": time.perf_counter() - t_all,
        "summary": {"runs": n, "finite_runs": int(finite.sum()), "threshold": cfg.threshold, "levels": list(levels),
                    "headline": {"safety_loss": PRIMARY, **{k: summaries[PRIMARY][k] for k in
                                                             ("t_fail_ratio_median", "within_2x_fraction",
                                                              "forecast_never_crossed")},
                                 "log10_error_median": summaries[PRIMARY]["log10_error_median"][
                                     f"{cfg.threshold:g}"]},
                    "alignment_risk_package": summaries},
        "step_size_equal_lr_variant": {
            v: {"crossed_threshold_runs": int(sum(r["package"][v]["step_size_equal_lr_variant"]["collapse_step"]
                                                  is not None for r in per_run)),
                "max_estimated_loss": float(max(r["package"][v]["step_size_equal_lr_variant"]["max_estimated_loss"]
                                                for r in per_run))} for v in VARIANTS},
        "agreement_with_geomsim": {
            **{v: agreements(v) for v in VARIANTS},
            "what_differs": (
                "lambda_min is the top eigenvalue of the package's empirical Fisher of the safety loss, "
                "(1/m) sum_i grad l_i grad l_i^T over per-sample losses l_i (units nats^2 per parameter^2); "
                "geomsim's sharpness is the top eigenvalue of the Hessian of L_A (nats per parameter^2). "
                "With l_i the refusal KL, grad l_i = (p_i - target) grad s_i vanishes at the polished model, "
                "where every prompt is calibrated (p_i = target to ~1e-15): the empirical Fisher is round-off. "
                "With -log p(REFUSE) it weighs each prompt by (1 - p_i)^2 = sigma^2 where H_A weighs it by "
                "p_i (1 - p_i) = sigma (1 - sigma). gamma_hat and epsilon_hat are F^(1/2)-weighted: "
                "sqrt(lambda_min) |v . H_F g| and sqrt(lambda_min) |v . g| on the Fisher direction v; geomsim's "
                "coupling and eps * grad_norm are the plain projections |u . H_F g|, |u . g| on the Hessian "
                "direction u. So the package's forecast lambda_min (gamma t^2/2 - eps t)^2 / 2 scales as "
                "lambda_min^2, geomsim's port of it as sharpness."),
        },
        "geomsim_validation": None if geomsim_summary is None else {
            "note": "geomsim's own methods on the same runs (summary.json of --out-dir); its alignment_risk is "
                    "the package's formula fed with geomsim's Hessian quantities",
            "methods": {name: {k: m[k] for k in ("t_fail_ratio_median", "within_2x_fraction", "log10_error_median")}
                        for name, m in geomsim_summary["methods"].items()},
            "alignment_risk_levels": geomsim_summary["methods"].get("alignment_risk", {}).get("levels"),
        },
        "per_run": per_run,
    }
    for v in VARIANTS:
        print(f"\n{v}: level, reached, ratio median, within 2x, log10 err median", file=sys.stderr)
        for key, d in summaries[v]["levels"].items():
            print(f"  {key:>6} {d['reached_runs']:3d} {d['t_fail_ratio_median']} {d['within_2x_fraction']} "
                  f"{d['log10_error_median']}", file=sys.stderr)
        for name, d in out["agreement_with_geomsim"][v].items():
            print(f"  {name}: {d if not isinstance(d, dict) else (d.get('ratio_median'), d.get('spearman'))}",
                  file=sys.stderr)
    print(f"median wall per run {out['wall_seconds_per_run_median']}; twin gaps {twin_gaps}; notes {notes}",
          file=sys.stderr)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(dumps(out, sort_keys=False) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
