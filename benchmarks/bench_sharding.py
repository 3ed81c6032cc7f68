"""Per-device memory of a sharded HVP on the 110k-parameter benchmark transformer (issue 12).

    python benchmarks/bench_sharding.py [--devices 1 2 4] [--json benchmarks/results/sharding.json]

For each device count n, a fresh process with n forced host devices
(`--xla_force_host_platform_device_count`) compiles one Hessian-vector product
of the bench_curvature transformer (batch 256 x 32 tokens, float32) three ways:
replicated (one device's program), data parallel (the batch split over n) and
FSDP (every weight matrix split over n, batch replicated), and reads XLA's
buffer assignment of the per-device program (`compiled.memory_analysis()`:
arguments + outputs + temporaries, bytes per device).  On CPU the "devices"
share one memory; the numbers are what each device would need.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = """
import os, sys, json
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=" + sys.argv[1]
sys.path.insert(0, sys.argv[2])
import geomsim, jax, jax.numpy as jnp
from bench_curvature import trained_problem, loss_fn
from geomsim.curvature import hessian_operator
from geomsim.curvature.sharding import device_mesh, shard_operator
n = int(sys.argv[1])
_, apply_fn, params, batch = trained_problem(0)
op = hessian_operator(loss_fn(apply_fn), params, batch)
v = jax.tree.map(jnp.ones_like, params)
out = {}
for name, mesh in (("replicated", None), ("data", device_mesh(data=n, model=1)), ("fsdp", device_mesh(data=1, model=n))):
    placed = op if mesh is None else shard_operator(op, mesh)
    ma = jax.jit(lambda o, v: o.mv(v)).lower(placed, v).compile().memory_analysis()
    out[name] = {"arguments": ma.argument_size_in_bytes, "outputs": ma.output_size_in_bytes,
                 "temporaries": ma.temp_size_in_bytes,
                 "total": ma.argument_size_in_bytes + ma.output_size_in_bytes + ma.temp_size_in_bytes}
print(json.dumps(out))
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--json", default=str(HERE / "results" / "sharding.json"))
    args = parser.parse_args(argv)
    results = {}
    for n in args.devices:
        proc = subprocess.run([sys.executable, "-c", CHILD, str(n), str(HERE)], capture_output=True, text=True,
                              env={**os.environ, "GEOMSIM_KEEP_XLA_FLAGS": ""}, check=True)
        results[n] = json.loads(proc.stdout.strip().splitlines()[-1])
    print("| devices | " + " | ".join(f"{k} (MiB per device)" for k in results[args.devices[0]]) + " |")
    print("| --- |" + " --- |" * len(results[args.devices[0]]))
    for n, row in results.items():
        print(f"| {n} | " + " | ".join(f"{v['total'] / 2**20:.1f} (args {v['arguments'] / 2**20:.1f}, temp "
                                        f"{v['temporaries'] / 2**20:.1f})" for v in row.values()) + " |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"devices": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
