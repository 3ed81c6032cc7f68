"""Benchmark of the transformer testbed pipeline (issue 4).

  python benchmarks/bench_testbed.py [--repeats 3]

Runs `python -m geomsim.testbed` (pretrain + align + diagnostics + 5 benign
fine-tunes x {full, early, LoRA}, 3 seeds) in fresh processes into fresh
folders (no checkpoint reuse) and reports wall time, peak RSS, and the per-stage
timings the pipeline records.  Prints a markdown table for benchmarks/RESULTS.md.
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
    parser.add_argument("--set", action="append", default=[], help="forwarded to the testbed CLI")
    args = parser.parse_args()
    extra = [a for s in args.set for a in ("--set", s)]
    walls, rss, stage_times = [], [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as out:
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "geomsim.testbed", "--out", out, "--quiet", *extra],
                           check=True, stdout=subprocess.DEVNULL)
            walls.append(time.perf_counter() - t0)
            rss.append(max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before) / 1024)
            with open(os.path.join(out, "summary.json")) as handle:
                stage_times.append(json.load(handle)["timings"])
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}\n")
    print("| command | wall time (median) | peak RSS (max) | runs |")
    print("| --- | --- | --- | --- |")
    print(f"| `python -m geomsim.testbed` (fresh process, no checkpoints) | {statistics.median(walls):.0f} s | "
          f"{max(rss) / 1024:.2f} GiB | {', '.join(f'{w:.0f}' for w in walls)} s |")
    print("\n| stage | seconds (median, incl. compile) |\n| --- | --- |")
    for name in stage_times[0]:
        print(f"| {name} | {statistics.median(t[name] for t in stage_times):.1f} |")


if __name__ == "__main__":
    main()
