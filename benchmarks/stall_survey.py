"""Does XLA's CPU runtime still stall? Fresh cold launches of a small sweep (issue 21).

  python benchmarks/stall_survey.py --launches 50 --forced 10

Each launch is a fresh process with its own empty compilation cache (the stalls were
seen on cold launches): `python -m geomsim.sweep` on a 64-run grid (8 x 8, one seed,
chunks of 16 = 4 chunks), `--stall-timeout 60` (a chunk runs in well under a second).
With the watchdog a stall is no longer a hang: the sweep says "retrying it in a fresh
worker process", so a launch is counted as stalled when that line appears, and as hung
only if the process itself outlives --hang seconds (killed).  `--forced N` more launches
with 2 forced host devices (`--xla_force_host_platform_device_count=2`), the case that
stalled in both tries before.  Prints a markdown table and the jax/jaxlib versions.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GRID = ["--sharpness", "1:100:8", "--coupling", "0.01:1:8", "--seeds", "1", "--chunk", "16", "--figures", "none",
        "--quiet", "--stall-timeout", "60"]


def launch(forced: bool, hang: float) -> tuple[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "GEOMSIM_JAX_CACHE": str(Path(tmp) / "cache")}
        if forced:
            env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, "-m", "geomsim.sweep", *GRID, "--out", str(Path(tmp) / "s")],
                                  env=env, capture_output=True, text=True, timeout=hang)
        except subprocess.TimeoutExpired:
            return "hung", time.perf_counter() - t0
        wall = time.perf_counter() - t0
        if "retrying it in a fresh worker process" in proc.stderr:
            return ("stalled, retried" if proc.returncode == 0 else "stalled twice"), wall
        return ("ok" if proc.returncode == 0 else f"failed ({proc.returncode}): {proc.stderr[-300:]}"), wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--launches", type=int, default=50)
    parser.add_argument("--forced", type=int, default=10)
    parser.add_argument("--hang", type=float, default=300.0)
    args = parser.parse_args()
    import jax
    import jaxlib

    rows = []
    for case, count, forced in (("1 device", args.launches, False), ("2 forced host devices", args.forced, True)):
        outcomes: dict[str, int] = {}
        walls = []
        for i in range(count):
            outcome, wall = launch(forced, args.hang)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            walls.append(wall)
            print(f"{case} {i + 1}/{count}: {outcome} in {wall:.1f} s", file=sys.stderr, flush=True)
        rows.append((case, count, outcomes, sorted(walls)))
    print(f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, "
          f"jaxlib {jaxlib.__version__}: `python benchmarks/stall_survey.py --launches {args.launches} "
          f"--forced {args.forced}`\n")
    print("| case | launches | outcomes | wall (median, max) |")
    print("| --- | --- | --- | --- |")
    for case, count, outcomes, walls in rows:
        shown = ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items()))
        print(f"| {case} | {count} | {shown} | {walls[len(walls) // 2]:.1f} s, {walls[-1]:.1f} s |"
              if walls else f"| {case} | 0 | - | - |")


if __name__ == "__main__":
    main()
