"""Sweep configuration: one dataclass, parsed from flags and/or a TOML file.

Every field is a TOML key (dashes or underscores) and a `--flag`; flags override
the file, and a `[repro]` table (`paper_repro`'s expectations) is ignored.  The
parsing, help and checks live on the fields (`geomsim.config.option`);
validation raises `ConfigError` with one line naming the field and the allowed
range, which the CLI prints instead of a traceback.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geomsim import config as config_layer
from geomsim.config import ConfigError, at_least, each, in_range, one_of, option, positive
from geomsim.defenses.landscape import DEFENSES
from geomsim.dynamics.optimizers import OPTIMIZERS
from geomsim.landscapes.registry import resolve_landscape

__all__ = ["ConfigError", "SweepConfig", "make_config", "parse_values", "validate"]


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


def _finite(check):
    def finite_check(name, value):
        return f"{name}: must be finite (got {value!r})" if not math.isfinite(value) else check(name, value)

    return finite_check


@dataclass(frozen=True)
class SweepConfig:
    """Everything that determines a sweep's numbers (each field's help gives its units)."""

    landscape: str = option("quadratic_cubic", help="registered landscape name or import path 'pkg.module:factory'")
    dim: int = option(32, help="parameter dimension d (integer >= 3)", check=at_least(3))
    rank: int = option(4, help="alignment subspace dimension k (1 <= k <= dim - 2)", check=at_least(1))
    sharpness: tuple[float, ...] = option(
        tuple(np.geomspace(1.0, 100.0, 16).tolist()), parse=parse_values, check=each(_finite(positive)),
        help="alignment sharpness lambda on S, loss/param^2 (> 0): value, list a,b,c or log range lo:hi:n",
        shown="log range 1:100:16")
    coupling: tuple[float, ...] = option(
        tuple(np.geomspace(0.01, 1.0, 16).tolist()), parse=parse_values, check=each(_finite(at_least(0))),
        help="curvature coupling gamma = ||P_S H_F g|| (>= 0): value, list or log range lo:hi:n",
        shown="log range 0.01:1:16")
    mu: float = option(0.0, help="residual alignment curvature outside S, loss/param^2 (>= 0)", check=at_least(0))
    eps: float = option(0.0, help="initial overlap ||P_S g|| / ||g|| (in [0, 1))", check=in_range(0, 1, open_hi=True))
    cubic_coupling: float = option(0.0, help="||P_S D3L_F[g,g]||, feeds S at third order (>= 0; the t^6 control)",
                                   check=at_least(0))
    align_cubic: float = option(0.0, help="strength of the alignment cubic that rotates S along the path (finite)")
    optimizer: str = option("gd", help=f"one of {', '.join(OPTIMIZERS)}", check=one_of(*OPTIMIZERS))
    lr: float = option(1e-4, help="learning rate = time per step (> 0); flow uses the same time grid", check=positive)
    steps: int = option(10_000, help="number of optimizer steps (integer >= 10); time span = steps * lr",
                        check=at_least(10))
    noise: float = option(0.0, help="sgd gradient-noise standard deviation per coordinate, gradient units (>= 0)",
                          check=at_least(0))
    momentum: float = option(0.9, help="momentum coefficient for 'momentum' (in [0, 1))",
                             check=in_range(0, 1, open_hi=True))
    seeds: int = option(1, help="independent seeds per grid point (integer >= 1)", check=at_least(1))
    seed: int = option(0, help="base random seed (integer >= 0)", check=at_least(0))
    float64: bool = option(True, help="compute in float64 (float32 cannot resolve the early-time law)")
    records: int = option(120, help="log-spaced recording times per run (10..5000)", check=in_range(10, 5000))
    threshold: float = option(1e-6, help="alignment-loss threshold tau for time to failure, loss units (> 0)",
                              check=positive)
    slope_tol: float = option(0.05, help="half-width of the local-slope band defining the onset window (> 0)",
                              check=positive)
    min_decades: float = option(0.5, help="shortest onset window, decades of t (> 0)", check=positive)
    defense: str = option("none", help=f"defense applied to every update, one of {', '.join(DEFENSES)}",
                          check=one_of(*DEFENSES))
    defense_rank: int = option(0, help="directions projected off (tracked_projection: tracked); 0 = rank (>= 0)",
                               check=at_least(0))
    defense_every: int = option(10, help="tracked_projection: re-estimate S every K updates (integer >= 1)",
                                check=at_least(1))
    defense_growth: int = option(1, help="curvature_projection: growth directions added to S0 (integer >= 1)",
                                 check=at_least(1))
    chunk: int = option(64, help="grid points per vmapped batch (integer >= 1)", check=at_least(1))
    landscape_options: dict[str, Any] = option(
        default_factory=dict, flag=False, help="extra keyword arguments for the landscape factory (TOML table only)")

    def check(self) -> None:
        """Cross-field checks (the layer runs each field's own check first)."""
        try:
            factory = resolve_landscape(self.landscape)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if self.defense != "none" and self.optimizer == "flow":
            raise ConfigError("defense: needs a discrete optimizer (gd, momentum, adam, sgd), not flow")
        if not self.defense_rank + self.defense_growth <= self.dim - 1:
            raise ConfigError(f"defense_rank: with defense_growth must stay below dim (got {self.defense_rank} + "
                              f"{self.defense_growth}, dim {self.dim})")
        if not self.rank <= self.dim - 2:
            raise ConfigError(f"rank: must be in [1, dim - 2] = [1, {self.dim - 2}] (got {self.rank})")
        params = inspect.signature(factory).parameters
        takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        for key in self.landscape_options:
            if not (takes_kwargs or key in params):
                raise ConfigError(f"landscape_options.{key}: not an argument of landscape {self.landscape!r}")

    def to_dict(self) -> dict[str, Any]:
        return config_layer.to_dict(self)

    def digest(self) -> str:
        """Stable hash of the configuration (decides whether --resume may reuse a run)."""
        return config_layer.digest(self)

    @property
    def n_points(self) -> int:
        return len(self.sharpness) * len(self.coupling) * self.seeds


def validate(config: SweepConfig) -> SweepConfig:
    """Check every field's range; returns the config unchanged or raises ConfigError."""
    return config_layer.validate(config)


def make_config(file: str | Path | None = None, overrides: dict[str, Any] | None = None) -> SweepConfig:
    """Build a validated config from an optional TOML file plus overrides (flags win)."""
    return config_layer.build(SweepConfig, file, overrides)
