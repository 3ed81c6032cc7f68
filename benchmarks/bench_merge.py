"""The sweep's merge of a 16,384-run sweep (issue 21): process 0's serial cost.

  python benchmarks/bench_merge.py --before 008c5b2 --repeats 3

Runs the 64 x 64 x 4-seed sweep of benchmarks/bench_processes.py once (its chunk files),
then, in fresh processes, resumes it with every chunk present: nothing is computed, so
the time inside `run_sweep` (`wall_seconds` of meta.json) is the merge: loading the 256
chunk files, building the tables, writing results.csv and the curves (1.97 million rows).
`--before REV` times the same resume with the code of a git revision (a worktree on
PYTHONPATH) for a before/after table; the runs are interleaved.  Prints markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from code_trees import ROOT, code_trees

GRID = ["--sharpness", "1:100:64", "--coupling", "0.01:1:64", "--seeds", "4", "--figures", "none", "--quiet"]


def sweep(out: Path, tree: Path, *extra: str) -> tuple[float, dict]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "geomsim.sweep", *GRID, "--out", str(out), *extra], env=env,
                          capture_output=True, text=True, timeout=900, cwd=tree)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"sweep failed ({proc.returncode}) in {tree}:\n{proc.stderr[-2000:]}")
    return wall, json.loads((out / "meta.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", metavar="REV", help="also time the merge of this git revision")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, code_trees(args.before, Path(tmp)) as trees:
        tmp = Path(tmp)
        base = tmp / "sweep"
        wall, meta = sweep(base, ROOT)
        print(f"computed {meta['n_runs']} runs in {wall:.1f} s ({meta['chunks_computed']} chunks)", file=sys.stderr)
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
        for _ in range(args.repeats):
            for name, tree in trees.items():
                out = tmp / f"resume-{name}"
                shutil.rmtree(out, ignore_errors=True)
                shutil.copytree(base / "chunks", out / "chunks")
                shutil.copy(base / "meta.json", out / "meta.json")
                wall, meta = sweep(out, tree, "--resume")
                assert meta["chunks_computed"] == 0, meta
                times[name].append((meta["wall_seconds"], wall))
                sizes = {p.name: p.stat().st_size for p in out.iterdir() if p.is_file()}
                print(f"{name}: merge {meta['wall_seconds']:.2f} s, process {wall:.2f} s, files {sizes}",
                      file=sys.stderr, flush=True)
    print(f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, "
          f"`python benchmarks/bench_merge.py{' --before ' + args.before if args.before else ''} --repeats {args.repeats}`")
    print("\n| code | merge inside run_sweep (median) | whole process (median) | runs (merge) |")
    print("| --- | --- | --- | --- |")
    for name, values in times.items():
        merge = [m for m, _ in values]
        whole = [w for _, w in values]
        print(f"| {name} | {statistics.median(merge):.2f} s | {statistics.median(whole):.2f} s | "
              + ", ".join(f"{m:.2f}" for m in merge) + " s |")


if __name__ == "__main__":
    main()
