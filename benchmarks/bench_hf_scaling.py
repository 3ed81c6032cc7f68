"""Curvature of random-weight Llama-architecture models at growing size (issue 18, part 5).

For each size: the next-token loss of `batch x seq` random tokens (every position
scored, chunked cross-entropy), its gradient and one Hessian-vector product
(forward-over-reverse), timed as medians of warm calls, with XLA's buffer
assignment of each compiled program (arguments + outputs + temporaries: the
device peak on an accelerator) divided by the parameter count; remat per block
on and off; and top-4 Lanczos on the smallest model.

    python benchmarks/bench_hf_scaling.py --sizes 10M,50M,150M --repeats 3 --out benchmarks/results/hf_scaling.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp

import geomsim  # noqa: F401  (runtime flags)
from geomsim.models.hf import DecoderLM, parse_config
from geomsim.models.hf.tiny import llama_config
from geomsim.models.losses import chunked_cross_entropy

# name -> (vocab, hidden, layers, heads, kv heads, intermediate): Llama-2-like vocabulary.
SIZES = {
    "10M": (32000, 128, 4, 4, 2, 512),
    "50M": (32000, 512, 8, 8, 4, 1536),
    "150M": (32000, 768, 12, 12, 4, 2048),
    "400M": (32000, 1024, 24, 16, 8, 2816),
}


def model_and_batch(size: str, batch: int, seq: int, remat: bool, dtype):
    vocab, hidden, layers, heads, kv, inter = SIZES[size]
    config = parse_config(llama_config(vocab, hidden, layers, heads, kv, inter))
    model = DecoderLM(config, key=jax.random.key(0), dtype=dtype, remat=remat)
    ids = jax.random.randint(jax.random.key(1), (batch, seq), 0, vocab)
    return model, ids


def loss_fn(static, chunk):
    def loss(params, ids):
        m = eqx.combine(params, static)
        h = m.hidden(ids[:, :-1])
        return chunked_cross_entropy(h.reshape(-1, h.shape[-1]), m.unembed, ids[:, 1:].reshape(-1), chunk)

    return loss


def timed(fn, args, repeats: int) -> tuple[float, float, dict]:
    """(compile seconds, median warm seconds, memory analysis in bytes)."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    memory = {k: int(getattr(mem, k)) for k in ("argument_size_in_bytes", "output_size_in_bytes",
                                                 "temp_size_in_bytes", "alias_size_in_bytes")}
    jax.block_until_ready(compiled(*args))
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        runs.append(time.perf_counter() - t0)
    return compile_s, statistics.median(runs), memory | {"runs": runs}


def measure(size: str, args) -> dict:
    out = {"size": size, "shape": SIZES[size], "batch": args.batch, "seq": args.seq, "chunk": args.chunk}
    for remat in (False, True):
        model, ids = model_and_batch(size, args.batch, args.seq, remat, jnp.float32)
        params, static = eqx.partition(model, eqx.is_inexact_array)
        n = sum(x.size for x in jax.tree.leaves(params))
        loss = loss_fn(static, args.chunk)
        v = jax.tree.map(lambda x: jax.random.normal(jax.random.key(2), x.shape, x.dtype), params)

        def hvp(p, v, ids, loss=loss):
            return jax.jvp(lambda q: jax.grad(loss)(q, ids), (p,), (v,))[1]

        rows = {"loss": timed(loss, (params, ids), args.repeats),
                "grad": timed(jax.value_and_grad(loss), (params, ids), args.repeats),
                "hvp": timed(hvp, (params, v, ids), args.repeats)}
        tag = "remat" if remat else "plain"
        for what, (compile_s, seconds, memory) in rows.items():
            peak = memory["argument_size_in_bytes"] + memory["output_size_in_bytes"] + memory["temp_size_in_bytes"]
            out[f"{tag}_{what}"] = {"compile_s": round(compile_s, 2), "seconds": seconds,
                                    "peak_bytes": peak, "bytes_per_param": peak / n, **memory}
        out[f"{tag}_hvp_over_grad"] = rows["hvp"][1] / rows["grad"][1]
        out["params"] = int(n)
        print(json.dumps({k: out[k] for k in out if k.startswith(tag) and k.endswith(("hvp", "grad", "ratio",
                                                                                       "over_grad"))}
                         | {"size": size, "params": n}), flush=True)
    return out


def lanczos_top4(size: str, args) -> dict:
    from geomsim.curvature import eigsh, hessian_operator

    model, ids = model_and_batch(size, args.batch, args.seq, False, jnp.float32)
    params, static = eqx.partition(model, eqx.is_inexact_array)
    loss = loss_fn(static, args.chunk)
    op = hessian_operator(loss, params, [ids])
    solve = jax.jit(eigsh(4, tol=1e-3))
    t0 = time.perf_counter()
    res = jax.block_until_ready(solve(op, jax.random.key(0)))
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = jax.block_until_ready(solve(op, jax.random.key(0)))
    return {"size": size, "first_call_s": first, "warm_s": time.perf_counter() - t0,
            "num_matvecs": int(res.num_matvecs), "eigenvalues": [float(x) for x in res.eigenvalues],
            "residuals": [float(x) for x in res.residuals]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10M,50M", help=f"comma list of {', '.join(SIZES)}")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=129, help="tokens per sequence (seq - 1 scored)")
    parser.add_argument("--chunk", type=int, default=256, help="positions per cross-entropy chunk")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lanczos", action="store_true", help="top-4 Lanczos on the first size")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    sizes = args.sizes.split(",")
    report = {"machine": f"{platform.machine()}, {jax.device_count()} x {jax.devices()[0].device_kind}",
              "date": time.strftime("%Y-%m-%d"), "jax": jax.__version__, "results": [measure(s, args) for s in sizes]}
    if args.lanczos:
        report["lanczos"] = lanczos_top4(sizes[0], args)
        print(json.dumps(report["lanczos"]), flush=True)
    report["max_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
