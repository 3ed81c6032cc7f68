"""Where the testbed sweep's law stage spends its time: the tests' tiny sweep
(`tests/tiny_configs.py` TESTBED_SWEEP, the suite's compiler settings: float64,
`jax_disable_most_optimizations`, no persistent cache), its law chunks recomputed from
saved models with parts of `law_chunk` swapped out, each variant in a fresh process.

    python benchmarks/law_compile_parts.py --repeats 2

Variants: `full` (as the sweep runs it), `no_taylor` (the Taylor coefficients c1..c4
replaced by zeros: the AIC, ||H_F||, the integrated flow), `jvp` (the Taylor coefficients by
nested jvp instead of jet). Prints a Markdown table of the law stage's seconds (its three
chunks: one compile, three runs). The models are trained once, first, into a scratch folder
(stage keys pinned to one code version so every variant reuses them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import dataclasses, glob, json, os, shutil, sys
import jax
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_disable_most_optimizations", True)
sys.path.insert(0, os.path.join(sys.argv[3], "tests"))
import jax.numpy as jnp
import geomsim.config
geomsim.config.code_version = lambda: "pinned"  # every variant loads the same saved models
from tiny_configs import TESTBED_SWEEP
from geomsim import config as config_layer
from geomsim.testbed import models as registry
from geomsim.testbed.sweep import TestbedSweepConfig, law
from geomsim.testbed.sweep.run import run_testbed_sweep

variant, base = sys.argv[1], sys.argv[2]
full_chunk = law.law_chunk
if variant == "no_taylor":
    def chunk(data, runs):
        out = jax.vmap(lambda kw: law.law_run(data, **kw))(runs)
        out.update({f"c{j}": jnp.zeros(runs["mix"].shape) for j in range(1, 5)})
        return out
    law.law_chunk = chunk
if variant == "jvp":
    registry.MODELS["transformer"] = dataclasses.replace(registry.MODELS["transformer"], taylor_method="jvp")
out = base if variant == "models" else base + "-" + variant
if variant != "models":
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(base, out)
    for f in glob.glob(out + "/cache/law_*"):
        os.remove(f)
cfg = config_layer.build(TestbedSweepConfig, None, TESTBED_SWEEP)
result = run_testbed_sweep(cfg, out, progress=False, plots=False)
print(json.dumps({"law": result.summary["timings"]["law_runs"]}))
"""


def run(variant: str, base: Path) -> float:
    proc = subprocess.run([sys.executable, "-c", CHILD, variant, str(base), str(ROOT)], capture_output=True, text=True,
                          check=True, env={**os.environ, "GEOMSIM_NO_JAX_CACHE": "1"})
    return json.loads(proc.stdout.strip().splitlines()[-1])["law"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    variants = ("full", "no_taylor", "jvp")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "models"
        run("models", base)
        rows = {v: [] for v in variants}
        for _ in range(args.repeats):  # interleaved
            for v in variants:
                rows[v].append(run(v, base))
        shutil.rmtree(base, ignore_errors=True)
    print("| variant | law stage (s, median) | runs (s) |")
    print("| --- | --- | --- |")
    for v, times in rows.items():
        print(f"| {v} | {statistics.median(times):.1f} | {', '.join(f'{t:.1f}' for t in times)} |")


if __name__ == "__main__":
    main()
