"""Defenses against alignment collapse, as optax gradient transformations.

Each composes with any optimizer, `optax.chain(optimizer, defense)` (after it,
so the applied step is the defended one), keeps its state explicit and jits /
vmaps with the rest of a run:

    none                  `optax.identity()`
    static_projection     project off S0, the top-k alignment eigenspace at theta0
    tracked_projection    project off S re-estimated every K updates (warm Lanczos)
    curvature_projection  project off S0 and the directions whose alignment
                          curvature grows fastest along the path (D^3 L_A[u])

`build_defense` builds any of them by name for a landscape (the sweep's
`--defense`). The laws each one obeys are derived in docs/theory.md ("Defenses").
"""

from geomsim.defenses.curvature_aware import curvature_projection, growth_directions, orthonormal_union
from geomsim.defenses.landscape import DEFENSES, LandscapeDefense, build_defense
from geomsim.defenses.projection import (
    TrackedProjectionState,
    project_off,
    sharp_rows,
    static_projection,
    tracked_projection,
)

__all__ = [
    "DEFENSES",
    "LandscapeDefense",
    "TrackedProjectionState",
    "build_defense",
    "curvature_projection",
    "growth_directions",
    "orthonormal_union",
    "project_off",
    "sharp_rows",
    "static_projection",
    "tracked_projection",
]
