"""Where a person waits (issue 21): the README's default sweep and two diagnoses, cold and warm.

  python benchmarks/bench_wait.py --before 39ce978 --repeats 3
  python benchmarks/bench_wait.py --hf --repeats 3     # the README's tiny Llama, with and without the defense table
  python benchmarks/bench_wait.py --before d43446f --diagnose-only --defenses-none --repeats 3
      # issue 19's cost target: the diagnoses before its work (d43446f) and now, now also without
      # the defense table (a flag the earlier code does not have, so run on this checkout only)

Each repeat of each command, per code tree: a fresh process with a new, empty compilation
cache ("cold"), then a second fresh process with the cache the first one filled ("warm",
what a user gets the second time).  Whole-process wall time, median of --repeats; the
trees are interleaved.  `--before REV` times the same commands with a git revision's code
(a worktree on PYTHONPATH; commands run from a scratch folder, as a user would).
Prints markdown for benchmarks/RESULTS.md.
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

from code_trees import code_trees

COMMANDS = {
    "sweep (default)": ["geomsim.sweep", "--quiet"],
    "diagnose quadratic --rank 2": ["geomsim.diagnose", "--model", "geomsim.diagnose.examples:quadratic",
                                    "--rank", "2", "--quiet"],
    "diagnose tiny_classifier, Fisher / GN": ["geomsim.diagnose", "--model",
                                              "geomsim.diagnose.examples:tiny_classifier", "--operator", "fisher",
                                              "--task-model", "gauss_newton", "--quiet"],
}


def hf_commands(folder: Path) -> dict[str, list[str]]:
    """The README's first `--hf` diagnosis (figures off), with and without the defense table."""
    examples = Path(__file__).resolve().parents[1] / "examples" / "hf"
    base = ["geomsim.diagnose", "--hf", str(folder), "--align", str(examples / "align.jsonl"), "--task",
            str(examples / "task.jsonl"), "--rank", "2", "--figures", "none", "--quiet"]
    return {"diagnose --hf tiny Llama": base, "diagnose --hf tiny Llama --defenses none": [*base, "--defenses", "none"]}


def once(tree: Path, command: list[str], cache: Path, out: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree), "GEOMSIM_JAX_CACHE": str(cache)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", *command, "--out", str(out)], env=env, cwd=out.parent,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode:
        raise SystemExit(f"{command} failed in {tree} ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", metavar="REV")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hf", action="store_true", help="time the README's tiny-Llama diagnosis instead")
    parser.add_argument("--diagnose-only", action="store_true", help="leave the sweep out")
    parser.add_argument("--defenses-none", action="store_true",
                        help="also each diagnosis with --defenses none, on this checkout only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, code_trees(args.before, Path(tmp)) as trees:
        tmp = Path(tmp)
        commands = {n: c for n, c in COMMANDS.items() if not (args.diagnose_only and c[0] != "geomsim.diagnose")}
        after_only = set()
        if args.defenses_none:
            extra = {f"{n} --defenses none": [*c, "--defenses", "none"] for n, c in commands.items()
                     if c[0] == "geomsim.diagnose"}
            commands, after_only = {**commands, **extra}, set(extra)
        if args.hf:
            examples = Path(__file__).resolve().parents[1] / "examples" / "hf"
            subprocess.run([sys.executable, "-m", "geomsim.models.hf.tiny", str(tmp / "tiny-llama"), "--texts",
                            str(examples / "align.jsonl"), str(examples / "task.jsonl")], check=True,
                           capture_output=True)
            commands = hf_commands(tmp / "tiny-llama")
        times = {(name, tree): {"cold": [], "warm": []} for name in commands for tree in trees
                 if not (name in after_only and tree == "before")}
        for r in range(args.repeats):
            for name, command in commands.items():
                for tree_name, tree in trees.items():
                    if (name, tree_name) not in times:
                        continue
                    work = tmp / f"{tree_name}-{r}-{len(times)}-{abs(hash(name))}"
                    work.mkdir()
                    for kind in ("cold", "warm"):
                        wall = once(tree, command, work / "cache", work / kind)
                        times[(name, tree_name)][kind].append(wall)
                        print(f"{name} [{tree_name}] {kind}: {wall:.1f} s", file=sys.stderr, flush=True)
    print(f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores: "
          f"`python benchmarks/bench_wait.py{' --before ' + args.before if args.before else ''}"
          f"{' --hf' if args.hf else ''}{' --diagnose-only' if args.diagnose_only else ''}"
          f"{' --defenses-none' if args.defenses_none else ''} "
          f"--repeats {args.repeats}`\n")
    print("| command | code | cold (median) | warm (median) | cold runs | warm runs |")
    print("| --- | --- | --- | --- | --- | --- |")
    for (name, tree_name), kinds in times.items():
        print(f"| {name} | {tree_name} | {statistics.median(kinds['cold']):.1f} s | "
              f"{statistics.median(kinds['warm']):.1f} s | " + ", ".join(f"{v:.1f}" for v in kinds["cold"])
              + " | " + ", ".join(f"{v:.1f}" for v in kinds["warm"]) + " |")


if __name__ == "__main__":
    main()
