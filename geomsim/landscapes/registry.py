"""Name -> landscape factory registry, so the CLI can pick a landscape by name.

A factory has the signature of `quadratic_cubic`: `(key, *, dim, rank,
sharpness, coupling, mu, eps, cubic_coupling, align_cubic, **extra)` returning a
`Landscape`, and must accept traced floats for the grid parameters (the sweep
vmaps it).  Users either register a name or pass `pkg.module:factory`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from geomsim.landscapes.base import Landscape
from geomsim.landscapes.quadratic_cubic import quadratic_cubic

LandscapeFactory = Callable[..., Landscape]

_REGISTRY: dict[str, LandscapeFactory] = {"quadratic_cubic": quadratic_cubic}


def register_landscape(name: str, factory: LandscapeFactory) -> None:
    """Make `factory` available to the sweep as `--landscape name`."""
    if not name or ":" in name:
        raise ValueError(f"landscape name must be non-empty and contain no ':'; got {name!r}")
    _REGISTRY[name] = factory


def available_landscapes() -> list[str]:
    """Registered landscape names."""
    return sorted(_REGISTRY)


def resolve_landscape(spec: str) -> LandscapeFactory:
    """Look up `spec`: a registered name or an import path `pkg.module:factory`.

    Raises:
        ValueError: one line naming the spec and what is allowed.
    """
    if spec in _REGISTRY:
        return _REGISTRY[spec]
    if ":" not in spec:
        raise ValueError(
            f"landscape: unknown name {spec!r}; use one of {available_landscapes()} "
            "or an import path 'pkg.module:factory'"
        )
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"landscape: cannot import module {module_name!r} ({err})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"landscape: {module_name!r} has no callable {attr!r}")
    return factory
