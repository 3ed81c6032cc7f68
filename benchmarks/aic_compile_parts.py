"""Where the matrix-free AIC's compile time goes: `aic` on the README's transformer
(width 32, depth 2, 16 sequences of 16 tokens) with its optional parts switched off one
at a time, each variant lowered and compiled in a fresh process (no persistent cache),
with the test suite's compiler settings (`jax_disable_most_optimizations`, float64).

    python benchmarks/aic_compile_parts.py --repeats 3
    python benchmarks/aic_compile_parts.py --passes      # XLA's own timings of the default variant

Prints a Markdown table: median lower / compile seconds and the HLO text size per variant;
with `--passes`, the default variant's compile split into XLA's HLO pass pipeline and its
code generation, and the slowest passes (XLA's verbose log: `TF_CPP_VMODULE`).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import statistics
import subprocess
import sys

VARIANTS = {
    "default (trace_samples=10, window, laws, third_order)": {},
    "trace_samples=0 (no SLQ tail trace)": dict(trace_samples=0),
    "window=False (no ||H_F|| solves)": dict(window=False),
    "laws=False (no Taylor c1..c4, times, curve)": dict(laws=False),
    "third_order=False (no c3)": dict(third_order=False),
    "window=False, laws=False": dict(window=False, laws=False),
    "all four off": dict(trace_samples=0, window=False, laws=False, third_order=False),
}

CHILD = r"""
import json, sys, time
import geomsim  # noqa: F401  (XLA flags before JAX starts)
import jax
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_disable_most_optimizations", True)
from geomsim.models import Transformer, TransformerConfig, as_functional, cross_entropy
from geomsim.theory import aic

kw = json.loads(sys.argv[1])
model = Transformer(TransformerConfig(vocab_size=32, seq_len=16, width=32, depth=2, num_heads=4),
                    key=jax.random.key(0))
apply_fn, params = as_functional(model)
tokens = jax.random.randint(jax.random.key(1), (2, 16, 17), 0, 32)
batches = {"align": (tokens[0, :, :-1], tokens[0, :, 1:]), "task": (tokens[1, :, :-1], tokens[1, :, 1:])}

def align_loss(p, b):
    return cross_entropy(apply_fn(p, b["align"][0]), b["align"][1])

def task_loss(p, b):
    return cross_entropy(apply_fn(p, b["task"][0]), b["task"][1])

f = jax.jit(lambda p: aic(align_loss, task_loss, p, batches, k=4, key=jax.random.key(3), **kw))
t0 = time.perf_counter()
lowered = f.lower(params)
t1 = time.perf_counter()
lowered.compile()
t2 = time.perf_counter()
print(json.dumps({"lower": t1 - t0, "compile": t2 - t1, "hlo_chars": len(lowered.as_text())}))
"""


UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def passes() -> None:
    """XLA's timings of the AIC program (`jit__lambda`): pipeline, code generation, passes."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0", "TF_CPP_VMODULE": "hlo_pass_pipeline=1,cpu_compiler=1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, "{}"], capture_output=True, text=True, check=True, env=env)
    per_pass, module, stages = collections.Counter(), None, {}
    for line in proc.stderr.splitlines():
        if m := re.search(r"HLO pass pipeline on module (\S+):", line):
            module = m.group(1)
        elif (m := re.search(r"HLO pass: (\S+) time: ([\d.]+) (us|ms|s) ", line)) and module == "jit__lambda":
            per_pass[m.group(1)] += float(m.group(2)) * UNITS[m.group(3)]
        elif m := re.search(r"(Running HLO passes on|Compiling) \[jit__lambda\] for CPU( using JIT)? time: ([\d.]+) "
                            r"(us|ms|s) ", line):
            stages["passes" if m.group(1) == "Running HLO passes on" else "jit"] = float(m.group(3)) * UNITS[m.group(4)]
    if not per_pass or len(stages) < 2:
        raise SystemExit("XLA's log had no pass or stage timings for jit__lambda: its format changed; see "
                         "TF_CPP_VMODULE in this script")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"compile {result['compile']:.2f} s: HLO pass pipeline {stages.get('passes', 0):.2f} s, "
          f"code generation (JIT) {stages.get('jit', 0):.2f} s")
    print("| pass (cumulative over its runs; nested pipelines count in their parents too) | s |")
    print("| --- | --- |")
    for name, secs in per_pass.most_common(8):
        print(f"| {name} | {secs:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--passes", action="store_true", help="XLA's pass timings of the default variant")
    args = parser.parse_args()
    if args.passes:
        passes()
        return
    rows = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):  # interleaved: machine drift spreads over every variant
        for name, kw in VARIANTS.items():
            # No persistent cache: geomsim turns it on in its CLIs only.
            out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(kw)], capture_output=True, text=True,
                                 check=True)
            rows[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("| variant | lower (s) | compile (s) | HLO text (MB) | compile runs (s) |")
    print("| --- | --- | --- | --- | --- |")
    for name, runs in rows.items():
        lower = statistics.median(r["lower"] for r in runs)
        comp = [r["compile"] for r in runs]
        print(f"| {name} | {lower:.2f} | {statistics.median(comp):.2f} | {runs[0]['hlo_chars'] / 1e6:.2f} | "
              f"{', '.join(f'{c:.1f}' for c in comp)} |")


if __name__ == "__main__":
    main()
