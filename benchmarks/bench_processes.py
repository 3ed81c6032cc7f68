"""Multi-process scaling of a sweep (issue 12): one process vs a group of processes.

  python benchmarks/bench_processes.py --repeats 3

Runs the same sweep (default: 64 x 64 grid x 4 seeds = 16,384 runs of 10,000 GD
steps, no figures) as
  - 1 process with 1 device,
  - with --forced-devices, 1 process with N forced host devices (the chunk's grid
    axis sharded over them; on 2 cores this launch hung in XLA's CPU runtime twice
    in two tries, see RESULTS.md),
  - N processes with 1 device each on 127.0.0.1 (jax.distributed, a round-robin
    share of the chunks each; process 0 merges),
and reports wall time from launch until every process exited (median of
--repeats, interleaved), and checks that every run wrote the same results.csv
bytes.  Each run has its own empty compilation cache, so every wall time
includes compilation.  Prints a markdown table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# A normal launch takes about a minute here; longer means the XLA CPU runtime hung (RESULTS.md).
HANG_SECONDS = 240
GRID = ["--sharpness", "1:100:64", "--coupling", "0.01:1:64", "--seeds", "4", "--no-plots", "--quiet"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(case: str, n: int, flags: list[str]) -> tuple[float, str]:
    """Wall seconds and the results.csv digest of one launch of `case`."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "sweep"
        env = {**os.environ, "GEOMSIM_JAX_CACHE": str(Path(tmp) / "cache")}
        if case == "devices":
            env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n}"
        commands = [[sys.executable, "-m", "geomsim.sweep", *flags, "--out", str(out)]]
        if case == "processes":
            port = free_port()
            commands = [[*commands[0], "--coordinator", f"127.0.0.1:{port}", "--num-processes", str(n),
                         "--process-id", str(i)] for i in range(n)]
        t0 = time.perf_counter()
        procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for c in commands]
        for proc in procs:
            try:
                _, err = proc.communicate(timeout=HANG_SECONDS)
            except subprocess.TimeoutExpired:  # never seen to finish once stuck: report, do not time it
                for p in procs:
                    p.kill()
                print(f"{case}: no exit after {HANG_SECONDS} s (XLA CPU hang, see RESULTS.md; killed); repeating this launch", file=sys.stderr, flush=True)
                return run(case, n, flags)
            if proc.returncode:
                raise SystemExit(f"{case} failed ({proc.returncode}):\n{err[-2000:]}")
        wall = time.perf_counter() - t0
        return wall, hashlib.sha256((out / "results.csv").read_bytes()).hexdigest()[:12]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n", type=int, default=2, help="devices / processes of the parallel cases")
    parser.add_argument("--forced-devices", action="store_true",
                        help="also time 1 process with N forced host devices (hung 2 of 2 launches here)")
    parser.add_argument("--flags", nargs=argparse.REMAINDER, default=GRID, help="sweep flags (default: the grid)")
    args = parser.parse_args()
    cases = [("1 process, 1 device", "one", 1), (f"{args.n} processes x 1 device (127.0.0.1)", "processes", args.n)]
    if args.forced_devices:
        cases.insert(1, (f"1 process, {args.n} forced host devices", "devices", args.n))
    walls: dict[str, list[float]] = {label: [] for label, _, _ in cases}
    digests = set()
    for _ in range(args.repeats):
        for label, case, n in cases:
            wall, digest = run(case, n, args.flags)
            walls[label].append(wall)
            digests.add((case, digest))
            print(f"{label}: {wall:.1f} s ({digest})", file=sys.stderr, flush=True)
    print(f"\nMachine: {platform.machine()}, {os.cpu_count()} CPU cores; {time.strftime('%Y-%m-%d')}; "
          f"sweep flags: {' '.join(args.flags)}\n")
    print("| launch | wall (median) | speed-up | runs |\n| --- | --- | --- | --- |")
    base = statistics.median(walls[cases[0][0]])
    for label, _, _ in cases:
        med = statistics.median(walls[label])
        print(f"| {label} | {med:.1f} s | {base / med:.2f}x | {', '.join(f'{w:.1f}' for w in walls[label])} s |")
    same = {d for _, d in digests}
    print(f"\nresults.csv digests: {sorted(digests)}; "
          + ("one process and the group wrote the same bytes" if len({d for c, d in digests if c != 'devices'}) == 1
             else "the one-process and group results DIFFER"))
    if len(same) > 1:
        print("(forced host devices split each chunk, a different per-device batch: equal runs, "
              "possibly different last bits)")


if __name__ == "__main__":
    main()
