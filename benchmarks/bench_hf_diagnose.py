"""`python -m geomsim.diagnose --hf` on random-weight Llama folders: wall time and peak
memory of a fresh process, full parameters vs one block (`--params`) vs LoRA adapters.

Each folder has a Llama-2-like 32,000-token vocabulary and the tiny tokenizer of
`geomsim.models.hf.tiny` (its ids are a subset), the data are examples/hf/*.jsonl.
Peak memory is the process's maximum resident set (`/usr/bin/time -v`), so it
includes the weights, the Krylov bases of the AIC and the local models, and
XLA's buffers; per parameter it is what a full-parameter diagnosis costs.

    python benchmarks/bench_hf_diagnose.py --sizes 10M,50M --out benchmarks/results/hf_diagnose.json
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_hf_scaling import SIZES  # noqa: E402

VARIANTS = {"full": [], "block": ["--params", "model.layers.0.*"], "lora8": ["--lora-rank", "8"]}


def make_folder(size: str, folder: Path) -> int:
    import jax

    from geomsim.models.hf import DecoderLM, parse_config
    from geomsim.models.hf.tiny import llama_config, tiny_checkpoint

    vocab, hidden, layers, heads, kv, inter = SIZES[size]
    model = DecoderLM(parse_config(llama_config(vocab, hidden, layers, heads, kv, inter)), key=jax.random.key(0))
    data = [ROOT / "examples" / "hf" / f"{n}.jsonl" for n in ("align", "task")]
    tiny_checkpoint(folder, texts=data, model=model)
    return sum(x.size for x in jax.tree.leaves(model) if hasattr(x, "size"))


def run(folder: Path, extra: list[str], out: Path) -> dict:
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "geomsim.diagnose", "--hf", str(folder),
           "--align", str(ROOT / "examples/hf/align.jsonl"), "--task", str(ROOT / "examples/hf/task.jsonl"),
           "--rank", "4", "--out", str(out), "--quiet", *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    rss_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    report = json.loads((out / "report.json").read_text())
    return {"wall_s": round(wall, 1), "max_rss_gib": rss_kib / 2**20, "dim": dimension(folder, extra),
            "report_wall_s": report["wall_seconds"], "num_matvecs": report["aic"]["num_matvecs"],
            "sharpness": report["aic"]["sharpness"]}


def dimension(folder: Path, extra: list[str]) -> int:
    """The number of parameters the diagnosis measures (all, a block, the adapters)."""
    import jax

    from geomsim.diagnose.hf import hf_aligned_model

    flags = dict(zip(extra[::2], extra[1::2], strict=True))
    model = hf_aligned_model(folder, ROOT / "examples/hf/align.jsonl", ROOT / "examples/hf/task.jsonl",
                             params=flags.get("--params", ""), lora_rank=int(flags.get("--lora-rank", 0)))
    return int(sum(x.size for x in jax.tree.leaves(model.params)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10M,50M")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            folder = Path(tmp) / size
            params = make_folder(size, folder)
            for name in args.variants.split(","):
                row = {"size": size, "params": params, "variant": name,
                       **run(folder, VARIANTS[name], Path(tmp) / f"{size}-{name}")}
                row["bytes_per_measured_param"] = row["max_rss_gib"] * 2**30 / row["dim"]
                print(json.dumps(row), flush=True)
                results.append(row)
    if args.out:
        args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
