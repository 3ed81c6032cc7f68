"""Metadata recorded with every result: package versions and the machine."""

from __future__ import annotations

import importlib.metadata
import platform
import sys


def environment_versions() -> dict[str, str]:
    """Versions of Python, geomsim and its numerical dependencies, plus the backend."""
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for package in ("geomsim", "jax", "jaxlib", "optax", "equinox", "diffrax", "matfree", "numpy", "matplotlib"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    try:
        import jax

        versions["jax_backend"] = jax.default_backend()
        versions["jax_devices"] = ", ".join(str(d) for d in jax.devices())
    except Exception as err:  # backend discovery must never break a run
        versions["jax_backend"] = f"unavailable ({err})"
    return versions
