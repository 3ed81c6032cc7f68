"""Parity errors of geomsim's Hugging Face models against transformers, per architecture.

The numbers tests/test_hf_models.py asserts (bounds 1e-5 and 1e-4), printed as
measured: float32 logits against transformers' float32 logits, and the loss, its
gradient and one Hessian-vector product (geomsim in float64 from the same float32
weights) against transformers' float32 autograd (worst tensor, norm-wise relative).

    python benchmarks/hf_parity.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_hf_models import FIXTURES, VARIANTS, compare, reference, rel  # noqa: E402

from geomsim.models.hf import from_pretrained  # noqa: E402


def main() -> None:
    jax.config.update("jax_enable_x64", True)
    print("| variant | logits (float32) | loss | gradient (worst tensor) | HVP (worst tensor) |")
    print("| --- | --- | --- | --- | --- |")
    for name in VARIANTS:
        ref = reference(name)
        logits = np.asarray(from_pretrained(FIXTURES / name, dtype=jnp.float32)(jnp.asarray(ref["input_ids"])))
        errors = compare(from_pretrained(FIXTURES / name, dtype=jnp.float64), ref, tol=1.0)
        print(f"| {name} | {rel(logits, ref['logits']):.1e} | {errors['loss']:.1e} | {errors['grad']:.1e} | "
              f"{errors['hvp']:.1e} |")


if __name__ == "__main__":
    main()
