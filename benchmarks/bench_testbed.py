"""Benchmark of the transformer testbed pipelines (issues 4 and 8).

  python benchmarks/bench_testbed.py [--repeats 3]                 # python -m geomsim.testbed
  python benchmarks/bench_testbed.py --sweep [--repeats 3]         # python -m geomsim.testbed sweep
  python benchmarks/bench_testbed.py --defenses [--repeats 3]      # python -m geomsim.testbed defenses
  python benchmarks/bench_testbed.py --sweep -- --seeds 2          # extra CLI arguments after --

Runs the command in fresh processes into fresh folders, each with an empty JAX
compilation cache (no checkpoint, cache or compiled-program reuse: the time a
first run takes), and reports wall time, peak RSS, and the per-stage timings the pipeline
records.  Prints a markdown table for benchmarks/RESULTS.md.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sweep", action="store_true", help="benchmark `python -m geomsim.testbed sweep`")
    parser.add_argument("--defenses", action="store_true", help="benchmark `python -m geomsim.testbed defenses`")
    parser.add_argument("--set", action="append", default=[], help="forwarded to the testbed CLI as --set")
    parser.add_argument("extra", nargs="*", help="further CLI arguments (after --)")
    args = parser.parse_args()
    sub = ["sweep"] if args.sweep else ["defenses"] if args.defenses else []
    command = [sys.executable, "-m", "geomsim.testbed", *sub]
    extra = [a for s in args.set for a in ("--set", s)] + args.extra
    walls, rss, stage_times = [], [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as out, tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, "GEOMSIM_JAX_CACHE": cache}
            t0 = time.perf_counter()
            subprocess.run([*command, "--out", out, "--quiet", *extra], check=True, stdout=subprocess.DEVNULL,
                           env=env)
            walls.append(time.perf_counter() - t0)
            # Children's peak RSS so far (the max over the runs, in KiB on Linux).
            rss.append(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
            with open(os.path.join(out, "summary.json")) as handle:
                summary = json.load(handle)
            defenses = {f"defense {n} (run only)": d["seconds"] for n, d in summary.get("defenses", {}).items()}
            stage_times.append({**summary["timings"], **defenses})
    shown = " ".join(["python -m geomsim.testbed", *sub, *extra])
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}\n")
    print("| command | wall time (median) | peak RSS (max) | runs |")
    print("| --- | --- | --- | --- |")
    print(f"| `{shown}` (fresh process, nothing reused) | {statistics.median(walls):.0f} s | "
          f"{max(rss) / 1024:.2f} GiB | {', '.join(f'{w:.0f}' for w in walls)} s |")
    print("\n| stage | seconds (median, incl. compile) |\n| --- | --- |")
    for name in stage_times[0]:
        print(f"| {name} | {statistics.median(t[name] for t in stage_times):.1f} |")


if __name__ == "__main__":
    main()
