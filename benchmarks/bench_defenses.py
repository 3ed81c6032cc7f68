"""Per-step cost of each defense on a landscape (issue 9): wall time and HVPs.

  python benchmarks/bench_defenses.py [--dim 128] [--steps 2000] [--repeats 5] [--every 10]

Runs `descend` with `optax.chain(defense, sgd)` for `steps` steps (compiled
first, then timed `repeats` times) on the rotating quadratic-cubic landscape,
and reports the median time per step, its ratio to `none`, and the alignment
HVPs the defense spends (tracked: from its state; the others: their one-off
Lanczos solves at theta0). Prints a markdown table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import numpy as np
import optax

jax.config.update("jax_enable_x64", True)

from geomsim.defenses import DEFENSES, build_defense  # noqa: E402
from geomsim.dynamics import descend  # noqa: E402
from geomsim.landscapes import quadratic_cubic  # noqa: E402


def solve_cost(name, land, rank, every, lr) -> str:
    """Alignment HVPs: the one-off solves at theta0, and per re-estimate for the tracked defense."""
    if name == "none":
        return "0"
    defense = build_defense(name, land, rank=rank, key=jax.random.key(1), every=every)
    if name != "tracked_projection":
        return "one Lanczos solve at theta0"
    chain = optax.chain(optax.sgd(lr), defense.transform)
    state = chain.init(land.theta0)
    step = jax.jit(lambda d, s: chain.update(land.task_gradient(d), s, land.theta0 + d))
    delta = land.theta0 * 0
    first = int(state[1].num_matvecs)
    for _ in range(5 * every):
        update, state = step(delta, state)
        delta = delta + update
    return f"{first} at theta0, then {(int(state[1].num_matvecs) - first) / 5:.0f} per re-estimate (warm)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--every", type=int, default=10)
    args = parser.parse_args()
    land = quadratic_cubic(jax.random.key(0), dim=args.dim, rank=args.rank, sharpness=10.0, coupling=0.5,
                           align_rotate=3.0, rotate_coupling=0.4)
    lr = 1e-5
    rows = {}
    for name in DEFENSES:
        rank = args.rank + 1 if name == "tracked_projection" else args.rank

        @jax.jit
        def run(landscape, name=name, rank=rank):
            defense = build_defense(name, landscape, rank=rank, key=jax.random.key(1), every=args.every)
            chain = optax.chain(optax.sgd(lr), defense.transform)
            traj = descend(landscape, chain, np.array([args.steps]), lr)
            return traj.align_increase[-1]

        jax.block_until_ready(run(land))
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(run(land))
            times.append((time.perf_counter() - t0) / args.steps)
        rows[name] = (statistics.median(times), solve_cost(name, land, rank, args.every, lr))
    base = rows["none"][0]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}; d = {args.dim}, "
          f"k = {args.rank}, {args.steps} GD steps, tracked every {args.every}, median of {args.repeats}\n")
    print("| defense | time per step | vs none | alignment HVPs |\n| --- | --- | --- | --- |")
    for name, (t, hvps) in rows.items():
        print(f"| {name} | {t * 1e6:.1f} us | {t / base:.2f}x | {hvps} |")


if __name__ == "__main__":
    main()
