"""First vs second run of a command-line tool with the persistent compilation cache (issue 11).

  python benchmarks/bench_compile_cache.py [--repeats 3]                       # python -m geomsim.sweep
  python benchmarks/bench_compile_cache.py -- -m geomsim.testbed --seeds 1     # any python command

Each repeat takes an empty cache folder (`GEOMSIM_JAX_CACHE`) and runs the
command twice into fresh output folders: the first run compiles and fills the
cache, the second reads it. A third column runs with the cache off
(`GEOMSIM_NO_JAX_CACHE=1`) for reference. Prints a markdown row per mode.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time


def timed(argv: list[str], env: dict[str, str]) -> float:
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        subprocess.run([*argv, "--out", out], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env=env)
        return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("command", nargs="*", help="python arguments after --, default -m geomsim.sweep")
    args = parser.parse_args()
    argv = [sys.executable, *(args.command or ["-m", "geomsim.sweep"])]
    rows: dict[str, list[float]] = {"first run (empty cache)": [], "second run (cache filled)": [],
                                    "cache off": []}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, "GEOMSIM_JAX_CACHE": cache}
            rows["first run (empty cache)"].append(timed(argv, env))
            rows["second run (cache filled)"].append(timed(argv, env))
        rows["cache off"].append(timed(argv, {**os.environ, "GEOMSIM_NO_JAX_CACHE": "1"}))
    shown = " ".join(["python", *argv[1:]])
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}; `{shown}`\n")
    print("| run | wall time (median) | runs |\n| --- | --- | --- |")
    for name, walls in rows.items():
        print(f"| {name} | {statistics.median(walls):.1f} s | {', '.join(f'{w:.1f}' for w in walls)} s |")


if __name__ == "__main__":
    main()
