"""One JSON codec for everything geomsim writes: strict JSON, `null` for a missing number.

Python's `json` writes NaN and Infinity as bare `NaN` / `Infinity`, which are not
JSON (jq, browsers and most non-Python readers reject the file).  `to_jsonable`
turns every non-finite float into `None` (-> `null`), numpy scalars and arrays
into Python numbers and lists, and paths into strings; `dumps` then refuses
anything non-finite that slipped through (`allow_nan=False`).  Where the reason
for a missing number matters, the writer puts it in a sibling field.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def to_jsonable(obj: Any) -> Any:
    """A copy of `obj` made of dict / list / str / int / float (finite) / bool / None."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, str):
        return obj
    if hasattr(obj, "__array__"):  # jax arrays
        return to_jsonable(np.asarray(obj))
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def dumps(obj: Any, *, indent: int | None = 2, sort_keys: bool = True) -> str:
    """Strict JSON text of `to_jsonable(obj)`."""
    return json.dumps(to_jsonable(obj), indent=indent, sort_keys=sort_keys, allow_nan=False)


def loads_strict(text: str) -> Any:
    """Parse JSON, rejecting the non-standard constants NaN / Infinity / -Infinity."""

    def reject(constant: str):
        raise ValueError(f"not strict JSON: bare {constant}")

    return json.loads(text, parse_constant=reject)
