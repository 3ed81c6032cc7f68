"""Defenses on the transformer: the sweep's realistic Adam fine-tune, once per defense,
from the same polished models on the same fresh batches (`python -m geomsim.testbed defenses`).

Defenses (each a `Finetune` for `law.adam_run`; projections act on Adam's update,
`optax.chain(adam, projection)`, so the applied step has no component in the span):

    none                  Adam on the full parameters
    static_projection     project off S0 (top-`rank` H_A eigenvectors at theta0, the sweep's spectrum)
    tracked_projection    project off the top-`rank` H_A eigenvectors re-solved every K steps
                          (warm-started Lanczos, `tracked_tol`, `tracked_matvecs` products at most)
    curvature_projection  project off S0 + the top-`defense_growth` directions of D^3 L_A[u]
                          (u: the first projected task descent direction), measured once at theta0
    replay                add `replay_fraction` x L_A on fresh harmful prompts (refused at the
                          calibrated target) to every batch loss
    lora                  Adam on rank-`lora_rank` adapters of every block matrix only

Outputs (`<out>`): `defenses.csv` (tidy: defense, point, step, Delta L_A, S-part, harm
rate, task accuracy), `defense_points.csv` (per defense and point: at the accuracy
target and at the fixed step), `summary.json` (figures/manifest.json entry
`testbed_defenses`: per defense medians and the overhead vs `none`), figures.
`defense_forecast.csv` and `summary.json`'s `forecast_ranking`: the diagnosis's forecast of
each defense it models for Adam (`geomsim.diagnose.defenses`: the flow-limit model under each
projection, on each point's polished model; not replay, `NOT_FORECAST_ADAM`) at the fixed
step, against the measured `Delta L_A` there: the rank correlation over the defenses per
point and how often the forecast names the measured best.
Each defense's results and measured seconds are kept in `<out>/cache/defense_<name>` under
its stage key (`DEFENSE_FIELDS` plus its own `REGISTRY` settings, chained to the models'
key): a rerun into the same folder loads the finished defenses and runs only the rest.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from geomsim.config import ConfigError, at_least, each, in_range, one_of, option, positive, stage_key
from geomsim.curvature import hessian_operator
from geomsim.defenses import curvature_projection, static_projection, tracked_projection
from geomsim.diagnose.defenses import Settings, defended_models, forecastable
from geomsim.io import Table
from geomsim.landscapes import FunctionLandscape
from geomsim.models.lora import lora_init, lora_merge
from geomsim.sweep.progress import Progress
from geomsim.tasks import PRETRAIN_TASKS, concat, make_batch, refusal_kl
from geomsim.testbed.models import MODELS
from geomsim.testbed.streams import RunFold
from geomsim.testbed.summary import median, spearman
from geomsim.testbed.sweep import law
from geomsim.testbed.sweep.cache import cached_arrays
from geomsim.testbed.sweep.config import TestbedSweepConfig
from geomsim.testbed.sweep.run import (
    ADAM_FIELDS,
    adam_inputs,
    begin_run,
    point_index,
    prepare_models,
    select,
    write_report,
)
from geomsim.testbed.sweep.summary import adam_points
from geomsim.theory.forecast import adam_sign
from geomsim.watchdog import watched


class Point(NamedTuple):
    """What a defense of one (level, mix, seed) point is built from: the sweep's S0 rows,
    the refusal target, the fine-tuning sets and mixture, and the defense's key."""

    cfg: TestbedDefenseConfig
    data: Any
    rows: Any
    target: Any
    base: Any
    other: Any
    mix: Any
    key: Any


def _align_operator(point: Point):
    """`params -> H_A` operator; a plain closure (a bound method would carry the point's
    arrays into the projections' static fields)."""
    data, target = point.data, point.target

    def operator_at(params):
        return hessian_operator(lambda p: data.align_loss(p, target), params)

    return operator_at


def _unchanged(z):
    return z


def _after_adam(point: Point, theta0, projection) -> law.Finetune:
    """Adam's update, then `projection` (the applied step has no component in its span)."""
    opt = optax.chain(optax.adam(point.cfg.adam_lr), projection)
    return law.Finetune(opt, jax.tree.map(jnp.zeros_like, theta0), opt.init(theta0), _unchanged)


def _none(point: Point, theta0) -> law.Finetune:
    return law.plain_finetune(point.cfg, theta0)


def _static(point: Point, theta0) -> law.Finetune:
    return _after_adam(point, theta0, static_projection(point.rows))


def _tracked(point: Point, theta0) -> law.Finetune:
    cfg = point.cfg
    krylov = min(max(2 * cfg.rank + 1, 10), cfg.tracked_matvecs)
    return _after_adam(point, theta0, tracked_projection(_align_operator(point), cfg.rank, cfg.defense_every, point.key,
                                                         tol=cfg.tracked_tol, krylov_dim=krylov,
                                                         max_matvecs=cfg.tracked_matvecs))


def _curvature(point: Point, theta0) -> law.Finetune:
    cfg = point.cfg
    task_gradient = jax.grad(law.mixture_task(point.data, point.base, point.other, point.mix))(theta0)
    krylov = min(max(2 * cfg.defense_growth + 1, 10), cfg.tracked_matvecs)
    projection, _, _ = curvature_projection(_align_operator(point), theta0, task_gradient, point.rows,
                                            cfg.defense_growth, point.key, tol=cfg.tracked_tol, krylov_dim=krylov,
                                            max_matvecs=cfg.tracked_matvecs)
    return _after_adam(point, theta0, projection)


def _replay(point: Point, theta0) -> law.Finetune:
    cfg, data = point.cfg, point.data
    harm_tasks = [t for t in PRETRAIN_TASKS if t != "marker_echo"]
    per = -(-cfg.replay_batch // len(harm_tasks))

    def replay(p, k):
        prompts = concat([make_batch(data.lang, t, jax.random.fold_in(k, i), per, harmful=True)
                          for i, t in enumerate(harm_tasks)]).tokens[:, : data.lang.answer_start]
        return cfg.replay_fraction * refusal_kl(data.apply_fn, p, prompts, point.target)

    adam = optax.adam(cfg.adam_lr)
    return law.Finetune(adam, jax.tree.map(jnp.zeros_like, theta0), adam.init(theta0), _unchanged, replay)


def _lora(point: Point, theta0) -> law.Finetune:
    targets = MODELS[point.cfg.model].lora_targets
    adapter = lora_init(theta0, point.cfg.lora_rank, point.key, targets)
    adam = optax.adam(point.cfg.adam_lr)
    return law.Finetune(adam, adapter, adam.init(adapter),
                        lambda a: jax.tree.map(jnp.subtract, lora_merge(theta0, a, targets), theta0))


class TestbedDefense(NamedTuple):
    """A defense of the testbed: `build(point, theta0_float32) -> Finetune` for `law.adam_run`,
    and the config fields it reads beyond the Adam arm's (in its results' stage key)."""

    build: Callable[[Point, Any], law.Finetune]
    own_fields: tuple[str, ...] = ()


# One entry per defense (the module docstring says what each does).
REGISTRY = {
    "none": TestbedDefense(_none),
    "static_projection": TestbedDefense(_static),
    "tracked_projection": TestbedDefense(_tracked, ("defense_every", "tracked_tol", "tracked_matvecs")),
    "curvature_projection": TestbedDefense(_curvature, ("defense_growth", "tracked_tol", "tracked_matvecs")),
    "replay": TestbedDefense(_replay, ("replay_fraction", "replay_batch")),
    "lora": TestbedDefense(_lora, ("lora_rank",)),
}


TESTBED_DEFENSES = tuple(REGISTRY)
# What every defense's runs depend on beyond the models and spectra (the Adam arm's inputs; not
# its chunking); with each defense's own settings (`REGISTRY`) and `Models.key`, the cached
# results' keys.
DEFENSE_FIELDS = tuple(f for f in ADAM_FIELDS if f != "chunk")


@dataclass(frozen=True)
class TestbedDefenseConfig(TestbedSweepConfig):
    """The sweep's settings (a smaller default grid) plus the defenses' own."""

    refusal_sigma: tuple[float, ...] = option(
        (0.03,), help="sharpness knob: target non-refusal probability per level, each in (0, 0.5)",
        check=each(in_range(0, 0.5, open_lo=True, open_hi=True)))
    mix: tuple[float, ...] = option(
        (0.03, 0.3, 1.0), help="coupling knob: weight a of task_other, each in [0, 1]", check=each(in_range(0, 1)))
    defenses: tuple[str, ...] = option(
        TESTBED_DEFENSES, check=each(one_of(*TESTBED_DEFENSES)),
        help=f"defenses to run, a comma list of {', '.join(TESTBED_DEFENSES)}", shown=",".join(TESTBED_DEFENSES))
    defense_every: int = option(20, help="tracked_projection: re-solve S every K Adam steps (>= 1)", check=at_least(1))
    tracked_tol: float = option(1e-2, help="tracked_projection: relative residual of each re-solve (> 0)",
                                check=positive)
    tracked_matvecs: int = option(40, help="tracked_projection: H_A products per re-solve at most (>= 2)",
                                  check=at_least(2))
    defense_growth: int = option(1, help="curvature_projection: growth directions added to S0 (>= 1)",
                                 check=at_least(1))
    replay_fraction: float = option(0.1, help="replay: weight of L_A on fresh harmful prompts in each batch loss, "
                                    "in (0, 1)", check=in_range(0, 1, open_lo=True, open_hi=True))
    replay_batch: int = option(8, help="replay: fresh harmful prompts per step (>= 1)", check=at_least(1))
    lora_rank: int = option(2, help="lora: adapter rank on every block matrix (>= 1)", check=at_least(1))

    def check(self) -> None:
        super().check()
        if "none" not in self.defenses:
            raise ConfigError("defenses: must include none (the reference for overheads and damage)")


def run_testbed_defenses(config: TestbedDefenseConfig, out_dir: str | Path, *, progress: bool = True,
                         plots: bool = True) -> dict[str, Any]:
    """Every defense on every (level, mix, seed) point; returns the summary (also `<out>/summary.json`)."""
    t_start, out_dir = begin_run(out_dir, "the defenses")
    cfg = config
    bar = Progress(4 + len(cfg.defenses) + 1, "testbed defenses", enabled=progress)
    timings: dict[str, float] = {}
    reused: list[str] = []
    models = prepare_models(cfg, out_dir, bar, timings, reused)
    data = models.data
    points = point_index(cfg)
    # The sweep's inputs and Adam key stream: every defense sees the batches the sweep's Adam arm saw.
    inputs = adam_inputs(cfg, models, points)
    leaves, treedef = jax.tree.flatten(inputs)
    results, seconds = {}, {}
    for name in cfg.defenses:

        def compute(name=name):
            def one(kw):
                point = Point(cfg, data, kw["basis"].astype(jnp.float32), kw["target"], kw["base"], kw["other"],
                              kw["mix"], jax.random.fold_in(kw["key"], RunFold.DEFENSE))
                return law.adam_run(data, **kw, finetune=lambda theta0: REGISTRY[name].build(point, theta0))

            # Compiled ahead of the timing, on the flat leaves (the pytree of `Compiled`'s
            # argument info cannot be rebuilt into typed modules).
            compiled = jax.jit(lambda flat: jax.vmap(one)(jax.tree.unflatten(treedef, flat))).lower(leaves).compile()
            t0 = time.perf_counter()
            out = jax.tree.map(np.asarray, watched(f"testbed defense {name}", compiled, leaves))
            return {**out, "seconds": np.asarray(time.perf_counter() - t0)}  # execution only: a user's overhead

        # A rerun (--resume after a crash, a new figure) loads each finished defense, its
        # measured seconds too, instead of tracing and running it again (6-10 s each here).
        arrays, hit = cached_arrays(out_dir, f"defense_{name}",
                                    stage_key(cfg, (*DEFENSE_FIELDS, *REGISTRY[name].own_fields), models.key), compute)
        seconds[name] = float(arrays.pop("seconds"))
        results[name] = arrays
        if hit:
            reused.append(f"defense_{name}")
        bar.advance(1, f"{name} (cache)" if hit else name)
    tables = _tables(cfg, points, results)
    key = stage_key(cfg, (*DEFENSE_FIELDS, "defenses", "defense_growth"), models.key)
    forecast, hit = cached_arrays(out_dir, "forecast_defenses", key, lambda: _forecast(cfg, data, inputs))
    if hit:
        reused.append("forecast_defenses")
    tables["defense_forecast"] = _forecast_table(tables["defense_points"], forecast)
    summary = summarise_defenses(cfg, tables, seconds)
    parameters = int(ravel_pytree(select(models.polished, 0, 0))[0].shape[0])
    from geomsim.plotting.testbed_defense_figures import defense_figures

    return write_report(out_dir, cfg, tables, summary, defense_figures if plots else None,
                        timings=timings, reused=reused, parameters=parameters, t_start=t_start, bar=bar)


def _forecast(cfg: TestbedDefenseConfig, data, inputs) -> dict[str, np.ndarray]:
    """`Delta L_A` at the fixed step forecast for each defense the diagnosis models, per
    point: full-batch Adam's flow-limit model (v = g^2 of the run's task loss on its fixed
    sets) on the polished model (replay is not forecast for Adam: `NOT_FORECAST_ADAM`)."""
    names = tuple(n for n in cfg.defenses if n == "none" or n in forecastable("adam")[0])
    settings = Settings(names, cfg.defense_growth, 1, "adam", "hessian", "hessian", False)
    t = cfg.adam_steps * cfg.adam_lr

    def one(kw):
        land = FunctionLandscape(theta0=kw["theta0"], align_fn=lambda p: data.align_loss(p, kw["target"]),
                                 task_fn=law.mixture_task(data, kw["base"], kw["other"], kw["mix"]))
        models = defended_models(settings, land, kw["basis"], jax.random.fold_in(kw["key"], RunFold.DEFENSE),
                                 0.0, 1e-8, 0.0)  # optax.adam's eps
        return {name: adam_sign(m, jnp.asarray([t], m.slope.dtype))[0] for name, m in models.items()}

    return jax.tree.map(np.asarray, watched("testbed defense forecasts", jax.jit(jax.vmap(one)), inputs))


def _forecast_table(points_table: Table, forecast: dict[str, np.ndarray]) -> Table:
    """Per forecast defense and point: forecast and measured `Delta L_A` at the fixed step."""
    rows = {"defense": [], "point": [], "forecast_align_at_fixed": [], "align_increase_at_fixed": []}
    for name, values in forecast.items():
        mask = points_table["defense"] == name
        measured = np.asarray(points_table["align_increase_at_fixed"])[mask][np.argsort(points_table["point"][mask])]
        rows["defense"] += [name] * len(values)
        rows["point"] += list(range(len(values)))
        rows["forecast_align_at_fixed"] += list(np.asarray(values, dtype=np.float64))
        rows["align_increase_at_fixed"] += list(measured)
    return {k: np.asarray(v, dtype=object if k == "defense" else None) for k, v in rows.items()}


def forecast_ranking(table: Table) -> dict[str, Any]:
    """Per point, Spearman's rho between the forecast and the measured damage over the
    defenses, and whether the forecast's least damaging defense is the measured one."""
    names = sorted(set(table["defense"]))
    points = sorted(set(int(p) for p in table["point"]))
    rhos, same = [], []
    for p in points:
        at = table["point"] == p
        f = np.array([table["forecast_align_at_fixed"][at & (table["defense"] == n)][0] for n in names], float)
        m = np.array([table["align_increase_at_fixed"][at & (table["defense"] == n)][0] for n in names], float)
        if np.all(np.isfinite(f)) and np.all(np.isfinite(m)):
            rhos.append(spearman(f, m))
            same.append(bool(np.argmin(f) == np.argmin(m)))
    return {"defenses": names, "points": len(rhos), "method": "adam_sign (full-batch v = g^2)",
            "spearman_median": median(rhos, drop_inf=True), "spearman_per_point": [float(r) for r in rhos],
            "same_best_fraction": float(np.mean(same)) if same else None}


def _tables(cfg: TestbedDefenseConfig, points, results: dict[str, dict[str, np.ndarray]]) -> dict[str, Table]:
    lev, mix_i, seed = (np.array([p[k] for p in points]) for k in range(3))
    blocks, per_point = [], []
    for name, out in results.items():
        n, r = out["align_increase"].shape
        block: Table = {"defense": np.full(n * r, name, dtype=object), "point": np.repeat(np.arange(n), r),
                        "level": np.repeat(lev, r), "mix": np.repeat(np.asarray(cfg.mix)[mix_i], r),
                        "seed": np.repeat(seed, r), "step": out["steps"].ravel().astype(np.int64)}
        for key in ("align_increase", "s_part", "subspace_norm", "harm_rate", "task_accuracy"):
            block[key] = out[key].ravel().astype(np.float64)
        blocks.append(block)
        reading = adam_points(cfg, {**block, "steps": out["steps"].ravel()})
        reading["defense"] = np.array([name] * n, dtype=object)
        reading["point"] = np.arange(n)
        per_point.append(reading)
    table = {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}
    points_table = {k: np.concatenate([p[k] for p in per_point]) for k in per_point[0]}
    return {"defenses": table, "defense_points": points_table}


def summarise_defenses(cfg: TestbedDefenseConfig, tables: dict[str, Table], seconds: dict[str, float]
                       ) -> dict[str, Any]:
    """Per defense: damage, harm and task accuracy at the accuracy target and at the fixed step."""
    pts = tables["defense_points"]
    out: dict[str, Any] = {"grid": {"sharpness_levels": len(cfg.refusal_sigma), "coupling_levels": len(cfg.mix),
                                    "seeds": cfg.seeds}, "accuracy_target": cfg.accuracy_target,
                           "fixed_step": cfg.adam_steps, "defenses": {}}
    for name in cfg.defenses:
        mask = pts["defense"] == name
        out["defenses"][name] = {
            "align_increase_median": median(pts["align_increase_at_target"][mask], drop_inf=True),
            "harm_rate_median": median(pts["harm_rate_at_target"][mask], drop_inf=True),
            "task_accuracy_median": median(pts["task_accuracy_at_target"][mask], drop_inf=True),
            "reached_fraction": float(np.mean(pts["reached"][mask])),
            "steps_to_target_median": median(pts["steps_to_target"][mask], drop_inf=True),
            "align_increase_fixed_median": median(pts["align_increase_at_fixed"][mask], drop_inf=True),
            "harm_rate_fixed_median": median(pts["harm_rate_at_fixed"][mask], drop_inf=True),
            "task_accuracy_fixed_median": median(pts["task_accuracy_at_fixed"][mask], drop_inf=True),
            "overhead_ratio": seconds[name] / seconds["none"],
            "seconds": round(seconds[name], 2),
        }
    out["forecast_ranking"] = forecast_ranking(tables["defense_forecast"])
    return out

