"""Sweep configuration: one dataclass, parsed from flags and/or a TOML file.

Every field is a TOML key (dashes or underscores) and a `--flag`; flags override
the file.  Validation raises `ConfigError` with one line naming the field and
the allowed range, which the CLI prints instead of a traceback.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geomsim.dynamics.optimizers import OPTIMIZERS
from geomsim.landscapes.registry import resolve_landscape


class ConfigError(ValueError):
    """A bad configuration value; the message is one line naming the field."""


def parse_values(name: str, spec: Any) -> tuple[float, ...]:
    """Parse a grid axis: a number, a list `a,b,c` (or TOML list), or a log range `lo:hi:n`."""
    hint = "use a number, a list a,b,c, or a log range lo:hi:n"
    if isinstance(spec, bool):
        raise ConfigError(f"{name}: expected numbers, got a boolean; {hint}")
    if isinstance(spec, (int, float)):
        return (float(spec),)
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise ConfigError(f"{name}: empty list; {hint}")
        try:
            return tuple(float(v) for v in spec)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: malformed list {spec!r}; {hint}") from None
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"{name}: malformed value {spec!r}; {hint}")
    text = spec.strip()
    try:
        if ":" in text:
            parts = text.split(":")
            if len(parts) != 3:
                raise ValueError
            lo, hi, n = float(parts[0]), float(parts[1]), int(parts[2])
            if n < 1:
                raise ConfigError(f"{name}: log range {text!r} needs n >= 1 points")
            if not (lo > 0 and hi > 0):
                raise ConfigError(f"{name}: log range {text!r} needs lo > 0 and hi > 0")
            return tuple(float(v) for v in np.geomspace(lo, hi, n))
        return tuple(float(v) for v in text.split(","))
    except ConfigError:
        raise
    except ValueError:
        raise ConfigError(f"{name}: malformed value {text!r}; {hint}") from None


@dataclass(frozen=True)
class SweepConfig:
    """Everything that determines a sweep's numbers (see `FIELD_HELP` for units)."""

    landscape: str = "quadratic_cubic"
    dim: int = 32
    rank: int = 4
    sharpness: tuple[float, ...] = tuple(np.geomspace(1.0, 100.0, 16).tolist())
    coupling: tuple[float, ...] = tuple(np.geomspace(0.01, 1.0, 16).tolist())
    mu: float = 0.0
    eps: float = 0.0
    cubic_coupling: float = 0.0
    align_cubic: float = 0.0
    optimizer: str = "gd"
    lr: float = 1e-4
    steps: int = 10_000
    noise: float = 0.0
    momentum: float = 0.9
    seeds: int = 1
    seed: int = 0
    float64: bool = True
    records: int = 120
    threshold: float = 1e-6
    slope_tol: float = 0.05
    min_decades: float = 0.5
    chunk: int = 64
    landscape_options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """Stable hash of the configuration (decides whether --resume may reuse a run)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def n_points(self) -> int:
        return len(self.sharpness) * len(self.coupling) * self.seeds


FIELD_HELP: dict[str, str] = {
    "landscape": "registered landscape name or import path 'pkg.module:factory'",
    "dim": "parameter dimension d (integer >= 3)",
    "rank": "alignment subspace dimension k (1 <= k <= dim - 2)",
    "sharpness": "alignment sharpness lambda on S, loss/param^2 (> 0): value, list a,b,c or log range lo:hi:n",
    "coupling": "curvature coupling gamma = ||P_S H_F g|| (>= 0): value, list or log range lo:hi:n",
    "mu": "residual alignment curvature outside S, loss/param^2 (>= 0)",
    "eps": "initial overlap ||P_S g|| / ||g|| (in [0, 1))",
    "cubic_coupling": "||P_S D3L_F[g,g]||, feeds S at third order (>= 0; the t^6 control)",
    "align_cubic": "strength of the alignment cubic that rotates S along the path (finite)",
    "optimizer": f"one of {', '.join(OPTIMIZERS)}",
    "lr": "learning rate = time per step (> 0); flow uses the same time grid",
    "steps": "number of optimizer steps (integer >= 10); time span = steps * lr",
    "noise": "sgd gradient-noise standard deviation per coordinate, gradient units (>= 0)",
    "momentum": "momentum coefficient for 'momentum' (in [0, 1))",
    "seeds": "independent seeds per grid point (integer >= 1)",
    "seed": "base random seed (integer >= 0)",
    "float64": "compute in float64 (float32 cannot resolve the early-time law)",
    "records": "log-spaced recording times per run (10..5000)",
    "threshold": "alignment-loss threshold tau for time to failure, loss units (> 0)",
    "slope_tol": "half-width of the local-slope band defining the onset window (> 0)",
    "min_decades": "shortest onset window, decades of t (> 0)",
    "chunk": "grid points per vmapped batch (integer >= 1)",
    "landscape_options": "extra keyword arguments for the landscape factory (TOML table only)",
}

GRID_FIELDS = ("sharpness", "coupling")
INT_FIELDS = ("dim", "rank", "steps", "seeds", "seed", "records", "chunk")
FLOAT_FIELDS = (
    "mu", "eps", "cubic_coupling", "align_cubic", "lr", "noise", "momentum",
    "threshold", "slope_tol", "min_decades",
)


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{name}: expected an integer, got a boolean")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int):
        return value
    try:
        return int(str(value))
    except ValueError:
        raise ConfigError(f"{name}: expected an integer, got {value!r}") from None


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{name}: expected a number, got a boolean")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if not math.isfinite(out):
        raise ConfigError(f"{name}: must be finite, got {value!r}")
    return out


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.lower() in ("true", "1", "yes")
    raise ConfigError(f"{name}: expected true or false, got {value!r}")


def normalise_key(key: str) -> str:
    return key.replace("-", "_")


def coerce(raw: dict[str, Any]) -> dict[str, Any]:
    """Convert raw values (strings from flags, TOML types) to field types."""
    known = {f.name for f in dataclasses.fields(SweepConfig)}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = normalise_key(key)
        if name not in known:
            raise ConfigError(f"{key}: unknown key; allowed keys are {', '.join(sorted(known))}")
        if name in GRID_FIELDS:
            out[name] = parse_values(name, value)
        elif name in INT_FIELDS:
            out[name] = _as_int(name, value)
        elif name in FLOAT_FIELDS:
            out[name] = _as_float(name, value)
        elif name == "float64":
            out[name] = _as_bool(name, value)
        elif name == "landscape_options":
            if not isinstance(value, dict):
                raise ConfigError("landscape_options: expected a TOML table of keyword arguments")
            out[name] = dict(value)
        else:
            if not isinstance(value, str):
                raise ConfigError(f"{name}: expected a string, got {value!r}")
            out[name] = value
    return out


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML config file into raw key/values (one-line error if unreadable)."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config: file not found: {path}") from None
    except OSError as err:
        raise ConfigError(f"config: cannot read {path}: {err.strerror}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config: {path} is not valid TOML ({err})") from None
    return data


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def validate(config: SweepConfig) -> SweepConfig:
    """Check every field's range; returns the config unchanged or raises ConfigError."""
    try:
        factory = resolve_landscape(config.landscape)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    _check(config.dim >= 3, f"dim: must be an integer >= 3 (got {config.dim})")
    _check(
        1 <= config.rank <= config.dim - 2,
        f"rank: must be in [1, dim - 2] = [1, {config.dim - 2}] (got {config.rank})",
    )
    for s in config.sharpness:
        _check(math.isfinite(s) and s > 0, f"sharpness: every value must be > 0 and finite (got {s})")
    for c in config.coupling:
        _check(math.isfinite(c) and c >= 0, f"coupling: every value must be >= 0 and finite (got {c})")
    _check(config.mu >= 0, f"mu: must be >= 0 (got {config.mu})")
    _check(0 <= config.eps < 1, f"eps: must be in [0, 1) (got {config.eps})")
    _check(config.cubic_coupling >= 0, f"cubic_coupling: must be >= 0 (got {config.cubic_coupling})")
    _check(
        config.optimizer in OPTIMIZERS,
        f"optimizer: must be one of {', '.join(OPTIMIZERS)} (got {config.optimizer!r})",
    )
    _check(config.lr > 0, f"lr: must be > 0 (got {config.lr})")
    _check(config.steps >= 10, f"steps: must be an integer >= 10 (got {config.steps})")
    _check(config.noise >= 0, f"noise: must be >= 0 (got {config.noise})")
    _check(0 <= config.momentum < 1, f"momentum: must be in [0, 1) (got {config.momentum})")
    _check(config.seeds >= 1, f"seeds: must be an integer >= 1 (got {config.seeds})")
    _check(config.seed >= 0, f"seed: must be an integer >= 0 (got {config.seed})")
    _check(10 <= config.records <= 5000, f"records: must be in [10, 5000] (got {config.records})")
    _check(config.threshold > 0, f"threshold: must be > 0 (got {config.threshold})")
    _check(config.slope_tol > 0, f"slope_tol: must be > 0 (got {config.slope_tol})")
    _check(config.min_decades > 0, f"min_decades: must be > 0 (got {config.min_decades})")
    _check(config.chunk >= 1, f"chunk: must be an integer >= 1 (got {config.chunk})")
    params = inspect.signature(factory).parameters
    takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for key in config.landscape_options:
        _check(
            takes_kwargs or key in params,
            f"landscape_options.{key}: not an argument of landscape {config.landscape!r}",
        )
    return config


def make_config(file: str | Path | None = None, overrides: dict[str, Any] | None = None) -> SweepConfig:
    """Build a validated config from an optional TOML file plus overrides (flags win)."""
    raw: dict[str, Any] = {}
    if file is not None:
        raw.update(coerce(load_toml(file)))
    raw.update(coerce(overrides or {}))
    return validate(SweepConfig(**raw))
