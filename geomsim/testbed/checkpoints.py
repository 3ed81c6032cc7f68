"""Stage checkpoints: params (with their seed axis) plus JSON metadata.

A checkpoint is reused only if it was saved under the stage's key
(`geomsim.config.stage_key`: the stage's own settings, its parents' keys and the
code's version), so changing, say, the fine-tuning learning rate never retrains the
aligned model, and changing the model width, or the code, always does.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import equinox as eqx
from jaxtyping import PyTree

from geomsim.io import atomic_open, write_json
from geomsim.sweep.progress import Progress
from geomsim.watchdog import watched


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


def checkpointed(out_dir: str | Path, name: str, key: str, like: PyTree, compute: Callable[[], tuple[PyTree, Any]],
                 *, timings: dict[str, float], bar: Progress, meta: dict[str, Any] | None = None
                 ) -> tuple[PyTree, Any, bool]:
    """A stage's params: loaded from `<out_dir>/checkpoints/<name>` when saved under `key`,
    else `compute() -> (params, aux)` under the watchdog, timed into `timings[name]` and saved.

    Returns `(params, aux, loaded)`; `aux` (e.g. the training losses) is None when loaded.
    One progress step either way.
    """
    loaded = load_checkpoint(out_dir, name, like, key)
    if loaded is not None:
        bar.advance(1, f"{name} (checkpoint)")
        return loaded, None, True
    t0 = time.perf_counter()
    params, aux = watched(f"testbed stage {name}", compute)
    timings[name] = round(time.perf_counter() - t0, 2)
    save_checkpoint(out_dir, name, params, {"digest": key, **(meta or {})})
    bar.advance(1, name)
    return params, aux, False
