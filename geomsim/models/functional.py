"""Turn a model object into the pure `(apply_fn, params)` pair the curvature
engine works with, whatever library built it.

* equinox: the inexact-array leaves are the parameters, the rest is static;
* flax linen: `as_functional(module, variables)` uses `variables["params"]`;
* flax nnx: the `nnx.Param` state is the parameters.

`apply_fn(params, inputs)` is pure and jit/vmap friendly in every case.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import equinox as eqx
from jaxtyping import PyTree


def as_functional(model: Any, variables: PyTree | None = None) -> tuple[Callable[[PyTree, Any], Any], PyTree]:
    """Return `(apply_fn, params)` with `apply_fn(params, inputs) == model(inputs)`.

    Args:
        model: an `equinox.Module`, a `flax.linen.Module` (then pass `variables`,
            the dict returned by `module.init`), or a `flax.nnx.Module`.
        variables: flax linen variables; other collections than "params" are
            held fixed.
    """
    if isinstance(model, eqx.Module):
        params, static = eqx.partition(model, eqx.is_inexact_array)

        def apply_eqx(p, inputs):
            return eqx.combine(p, static)(inputs)

        return apply_eqx, params

    if "flax" in sys.modules:  # a flax model implies flax is already imported
        from flax import linen, nnx

        if isinstance(model, linen.Module):
            if variables is None or "params" not in variables:
                raise ValueError("variables: a flax linen module needs its variables dict with a 'params' entry")
            rest = {name: value for name, value in variables.items() if name != "params"}

            def apply_linen(p, inputs):
                return model.apply({"params": p, **rest}, inputs)

            return apply_linen, variables["params"]
        if isinstance(model, nnx.Module):
            graphdef, params, rest = nnx.split(model, nnx.Param, ...)

            def apply_nnx(p, inputs):
                return nnx.merge(graphdef, p, rest)(inputs)

            return apply_nnx, params
    raise ValueError(
        f"model: expected an equinox Module or a flax (linen or nnx) Module, got {type(model).__name__}"
    )
