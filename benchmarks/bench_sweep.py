"""Benchmarks for the core sweep (issue 2).

  python benchmarks/bench_sweep.py vmap      # vmapped grid vs a Python loop of a jitted point
  python benchmarks/bench_sweep.py default   # `python -m geomsim.sweep` wall time + peak RSS, fresh processes
  python benchmarks/bench_sweep.py scaling   # compute time vs grid size, steps, dimension

Each prints a markdown table (medians over --repeats runs) for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

import geomsim  # noqa: F401  (XLA runtime flags before JAX starts)

jax.config.update("jax_enable_x64", True)

from geomsim.sweep import grid_axes, make_config  # noqa: E402
from geomsim.sweep.point import make_point_function  # noqa: E402


def _block(tree):
    return jax.tree.map(lambda x: np.asarray(x), tree)


def bench_vmap(repeats: int) -> None:
    config = make_config(None, {})
    s, c, k = grid_axes(config)
    point = make_point_function(config)
    batched = jax.jit(jax.vmap(point))
    single = jax.jit(point)
    chunk = config.chunk

    def run_vmapped():
        for i in range(0, len(s), chunk):
            _block(batched(s[i:i + chunk], c[i:i + chunk], k[i:i + chunk]))

    def run_loop():
        for i in range(len(s)):
            _block(single(s[i], c[i], k[i]))

    t0 = time.perf_counter(); run_vmapped(); first_v = time.perf_counter() - t0
    t0 = time.perf_counter(); run_loop(); first_l = time.perf_counter() - t0
    tv, tl = [], []
    for _ in range(repeats):
        t0 = time.perf_counter(); run_vmapped(); tv.append(time.perf_counter() - t0)
        t0 = time.perf_counter(); run_loop(); tl.append(time.perf_counter() - t0)
    mv, ml = statistics.median(tv), statistics.median(tl)
    print(f"| grid | vmapped (chunks of {chunk}) | Python loop of jitted point | speedup |")
    print("| --- | --- | --- | --- |")
    print(f"| {len(s)} points, {config.steps} GD steps, d={config.dim} | {mv:.3f} s | {ml:.3f} s | {ml / mv:.1f}x |")
    print(f"\nfirst call incl. compile: vmapped {first_v:.2f} s, loop {first_l:.2f} s "
          f"(speedup incl. compile {first_l / first_v:.1f}x); runs: vmapped {[round(x, 3) for x in tv]}, loop {[round(x, 3) for x in tl]}")


def bench_default(repeats: int) -> None:
    walls, rss = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as out:
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "geomsim.sweep", "--out", out, "--quiet"], check=True,
                           stdout=subprocess.DEVNULL)
            walls.append(time.perf_counter() - t0)
            after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            rss.append(max(after, before) / 1024)  # MiB (ru_maxrss is KiB on Linux)
    print("| command | wall time (median) | peak RSS | runs |")
    print("| --- | --- | --- | --- |")
    print(f"| `python -m geomsim.sweep` (fresh process, compile + figures) | {statistics.median(walls):.1f} s | "
          f"{max(rss):.0f} MiB | {[round(w, 1) for w in walls]} |")


def bench_scaling(repeats: int) -> None:
    base = dict(sharpness="1:100:8", coupling="0.01:1:8", steps=10_000, dim=32)
    cases = [
        ("grid 8x8", {}), ("grid 16x16", dict(sharpness="1:100:16", coupling="0.01:1:16")),
        ("grid 32x32", dict(sharpness="1:100:32", coupling="0.01:1:32")),
        ("steps 2,500", dict(steps=2500)), ("steps 40,000", dict(steps=40_000)),
        ("dim 16", dict(dim=16)), ("dim 64", dict(dim=64)), ("dim 128", dict(dim=128)),
    ]
    print("| case (base: 8x8 grid, 10,000 steps, d=32) | runs | compile + first | compute (median) | per run |")
    print("| --- | --- | --- | --- | --- |")
    for label, extra in cases:
        config = make_config(None, {**base, **extra})
        s, c, k = grid_axes(config)
        batched = jax.jit(jax.vmap(make_point_function(config)))
        chunk = config.chunk

        def run(s=s, c=c, k=k, batched=batched, chunk=chunk):
            for i in range(0, len(s), chunk):
                idx = np.minimum(np.arange(i, i + chunk), len(s) - 1)
                _block(batched(s[idx], c[idx], k[idx]))

        t0 = time.perf_counter(); run(); first = time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter(); run(); times.append(time.perf_counter() - t0)
        m = statistics.median(times)
        print(f"| {label} | {len(s)} | {first:.2f} s | {m:.3f} s | {1e3 * m / len(s):.2f} ms |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=["vmap", "default", "scaling", "all"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"jax {jax.__version__} ({jax.default_backend()}); {time.strftime('%Y-%m-%d')}\n")
    for name, fn in (("vmap", bench_vmap), ("default", bench_default), ("scaling", bench_scaling)):
        if args.which in (name, "all"):
            fn(args.repeats)
            print()


if __name__ == "__main__":
    main()
