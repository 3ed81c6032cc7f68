"""Benchmark of `python -m geomsim.diagnose` against the `alignment-risk` package (issue 10).

    python benchmarks/bench_diagnose.py [--rank 4] [--repeats 3] [--json benchmarks/results/diagnose.json]
                                        [--skip-peer] [--stages] [--warm-cache] [--dtype float32]

The problem: the ~110k-parameter benchmark transformer of bench_curvature.py
(vocab 64, 32 tokens, width 64, depth 2) after 200 Adam steps on Markov chain A
(chain_seed 1234).  Alignment loss L_A = next-token cross-entropy on a fixed
batch of 256 sequences of chain A (what the model was trained on); task loss
L_F = the same on a fixed batch of 256 sequences of a different chain
(chain_seed 4321): fine-tuning on a benign new task.  float32 parameters for
both tools (geomsim's CLI turns on jax_enable_x64: the model, its derivatives and
the AIC stay float32, the forecast times are float64; `--dtype float64` runs
geomsim's model in float64).

1. geomsim: `python -m geomsim.diagnose --model bench_diagnose:transformer_landscape
   --rank R --threshold 0.1` in a fresh process with the persistent compilation
   cache off (GEOMSIM_NO_JAX_CACHE=1), so compilation counts; the model is trained
   once beforehand and the factory loads its weights and batches from a .npz
   (training is not timed).  Wall time of the whole process and the report's
   wall_seconds, median of --repeats runs.
2. alignment-risk (PyTorch) on the twin of the same transformer (benchmarks/torch_twin.py)
   with the same weights and the same two batches, at equal rank R:
   `AlignmentRiskPipeline(PipelineConfig(...)).run(...)`, wall time median of
   --repeats runs (torch imported and warm; its run has no compilation), its
   lambda_min, gamma_hat, epsilon_hat and collapse time; and a check that
   `geomsim.theory.forecast.alignment_risk` fed with its measured quantities
   reproduces its `forecast.estimated_loss`.
3. `--warm-cache`: one more geomsim run after a first one filled a fresh persistent
   compilation cache (the CLI's default when run twice).
4. `--stages`: where geomsim's time goes (compile + run of each piece of the
   diagnosis, each jitted on its own in this process).

The peer needs torch and alignment-risk.  alignment-risk (every release up to
1.14.1) declares torch<2.7 and matplotlib<3.11, which pip cannot resolve
together with the bench extra's torch==2.13.0, so it is installed without its
dependencies (it imports and runs with torch 2.13.0 and matplotlib 3.11):
    pip install torch==2.13.0
    pip install --no-deps alignment-risk==1.14.1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from bench_curvature import BATCH, CONFIG, markov_tokens, trained_problem  # noqa: E402

from geomsim.landscapes import FunctionLandscape  # noqa: E402
from geomsim.models import Transformer, as_functional, cross_entropy  # noqa: E402

PROBLEM_ENV = "GEOMSIM_BENCH_DIAGNOSE_PROBLEM"  # .npz written by `save_problem`
DTYPE_ENV = "GEOMSIM_BENCH_DIAGNOSE_DTYPE"  # float32 (default) | float64
TRAIN_STEPS = 200
ALIGN_CHAIN = 1234  # the chain the model was trained on (markov_tokens' default)
TASK_CHAIN = 4321  # the benign new task
THRESHOLD = 0.1  # nats
# The peer forecasts per step n of gradient descent with its learning_rate (its default, 1e-4): its
# drift is gamma_hat (n lr)^2 / 2 - epsilon_hat (n lr), so t = n x lr is geomsim's flow time, on a grid of lr.
PEER_LR = 1e-4
PEER_MAX_STEPS = 100_000  # its forecast horizon: t up to PEER_MAX_STEPS x PEER_LR = 10


# --- the problem, shared by both tools ---------------------------------------------------------------


def save_problem(path: str | Path, seed: int = 0) -> dict:
    """Train the model (TRAIN_STEPS Adam steps, chain A) and write its weights and both batches to `path`."""
    _, _, params, (xa, ya) = trained_problem(TRAIN_STEPS, BATCH, seed)
    task = markov_tokens(jax.random.key(seed + 3), BATCH, CONFIG.seq_len + 1, CONFIG.vocab_size,
                         chain_seed=TASK_CHAIN)
    leaves = jax.tree.leaves(params)
    arrays = {f"p{i}": np.asarray(leaf) for i, leaf in enumerate(leaves)}
    np.savez(path, **arrays, align_x=np.asarray(xa, np.int32), align_y=np.asarray(ya, np.int32),
             task_x=np.asarray(task[:, :-1], np.int32), task_y=np.asarray(task[:, 1:], np.int32))
    return {"train_steps": TRAIN_STEPS, "seed": seed, "align_chain": ALIGN_CHAIN, "task_chain": TASK_CHAIN,
            "batch": BATCH, "num_params": int(sum(leaf.size for leaf in leaves))}


def load_problem(path: str | Path, dtype=jnp.float32):
    """(eqx model, apply_fn, params, (xa, ya), (xf, yf)) from a `save_problem` file."""
    data = np.load(path)
    model = Transformer(CONFIG, key=jax.random.key(0))  # skeleton: every weight is replaced below
    apply_fn, skeleton = as_functional(model)
    leaves, treedef = jax.tree.flatten(skeleton)
    params = jax.tree.unflatten(treedef, [jnp.asarray(data[f"p{i}"], dtype) for i in range(len(leaves))])
    model = eqx.combine(params, eqx.partition(model, eqx.is_inexact_array)[1])
    batches = tuple((jnp.asarray(data[f"{n}_x"]), jnp.asarray(data[f"{n}_y"])) for n in ("align", "task"))
    return model, apply_fn, params, *batches


def transformer_landscape() -> FunctionLandscape:
    """Factory for `python -m geomsim.diagnose --model bench_diagnose:transformer_landscape`
    (reads the problem saved at $GEOMSIM_BENCH_DIAGNOSE_PROBLEM)."""
    path = os.environ.get(PROBLEM_ENV)
    if not path:
        raise RuntimeError(f"{PROBLEM_ENV}: set it to a .npz written by bench_diagnose.save_problem")
    _, apply_fn, params, (xa, ya), (xf, yf) = load_problem(path, jnp.dtype(os.environ.get(DTYPE_ENV, "float32")))
    return FunctionLandscape(theta0=params, align_fn=lambda p: cross_entropy(apply_fn(p, xa), ya),
                             task_fn=lambda p: cross_entropy(apply_fn(p, xf), yf))


# --- 1. geomsim --------------------------------------------------------------------------------------


def run_geomsim(problem: Path, rank: int, repeats: int, dtype: str, warm_cache: bool = False) -> dict:
    env = {**os.environ, PROBLEM_ENV: str(problem), DTYPE_ENV: dtype, "GEOMSIM_NO_JAX_CACHE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH", "")]))}
    command = [sys.executable, "-m", "geomsim.diagnose", "--model", "bench_diagnose:transformer_landscape",
               "--rank", str(rank), "--threshold", str(THRESHOLD), "--quiet"]
    walls, cpu, inner, report = [], [], [], None
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as out:
            c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            subprocess.run([*command, "--out", out], check=True, stdout=subprocess.DEVNULL, env=env,
                           cwd=HERE.parent)
            walls.append(time.perf_counter() - t0)
            c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu.append({"user": c1.ru_utime - c0.ru_utime, "sys": c1.ru_stime - c0.ru_stime})
            with open(Path(out) / "report.json") as handle:
                report = json.load(handle)
            inner.append(report["wall_seconds"])
    warm = None
    if warm_cache:  # the CLI's default: a second run of the same command reuses the compiled programs
        with tempfile.TemporaryDirectory() as cache:
            warm_env = {**env, "GEOMSIM_NO_JAX_CACHE": "0", "GEOMSIM_JAX_CACHE": cache}
            for _ in range(2):
                with tempfile.TemporaryDirectory() as out:
                    t0 = time.perf_counter()
                    subprocess.run([*command, "--out", out], check=True, stdout=subprocess.DEVNULL, env=warm_env,
                                   cwd=HERE.parent)
                    warm = time.perf_counter() - t0
    aic = report["aic"]
    return {
        "command": " ".join(["python -m geomsim.diagnose", *command[3:]]),
        "dtype": dtype, "rank": rank, "compilation_cache": "off (GEOMSIM_NO_JAX_CACHE=1)",
        "seconds": statistics.median(walls), "seconds_runs": walls,
        "cpu_seconds_runs": cpu,  # user + sys of the subprocess (less sensitive to other jobs than wall time)
        "report_wall_seconds": statistics.median(inner), "report_wall_seconds_runs": inner,
        "seconds_warm_cache": warm,  # second run with the persistent compilation cache on (--warm-cache)
        "sharpness": aic["sharpness"], "mu": aic["mu"], "eigenvalues": aic["eigenvalues"],
        "eps": aic["eps"], "grad_norm": aic["grad_norm"],
        "eps_abs": aic["eps"] * aic["grad_norm"],  # ||P_S g||, what its alignment_risk forecast is given
        "coupling": aic["coupling"], "coupling_fisher": aic["coupling_fisher"],
        "task_spectral_norm": aic["task_spectral_norm"], "taylor": aic["taylor"],
        "num_matvecs": aic["num_matvecs"], "converged": aic["converged"],
        "horizon": report["horizon"], "krylov_depth": report["krylov_depth"],
        "threshold": report["threshold"],
        "t_fail": report["t_fail"],  # t = steps x lr; null: not within the horizon
    }


# --- 2. alignment-risk -------------------------------------------------------------------------------


def run_peer(problem: Path, rank: int, repeats: int) -> dict:
    import torch
    from alignment_risk import __version__ as peer_version
    from alignment_risk.fisher import FisherConfig
    from alignment_risk.forecast import ForecastConfig
    from alignment_risk.pipeline import AlignmentRiskPipeline, PipelineConfig
    from torch_twin import TorchTransformer, load_equinox_weights

    from geomsim.theory.forecast import alignment_risk

    torch.set_num_threads(os.cpu_count() or 2)
    model, apply_fn, params, (xa, ya), (xf, yf) = load_problem(problem)
    crit = torch.nn.CrossEntropyLoss()

    def to_torch(x, y):
        return torch.from_numpy(np.array(x)).long(), torch.from_numpy(np.array(y)).long()

    safety, task = [to_torch(xa, ya)], [to_torch(xf, yf)]  # one batch of 256 sequences each

    def loss_fn(net, batch):
        return crit(net(batch[0]), batch[1].reshape(-1))

    twin = load_equinox_weights(TorchTransformer(CONFIG), model)
    with torch.no_grad():
        gaps = [abs(float(loss_fn(twin, b[0])) - float(cross_entropy(apply_fn(params, x), y)))
                for b, (x, y) in ((safety, (xa, ya)), (task, (xf, yf)))]
    config = PipelineConfig(
        # Equal rank: exactly R Fisher directions (its default keeps up to 32 but stops at 90% explained
        # variance); all 256 sequences (its default samples at most 128 per-sample gradients).
        fisher=FisherConfig(top_rank=rank, target_explained_variance=None, max_samples=BATCH, device="cpu"),
        learning_rate=PEER_LR,  # forecast step n is t = n x PEER_LR, geomsim's time
        forecast=ForecastConfig(max_steps=PEER_MAX_STEPS, step_size=1.0, collapse_loss_threshold=THRESHOLD),
    )
    config.curvature.device = "cpu"
    walls = []
    for _ in range(repeats):
        twin = load_equinox_weights(TorchTransformer(CONFIG), model)
        t0 = time.perf_counter()
        report = AlignmentRiskPipeline(config).run(twin, safety, loss_fn, task, loss_fn)
        walls.append(time.perf_counter() - t0)
    fisher = report.subspace.fisher_eigenvalues.double().numpy()
    lam_min = AlignmentRiskPipeline(config)._stable_lambda_min(report.subspace)  # what its forecast used
    cur, fc = report.curvature, report.forecast
    # geomsim's port of its formula, fed with its measured quantities, on its time grid (t = steps x lr).
    with jax.enable_x64(True):
        ours = np.asarray(alignment_risk(lam_min, cur.gamma_hat, cur.epsilon_hat,
                                         jnp.asarray(fc.steps * PEER_LR, jnp.float64)))
    theirs = np.asarray(fc.estimated_loss, np.float64)
    pos = theirs > 0
    rel = float(np.max(np.abs(ours[pos] - theirs[pos]) / theirs[pos])) if pos.any() else 0.0
    return {
        "package": f"alignment-risk {peer_version}", "torch": torch.__version__, "dtype": "float32",
        "rank": int(fisher.size), "seconds": statistics.median(walls), "seconds_runs": walls,
        "twin_loss_gap": {"align": gaps[0], "task": gaps[1]},
        "fisher_eigenvalues": fisher.tolist(), "lambda_min": lam_min,
        "gamma_hat": cur.gamma_hat, "epsilon_hat": cur.epsilon_hat,
        "acceleration_norm": cur.acceleration_norm, "projected_acceleration_norm": cur.projected_acceleration_norm,
        "initial_overlap": report.initial_risk.projected_ratio,
        "learning_rate": PEER_LR, "max_steps": PEER_MAX_STEPS, "threshold": THRESHOLD,
        "collapse_step": fc.collapse_step, "collapse_time": fc.collapse_time,
        "t_fail": None if fc.collapse_step is None else fc.collapse_step * PEER_LR,  # null: never
        "warning": report.warning,
        "formula_check": {"max_rel_diff": rel, "max_abs_diff": float(np.max(np.abs(ours - theirs))),
                          "points_compared": int(pos.sum())},
    }


# --- 3. stage breakdown ------------------------------------------------------------------------------


def stage_breakdown(problem: Path, rank: int, dtype: str) -> dict:
    """Compile and run seconds of each piece of `geomsim.diagnose.run.diagnose`, each jitted alone
    (fresh programs in this process; x64 on as in the CLI)."""
    from geomsim.landscapes.base import flatten_displacement
    from geomsim.theory.aic import landscape_aic
    from geomsim.theory.forecast import landscape_local_models

    jax.config.update("jax_enable_x64", True)
    os.environ[PROBLEM_ENV], os.environ[DTYPE_ENV] = str(problem), dtype
    out = {"loadavg_at_start": os.getloadavg()}
    t0 = time.perf_counter()
    land = transformer_landscape()
    out["load_factory"] = time.perf_counter() - t0
    dim = int(flatten_displacement(land)[0].shape[0])
    key = jax.random.key(0)
    n = min(dim, max(2 * rank + 1, 8))
    base = {"key": key, "threshold": THRESHOLD, "num_eigs": n}

    def piece(name, fn):
        c0, t0 = time.process_time(), time.perf_counter()
        compiled = jax.jit(fn).lower(land).compile()
        c1, t1 = time.process_time(), time.perf_counter()
        result = jax.block_until_ready(compiled(land))
        c2, t2 = time.process_time(), time.perf_counter()
        out[name] = {"compile": t1 - t0, "run": t2 - t1, "compile_cpu": c1 - c0, "run_cpu": c2 - c1}
        print(f"  {name}: compile {t1 - t0:.1f} s ({c1 - c0:.1f} s CPU), run {t2 - t1:.1f} s ({c2 - c1:.1f} s CPU)",
              file=sys.stderr, flush=True)
        return result

    full = piece("aic (as diagnose runs it)", lambda la: landscape_aic(la, rank, **base))
    out["aic_num_matvecs"] = int(full.num_matvecs)
    piece("aic: Lanczos + gradients only (laws, trace, window off)",
          lambda la: landscape_aic(la, rank, laws=False, trace_samples=0, window=False, **base))
    piece("aic: + window (||H_F|| Lanczos x2)",
          lambda la: landscape_aic(la, rank, laws=False, trace_samples=0, **base))
    piece("aic: + tail-mass trace", lambda la: landscape_aic(la, rank, laws=False, window=False, **base))
    piece("aic: + Taylor laws without c3",
          lambda la: landscape_aic(la, rank, trace_samples=0, window=False, third_order=False, **base))
    piece("aic: + Taylor laws with c3", lambda la: landscape_aic(la, rank, trace_samples=0, window=False, **base))
    piece("local models (Krylov 64)", lambda la: landscape_local_models(la, min(64, dim)))
    from geomsim.diagnose.run import write_figures

    report = {"aic": full.to_dict(), "threshold": THRESHOLD,
              "forecast": {"t": np.geomspace(1e-4, 1.0, 64).tolist(), "align_increase": {"taylor": [1.0] * 64}}}
    with tempfile.TemporaryDirectory() as figs:
        t0 = time.perf_counter()
        write_figures(report, np.asarray(full.eigenvalues), Path(figs))
        seconds = time.perf_counter() - t0
        out["figures (matplotlib import + 2 PNG + 2 PDF)"] = {"compile": 0.0, "run": seconds, "compile_cpu": 0.0,
                                                              "run_cpu": seconds}
    return out


# --- main --------------------------------------------------------------------------------------------


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "never"
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=str(HERE / "results" / "diagnose.json"))
    parser.add_argument("--skip-peer", action="store_true", help="geomsim only (no torch / alignment-risk)")
    parser.add_argument("--stages", action="store_true", help="also time each piece of the diagnosis")
    parser.add_argument("--warm-cache", action="store_true",
                        help="also time a second geomsim run with the persistent compilation cache on")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"),
                        help="geomsim's parameter dtype (the peer always runs float32)")
    args = parser.parse_args()
    load = os.getloadavg()
    out = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores", "loadavg_at_start": load,
           "jax": jax.__version__, "repeats": args.repeats}
    print(f"machine: {out['machine']}; load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
          file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        problem = Path(tmp) / "problem.npz"
        t0 = time.perf_counter()
        out["problem"] = save_problem(problem)
        out["problem"]["train_seconds_not_counted"] = time.perf_counter() - t0
        print(f"trained and saved the problem in {out['problem']['train_seconds_not_counted']:.0f} s "
              "(not counted)", file=sys.stderr)
        ours = out["geomsim"] = run_geomsim(problem, args.rank, args.repeats, args.dtype, args.warm_cache)
        print(f"geomsim diagnose: {ours['seconds']:.1f} s", file=sys.stderr)
        peer = None
        if not args.skip_peer:
            peer = out["alignment_risk"] = run_peer(problem, args.rank, args.repeats)
            print(f"alignment-risk: {peer['seconds']:.1f} s", file=sys.stderr)
        if args.stages:
            out["stages"] = stage_breakdown(problem, args.rank, args.dtype)

    print(f"\nrank {args.rank}, batch {BATCH} x {CONFIG.seq_len} tokens, {out['problem']['num_params']:,} parameters, "
          f"threshold {THRESHOLD} nats, t = steps x lr; load average at start {load[0]:.2f}\n")
    print("| | geomsim diagnose | alignment-risk |")
    print("| --- | --- | --- |")
    p = peer or {}
    runs = ", ".join(f"{w:.1f}" for w in ours["seconds_runs"])
    peer_runs = ", ".join(f"{w:.1f}" for w in p.get("seconds_runs", []))
    rows = [
        ("wall time (median; runs)", f"{ours['seconds']:.1f} s ({runs}); fresh process incl. compile, "
         f"report says {ours['report_wall_seconds']:.1f} s"
         + (f"; {ours['seconds_warm_cache']:.1f} s with a warm compilation cache" if ours["seconds_warm_cache"] else ""),
         f"{p['seconds']:.1f} s ({peer_runs}); in process, torch warm" if peer else "-"),
        ("dtype", ours["dtype"], p.get("dtype", "-")),
        ("subspace S", f"top-{ours['rank']} Hessian of L_A (Lanczos)",
         f"top-{p['rank']} empirical Fisher of L_A (SVD of {BATCH} per-sequence gradients)" if peer else "-"),
        ("sharpness / lambda_min", _fmt(ours["sharpness"]), _fmt(p.get("lambda_min"))),
        ("gamma", f"{_fmt(ours['coupling'])} = ||P_S H_F g|| ({_fmt(ours['coupling_fisher'])} H-weighted)",
         f"{_fmt(p['gamma_hat'])} = ||F^1/2 P_S H_F g||" if peer else "-"),
        ("eps", f"{_fmt(ours['eps'])} = ||P_S g||/||g|| ({_fmt(ours['eps_abs'])} = ||P_S g||)",
         f"{_fmt(p['epsilon_hat'])} = ||F^1/2 P_S g||" if peer else "-"),
        ("t_fail (0.1 nats)", ", ".join(f"{k} {_fmt(v)}" for k, v in ours["t_fail"].items()),
         f"{_fmt(p['t_fail'])} (step {p['collapse_step']} x lr {PEER_LR})" if peer else "-"),
    ]
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if peer:
        fc = peer["formula_check"]
        print(f"\ngeomsim.theory.forecast.alignment_risk on the package's (lambda_min, gamma_hat, epsilon_hat): "
              f"max rel. diff {fc['max_rel_diff']:.1e} over {fc['points_compared']} points of its "
              f"estimated_loss; twin loss gap {peer['twin_loss_gap']}")
    if "stages" in out:
        print(f"\nstages, each a separate program (load average at start {out['stages']['loadavg_at_start'][0]:.2f}); "
              "each 'aic: +' row is the Lanczos row plus one piece")
        print("| stage (jitted alone) | compile s (CPU s) | run s (CPU s) |\n| --- | --- | --- |")
        for name, v in out["stages"].items():
            if isinstance(v, dict):
                print(f"| {name} | {v['compile']:.1f} ({v['compile_cpu']:.1f}) | {v['run']:.1f} ({v['run_cpu']:.1f}) |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as handle:
            json.dump(out, handle, indent=1, allow_nan=False)
        print(f"\nwrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
