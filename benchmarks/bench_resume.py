"""What a resumed testbed sweep costs in a fresh process (issue 21: the suite's README commands
resume from the fixtures' folder; a user reruns with --resume after a crash or a new figure).

  python benchmarks/bench_resume.py --before REV --repeats 3

Per code tree: one cold run of `python -m geomsim.testbed sweep` on the tests' tiny settings
(tests/tiny_configs.py) into a new folder with a new compilation cache, then `--repeats`
fresh processes rerunning the same command on that folder (every stage and chunk comes from
its checkpoint or cache; the persistent compilation cache is warm).  Whole-process wall time
of the resumed runs (median) and the number of XLA programs each compiled (JAX_LOG_COMPILES:
what is left is host-side work done op by op, each op its own program).  Prints markdown.
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
from pathlib import Path

from code_trees import ROOT, code_trees

sys.path.insert(0, str(ROOT / "tests"))
from tiny_configs import TESTBED_SWEEP, as_flags  # noqa: E402


def once(tree: Path, out: Path, cache: Path) -> tuple[float, int]:
    env = {**os.environ, "PYTHONPATH": str(tree), "GEOMSIM_JAX_CACHE": str(cache), "JAX_LOG_COMPILES": "1"}
    command = [sys.executable, "-m", "geomsim.testbed", "sweep", "--out", str(out), *as_flags(TESTBED_SWEEP)]
    t0 = time.perf_counter()
    proc = subprocess.run(command, env=env, cwd=out.parent, capture_output=True, text=True, timeout=1200)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{command} failed in {tree} ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return wall, proc.stderr.count("Finished XLA compilation of")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", metavar="REV")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp, code_trees(args.before, Path(tmp)) as trees:
        for name, tree in trees.items():
            work = Path(tmp) / f"work-{name}"
            work.mkdir()
            cold = once(tree, work / "out", work / "cache")
            print(f"[{name}] cold: {cold[0]:.1f} s, {cold[1]} programs", file=sys.stderr, flush=True)
            resumed = [once(tree, work / "out", work / "cache") for _ in range(args.repeats)]
            for wall, programs in resumed:
                print(f"[{name}] resumed: {wall:.1f} s, {programs} programs", file=sys.stderr, flush=True)
            rows.append((name, cold, resumed))
    print(f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores: "
          f"`python benchmarks/bench_resume.py{' --before ' + args.before if args.before else ''} "
          f"--repeats {args.repeats}`\n")
    print("| code | cold run | resumed (median) | programs compiled, resumed | resumed runs |")
    print("| --- | --- | --- | --- | --- |")
    for name, cold, resumed in rows:
        walls = [w for w, _ in resumed]
        print(f"| {name} | {cold[0]:.1f} s | {statistics.median(walls):.1f} s | "
              f"{statistics.median(p for _, p in resumed):.0f} | " + ", ".join(f"{w:.1f}" for w in walls) + " |")


if __name__ == "__main__":
    main()
