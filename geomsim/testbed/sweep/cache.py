"""Resumable stages: arrays saved under `<out>/cache/` with the digest of what made them.

A rerun into the same folder loads every stage (and every finished chunk of
runs) whose digest still matches and recomputes only the rest.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from geomsim.io import atomic_open, write_json


def is_cached(out_dir: Path, name: str, digest: str) -> bool:
    """Whether `<out>/cache/<name>.npz` holds arrays made with this digest."""
    folder = out_dir / "cache"
    data_path, meta_path = folder / f"{name}.npz", folder / f"{name}.json"
    return data_path.exists() and meta_path.exists() and json.loads(meta_path.read_text()).get("digest") == digest


def cached_arrays(out_dir: Path, name: str, digest: str, compute: Callable[[], dict[str, np.ndarray]]
                  ) -> tuple[dict[str, np.ndarray], bool]:
    """`compute()` unless `<out>/cache/<name>.npz` was written with this digest.

    Returns the arrays and whether they came from the cache.
    """
    folder = out_dir / "cache"
    data_path, meta_path = folder / f"{name}.npz", folder / f"{name}.json"
    if is_cached(out_dir, name, digest):
        with np.load(data_path) as saved:
            return {k: saved[k] for k in saved.files}, True
    arrays = {k: np.asarray(v) for k, v in compute().items()}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    with atomic_open(data_path, "wb") as handle:
        handle.write(buffer.getvalue())
    write_json(meta_path, {"name": name, "digest": digest})
    return arrays, False
