"""Run a sweep: grid -> vmapped chunks (resumable) -> tidy tables, metadata, figures.

Output folder layout:
    meta.json      config, digest, seed, versions, timing, status counts
    results.csv    one row per (grid point, seed)
    curves.parquet tidy per-run curves (run, t, Delta L_A, L_F, ||P_S delta||, ...); Parquet, as
                   they reach millions of rows (geomsim.io.read_table, pandas, polars)
    chunks/        per-chunk .npz results; `--resume` skips the ones present
    fig_*.png/pdf  figures (see geomsim.plotting.sweep_figures)

Started as several processes (`geomsim.processes`), each runs its share of
the chunks and process 0 merges them into the same files.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from geomsim.finite import run_reasons
from geomsim.fitting import FIT_REASONS
from geomsim.io import Table, atomic_open, environment_versions, write_csv, write_json, write_parquet
from geomsim.processes import current_group
from geomsim.sweep.config import ConfigError, SweepConfig
from geomsim.sweep.point import CURVE_FIELDS, STATUS_NAMES, TAYLOR_ORDER, make_point_function
from geomsim.sweep.progress import Progress
from geomsim.watchdog import Stalled, watched

RESULT_COLUMNS = (
    "sharpness", "coupling", "mu", "eps", "rank", "dim", "optimizer", "lr", "steps", "seed", "seed_index",
    "defense", "exponent", "exponent_lo", "exponent_hi", "power", "prefactor", "prefactor_pred", "prefactor_ratio",
    "c4_fit", "c4_pred", "c4_ratio", "c2_pred", "c6_pred", "crossover_pred", "window_end_pred",
    "onset_t", "window_hi", "t_fail_pred", "t_fail_quartic", "t_fail_meas",
    "sharpness_meas", "mu_meas", "eps_meas", "coupling_meas", "rank_meas",
    "status", "reason",
)
MEASURED_COLUMNS = ("sharpness_meas", "mu_meas", "eps_meas", "coupling_meas", "c2_pred", "c4_pred")
CURVES_FILE = "curves.parquet"
WORKER_STALLED = 3  # geomsim.sweep.worker's exit status when the chunk stalled there too
STATUS_REASONS = {
    "diverged": "displacement exceeded 1e6 x (t_max ||g||)",
    "nan": "non-finite loss along the run",
}


@dataclass
class SweepResult:
    """Tables and metadata of a finished sweep (also written under `out_dir`)."""

    results: Table
    curves: Table
    meta: dict[str, Any]
    out_dir: Path


@contextlib.contextmanager
def precision(float64: bool) -> Iterator[None]:
    """Temporarily set JAX's default float width (restored afterwards)."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", float64)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", previous)


def grid_axes(config: SweepConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row-wise grid: sharpness, coupling, seed index (sharpness-major order)."""
    s, c, k = np.meshgrid(
        np.asarray(config.sharpness), np.asarray(config.coupling), np.arange(config.seeds), indexing="ij"
    )
    return s.ravel(), c.ravel(), k.ravel()


def grid_sharding() -> tuple[jax.sharding.NamedSharding | None, int]:
    """Shard the grid axis of each chunk over this process's devices (None for one device)."""
    devices = jax.local_devices()
    if len(devices) == 1:
        return None, 1
    mesh = jax.sharding.Mesh(np.array(devices), ("grid",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("grid")), len(devices)


class Chunks:
    """The grid cut into chunks of `rows` runs (a multiple of the local devices; the last one
    padded with its last row), and the one compiled program that computes a chunk."""

    def __init__(self, config: SweepConfig, rows: int | None = None):
        self.config = config
        self.s, self.c, self.k = grid_axes(config)
        self.n = len(self.s)
        self.sharding, self.n_devices = grid_sharding()
        self.rows = rows or -(-min(config.chunk, self.n) // self.n_devices) * self.n_devices
        self.count = -(-self.n // self.rows)
        self._program = None

    def _args(self, index: int) -> list:
        rows = np.minimum(np.arange(index * self.rows, (index + 1) * self.rows), self.n - 1)
        args = [self.s[rows], self.c[rows], self.k[rows]]
        return args if self.sharding is None else [jax.device_put(a, self.sharding) for a in args]

    def compute(self, index: int, attempt: int = 1) -> dict[str, np.ndarray]:
        """Chunk `index`'s outputs on the host.  Compiled ahead of the watchdog, so only the
        execution counts against --stall-timeout (compiling takes ~8 s cold, a chunk 0.6 s)."""
        args = self._args(index)
        if self._program is None:
            self._program = jax.jit(jax.vmap(make_point_function(self.config))).lower(*args).compile()
        return watched(f"sweep chunk {index + 1}/{self.count}",
                       lambda: jax.tree.map(np.asarray, self._program(*args)), attempt=attempt)


def _retry_in_worker(out_dir: Path, index: int, err: Stalled) -> None:
    """Chunk `index` once more in a fresh process (`geomsim.sweep.worker`), whose XLA runtime
    is not the one that stalled; `Stalled` naming both tries if it does not write the chunk."""
    command = [sys.executable, "-m", "geomsim.sweep.worker", str(out_dir), str(index), repr(err.seconds)]
    limit = 2 * err.seconds + 600  # the worker watches its own execution; this bounds start-up and compilation
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=limit)
        if proc.returncode == 0 and chunk_path(out_dir, index).exists():
            return
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        why = ", nor in a fresh worker process" if proc.returncode == WORKER_STALLED else (
            f", and its retry in a fresh worker process failed ({last})")
    except subprocess.TimeoutExpired:
        why = f", and its retry in a fresh worker process did not exit within {limit:g} s (killed)"
    done = sum(1 for _ in (out_dir / "chunks").glob("chunk_*.npz"))
    raise Stalled(err.what, err.seconds, f"{why}; the {done} chunk files written are untouched: rerun with "
                  "--resume to compute the rest")


def chunk_path(out_dir: Path, index: int) -> Path:
    """Where chunk `index` of a sweep in `out_dir` is saved (its presence means finished)."""
    return out_dir / "chunks" / f"chunk_{index:05d}.npz"


def save_chunk(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """A chunk's arrays as one `.npz`, written atomically (a reader never sees half a chunk)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    with atomic_open(path, "wb") as handle:
        handle.write(buffer.getvalue())


def _check_resume(out_dir: Path, config: SweepConfig, resume: bool, chunk: int) -> None:
    meta_path = out_dir / "meta.json"
    has_chunks = (out_dir / "chunks").is_dir() and any((out_dir / "chunks").iterdir())
    if not resume:
        if has_chunks:
            raise ConfigError(f"out: {out_dir} already holds sweep results; pass --resume or choose another --out")
        return
    if not meta_path.exists():
        return  # nothing to resume from: run from scratch
    import json

    with open(meta_path, encoding="utf-8") as handle:
        previous = json.load(handle)
    if previous.get("config_digest") != config.digest():
        raise ConfigError(
            f"resume: {out_dir} holds a run of a different config "
            f"(digest {previous.get('config_digest')} != {config.digest()})"
        )
    if previous.get("chunk_rows", chunk) != chunk:
        raise ConfigError(
            f"resume: {out_dir} was cut into chunks of {previous['chunk_rows']} rows, this process would use {chunk} "
            "(chunks are rounded to a multiple of the devices per process): resume with as many devices per process"
        )


def _lookup(names: dict[int, str], codes: np.ndarray) -> np.ndarray:
    """`names[code]` for every code, as an object array, without a Python loop over the rows."""
    table = np.empty(max(names) + 1, dtype=object)
    for code, name in names.items():
        table[code] = name
    return table[np.asarray(codes, dtype=np.int64)]


def _rows(config: SweepConfig, raw: dict[str, np.ndarray], s: np.ndarray, c: np.ndarray, k: np.ndarray) -> Table:
    n = len(s)
    status = _lookup(STATUS_NAMES, raw["status_code"])
    reasons = np.where(status == "no_onset", _lookup(FIT_REASONS, raw["fit_code"]),
                       _lookup({code: STATUS_REASONS.get(name, "") for code, name in STATUS_NAMES.items()},
                               raw["status_code"]))
    table: Table = {
        "sharpness": s,
        "coupling": c,
        "mu": np.full(n, config.mu),
        "eps": np.full(n, config.eps),
        "rank": np.full(n, config.rank),
        "dim": np.full(n, config.dim),
        "optimizer": np.full(n, config.optimizer, dtype=object),
        "defense": np.full(n, config.defense, dtype=object),
        "lr": np.full(n, config.lr),
        "steps": np.full(n, config.steps),
        "seed": np.full(n, config.seed),
        "seed_index": k,
    }
    for name in RESULT_COLUMNS:
        if name in table or name in ("status", "reason"):
            continue
        table[name] = np.asarray(raw[name]) if name in ("power", "rank_meas") else np.asarray(raw[name], np.float64)
    for j in range(TAYLOR_ORDER + 1):
        table[f"taylor_c{j}"] = np.asarray(raw["taylor"][:, j], dtype=np.float64)
    # The measured AIC quantities and Taylor coefficients a row's predictions rest on: a run with a
    # finite loss curve but a NaN among these is "nan" too, naming it (geomsim.finite.run_reasons).
    measured = run_reasons({name: table[name] for name in MEASURED_COLUMNS}
                           | {"taylor coefficients": raw["taylor"]})
    bad = (status == "ok") & (measured != "")
    table["status"] = np.where(bad, "nan", status).astype(object)
    table["reason"] = np.where(bad, measured, reasons).astype(object)
    return table


def _curves(raw: dict[str, np.ndarray]) -> Table:
    n, r = raw["curve_time"].shape
    table: Table = {"run": np.repeat(np.arange(n), r)}
    for name in CURVE_FIELDS:
        table[name] = np.asarray(raw[f"curve_{name}"], dtype=np.float64).ravel()
    return table


def run_sweep(
    config: SweepConfig,
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    progress: bool = True,
    plots: bool = True,
) -> SweepResult | None:
    """Run (or resume) the sweep described by a validated `config` into `out_dir`.

    In a group of processes every process calls it with the same arguments; each
    computes its share of the missing chunks, and process 0 merges and returns the
    result (the others return None).  `ProcessLost` if a process stops midway.
    """
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    group = current_group()
    chunks = Chunks(config)
    s, c, k, n, n_chunks, chunk, n_devices = (chunks.s, chunks.c, chunks.k, chunks.n, chunks.count, chunks.rows,
                                              chunks.n_devices)
    _check_resume(out_dir, config, resume, chunk)
    group.check_same("config", config.digest())  # also: nobody writes before everyone has checked
    group.check_same("local device count", str(n_devices))
    missing = np.array([not (resume and chunk_path(out_dir, i).exists()) for i in range(n_chunks)])
    missing = group.agree("sweep chunks", missing)  # process 0's listing: the shares cannot overlap
    mine = group.share(np.flatnonzero(missing).tolist())
    meta: dict[str, Any] = {
        "config": config.to_dict(),
        "config_digest": config.digest(),
        "seed": config.seed,
        "versions": environment_versions(),
        "state": "running",
        "chunk_rows": chunk,
    }
    if group.leader:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json(out_dir / "meta.json", meta)

    resumed = n_chunks - int(missing.sum())
    label = "sweep" + (f" ({resumed} of {n_chunks} chunks resumed)" if resumed else "")
    bar = Progress(len(mine), group.label(label), enabled=progress)
    t_compute = 0.0
    with precision(config.float64):
        for index in mine:
            t0 = time.perf_counter()
            try:
                out = chunks.compute(index)
            except Stalled as err:
                print(group.label(f"{err}; retrying it in a fresh worker process"), file=sys.stderr, flush=True)
                _retry_in_worker(out_dir, index, err)
            else:
                save_chunk(chunk_path(out_dir, index), out)
            t_compute += time.perf_counter() - t0
            bar.advance(1, f"chunk {index + 1}/{n_chunks}")
    group.barrier("sweep chunks written")
    if not group.leader:
        return None

    absent = [i for i in range(n_chunks) if not chunk_path(out_dir, i).exists()]
    if absent:
        raise ConfigError(f"out: {len(absent)} chunk files the other processes wrote are not in {out_dir} "
                          f"(e.g. {chunk_path(out_dir, absent[0]).name}); --out must be one folder every process sees")
    raw_chunks = []
    for index in range(n_chunks):
        with np.load(chunk_path(out_dir, index)) as data:
            raw_chunks.append({name: data[name] for name in data.files})
    raw = {name: np.concatenate([r[name] for r in raw_chunks])[:n] for name in raw_chunks[0]}

    results = _rows(config, raw, s, c, k)
    curves = _curves(raw)
    write_csv(out_dir / "results.csv", results)
    write_parquet(out_dir / CURVES_FILE, curves)

    counts = {name: int(np.sum(results["status"] == name)) for name in STATUS_NAMES.values()}
    meta.update(
        state="complete",
        n_runs=n,
        status_counts=counts,
        processes=group.count,
        devices=n_devices * group.count,
        chunks_computed=n_chunks - resumed,
        chunks_resumed=resumed,
        compute_seconds=round(t_compute, 3),  # process 0's
    )
    figures: list[str] = []
    if plots:
        from geomsim.plotting.sweep_figures import sweep_figures

        figures = [p.name for p in sweep_figures(results, curves, out_dir)]
    meta["figures"] = figures
    meta["wall_seconds"] = round(time.perf_counter() - t_start, 3)
    write_json(out_dir / "meta.json", meta)
    return SweepResult(results=results, curves=curves, meta=meta, out_dir=out_dir)
