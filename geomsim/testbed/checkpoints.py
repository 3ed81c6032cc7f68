"""Stage checkpoints: params (with their seed axis) plus JSON metadata.

A checkpoint is reused only if its digest matches the config fields the stage
depends on, so changing, say, the fine-tuning learning rate never retrains the
aligned model, and changing the model width always does.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import equinox as eqx
from jaxtyping import PyTree

from geomsim.io import atomic_open, write_json


def save_checkpoint(out_dir: str | Path, stage: str, params: PyTree, meta: dict[str, Any]) -> Path:
    """Write `<out_dir>/checkpoints/<stage>.eqx` and `.json` atomically."""
    folder = Path(out_dir) / "checkpoints"
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, params)
    with atomic_open(folder / f"{stage}.eqx", "wb") as handle:
        handle.write(buffer.getvalue())
    write_json(folder / f"{stage}.json", {"stage": stage, **meta})
    return folder / f"{stage}.eqx"


def load_checkpoint(out_dir: str | Path, stage: str, like: PyTree, digest: str) -> PyTree | None:
    """Params of `stage` if a checkpoint with this `digest` exists, else None.

    `like` is a pytree with the right structure, shapes and dtypes (e.g. freshly
    initialised params).
    """
    folder = Path(out_dir) / "checkpoints"
    meta_path, data_path = folder / f"{stage}.json", folder / f"{stage}.eqx"
    if not (meta_path.exists() and data_path.exists()):
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("digest") != digest:
        return None
    with open(data_path, "rb") as handle:
        return eqx.tree_deserialise_leaves(handle, like)
