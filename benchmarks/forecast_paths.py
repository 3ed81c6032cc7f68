"""Why the local forecasts lose a factor on the testbed transformer, and whether the
linearised network with its true task loss (issue 19, item 1) recovers it.

    python benchmarks/forecast_paths.py [--out runs/paper_repro/forecast] [--seeds 0,1,2,3]
                                        [--json benchmarks/results/forecast_paths.json]

Needs a finished `python -m paper_repro --only forecast` (its models and measured GD curves
in --out; this script recomputes each run's lr with the run's own key, so its paths are at
the same step size, and checks it). For every run of the chosen seeds:

1. Along the *measured* GD path theta_n (recomputed, the same steps): the exact
   `Delta L_A(theta_n)` against the quadratic model `grad L_A.delta + delta^T H_A delta / 2`,
   at the measured crossing of each level: is the alignment side's quadratic model the
   error?
2. Paths from theta0 only, GD at the run's lr in the Krylov space V of `K_64(G, g)` (G the
   Gauss-Newton matrix) and of `K_64(H_F, g)`:
   - `linearised`: the network linearised at theta0 under its *true* answer cross-entropy,
     `L(y) = CE(f(theta0) + J V^T y)` (convex, bounded, saturating as the task is learned),
     the candidate of issue 19;
   and along each path the exact `L_A(theta0 + V^T y)` and its quadratic model, scored by the
   ratio of crossing steps forecast / measured; and the exact task loss along the path
   against the linearised one (where the model stops describing the network).

Prints the medians and within-2x fractions per (path, L_A evaluation, level), writes them
with machine, date and timing to --json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from matfree.decomp import tridiag_sym

jax.config.update("jax_enable_x64", True)

from geomsim.config import build  # noqa: E402
from geomsim.curvature import eigsh, hessian_operator  # noqa: E402
from geomsim.dynamics import log_record_steps  # noqa: E402
from geomsim.io import read_table  # noqa: E402
from geomsim.sweep.progress import Progress  # noqa: E402
from geomsim.tasks import answer_loss_of_logits  # noqa: E402
from geomsim.testbed.streams import Stream  # noqa: E402
from geomsim.testbed.sweep import law, stages  # noqa: E402
from geomsim.testbed.sweep.forecast import (  # noqa: E402
    TestbedForecastConfig,
    forecast_steps,
    mixture_ggn,
    run_index,
)
from geomsim.testbed.sweep.run import prepare_models, select  # noqa: E402
from geomsim.theory.laws import first_crossing  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KRYLOV = 64


def one_run(data, cfg, theta0, target, base, other, mix, key):
    task = law.mixture_task(data, base, other, mix)
    flat0, unravel = ravel_pytree(theta0)

    def align(p):
        return data.align_loss(p, target)

    def logits(flat):
        p = unravel(flat)
        return tuple(data.apply_fn(p, b.tokens[:, :-1]) for b in (base, other))

    def loss_of(outs):
        return (1 - mix) * answer_loss_of_logits(outs[0], base) + mix * answer_loss_of_logits(outs[1], other)

    task_op, align_op = hessian_operator(task, theta0), hessian_operator(align, theta0)
    g, ga = (ravel_pytree(op.gradient())[0] for op in (task_op, align_op))
    lr = cfg.gd_lr_scale / eigsh(1, tol=1e-2, krylov_dim=12, max_matvecs=12)(task_op, key).eigenvalues[0]
    a0 = align(theta0)

    def quad(delta):
        return ga @ delta + 0.5 * delta @ align_op.mv_flat(delta)

    def step(_, p):
        return jax.tree.map(lambda x, y: x - lr * y, p, jax.grad(task)(p))

    def segment(p, count):
        p = jax.lax.fori_loop(0, count, step, p)
        delta = ravel_pytree(p)[0] - flat0
        return p, (align(p) - a0, quad(delta))

    record = log_record_steps(cfg.gd_steps, cfg.gd_records)
    _, measured = jax.lax.scan(segment, theta0, jnp.asarray(np.diff(record, prepend=0)))

    steps = jnp.asarray(forecast_steps(cfg), flat0.dtype)
    total = int(forecast_steps(cfg)[-1])
    f0 = logits(flat0)
    paths = {}
    for name, op in (("ggn", mixture_ggn(data, theta0, base, other, mix)), ("hessian", task_op)):
        basis = tridiag_sym(KRYLOV, reortho="full")(op.mv_flat, g).Q_tall  # (m, d)
        jv = jax.lax.map(lambda v: jax.jvp(logits, (flat0,), (v,))[1], basis)  # m tangents of the logits

        def lin_loss(y, jv=jv):
            return loss_of(tuple(f + jnp.tensordot(y, j, axes=1) for f, j in zip(f0, jv, strict=True)))

        def gd(y, _, lin_loss=lin_loss):
            y = y - lr * jax.grad(lin_loss)(y)
            return y, y

        _, ys = jax.lax.scan(gd, jnp.zeros(KRYLOV, flat0.dtype), None, length=total)
        ys = ys[(steps - 1).astype(int)]

        def evals(y, basis=basis, lin_loss=lin_loss):
            delta = y @ basis
            return align(unravel(flat0 + delta)) - a0, quad(delta), task(unravel(flat0 + delta)), lin_loss(y)

        paths[name] = jax.lax.map(evals, ys)
    return dict(lr=lr, record=jnp.asarray(record, flat0.dtype), measured=measured, steps=steps, paths=paths)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "runs" / "paper_repro" / "forecast"))
    parser.add_argument("--seeds", default="0,1,2,3")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "forecast_paths.json"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    cfg = build(TestbedForecastConfig, ROOT / "experiments" / "forecast.toml")
    models = prepare_models(cfg, out, Progress(5, "models", enabled=False), {}, [])
    data = models.data
    table, curves = read_table(out / "forecast_runs.csv"), read_table(out / "forecast_curves.csv")
    seeds = [int(s) for s in args.seeds.split(",")]
    fn = jax.jit(lambda *a: one_run(data, cfg, *a))
    scores: dict[str, list[float]] = {}
    lr_ratio, along, valid, seconds = [], [], [], []
    for i, (_, lv, mx, sd) in enumerate(run_index(cfg)):
        if sd not in seeds:
            continue
        t0 = time.perf_counter()
        res = jax.tree.map(np.asarray, fn(select(models.polished, lv, sd), jnp.asarray(stages.targets(cfg)[lv]),
                                          select(data.task_train["base"], sd), select(data.task_train["other"], sd),
                                          jnp.asarray(cfg.mix[mx]), data.key(Stream.SWEEP_FORECAST, i)))
        seconds.append(time.perf_counter() - t0)
        lr_ratio.append(float(res["lr"] / table["lr"][i]))
        sel = (curves["run"] == i) & (curves["curve"] == "measured")
        rec, meas = curves["step"][sel], curves["align_increase"][sel]
        exact, quad = res["measured"]
        for level in cfg.levels:
            t_meas = float(first_crossing(rec, meas, level))
            if not np.isfinite(t_meas):
                continue
            k = min(int(np.searchsorted(res["record"], t_meas)), len(res["record"]) - 1)
            along.append({"level": level, "quad_over_exact": float(quad[k] / exact[k])})
            for name, (ex, qd, _, _) in res["paths"].items():
                for which, curve in (("exact", ex), ("quadratic", qd)):
                    t = float(first_crossing(res["steps"], curve, level))
                    scores.setdefault(f"linearised_{name}/{which}_L_A/{level:g}", []).append(t / t_meas)
        for name, (_, _, task_exact, task_lin) in res["paths"].items():
            # the first step where the linearised task loss is off the exact one by half the task's start loss
            off = np.abs(task_exact - task_lin) > 0.5 * task_exact[0]
            valid.append({"path": name, "step": float(res["steps"][np.argmax(off)]) if off.any() else None,
                          "task_exact_end": float(task_exact[-1]), "task_linearised_end": float(task_lin[-1]),
                          "task_start": float(task_exact[0])})
        print(f"run {i} (level {lv}, mix {mx}, seed {sd}): {seconds[-1]:.1f} s", flush=True)

    summary = {}
    for key, r in sorted(scores.items()):
        r = np.asarray(r)
        summary[key] = {"runs": int(r.size), "ratio_median": float(np.median(r)),
                        "within_2x": float(np.mean((r >= 0.5) & (r <= 2))), "late_2x": float(np.mean(r > 2))}
        print(f"{key:40s} n={r.size:3d} forecast/measured median {np.median(r):6.2f} within 2x "
              f"{summary[key]['within_2x']:.0%} late >2x {summary[key]['late_2x']:.0%}")
    q = np.array([a["quad_over_exact"] for a in along])
    print(f"along the measured path, quadratic L_A / exact at the crossings: median {np.median(q):.2f} "
          f"(range {q.min():.2f}-{q.max():.2f}, n={q.size})")
    for name in ("ggn", "hessian"):
        steps = [v["step"] for v in valid if v["path"] == name]
        off = [s for s in steps if s is not None]
        print(f"linearised {name}: task loss off by > half its start in {len(off)}/{len(steps)} runs, median step "
              f"{np.median(off) if off else float('nan'):.0f}")
    result = {
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, {jax.devices()[0].device_kind}",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/forecast_paths.py --seeds " + args.seeds,
        "lr_ratio_range": [min(lr_ratio), max(lr_ratio)],
        "seconds_per_run_median": float(np.median(seconds)),
        "scores": summary,
        "quadratic_L_A_over_exact_at_crossings": {"median": float(np.median(q)), "min": float(q.min()),
                                                  "max": float(q.max()), "n": int(q.size)},
        "validity": valid,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", args.json)


if __name__ == "__main__":
    main()
