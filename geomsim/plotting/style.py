"""Shared matplotlib setup: headless backend, consistent labels, output as PNG and/or PDF
(`geomsim.plotting.formats`)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from geomsim.plotting.formats import current_formats  # noqa: E402

TIME_LABEL = "training time t = steps x learning rate"
ALIGN_LABEL = r"alignment loss increase $\Delta L_A(t)$ (loss units)"


def save(fig, out_dir: str | Path, stem: str) -> list[Path]:
    """Save `fig` as `<stem>.<suffix>` for each of the current formats (PNG unless a
    command line or `figure_formats` says otherwise); returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.{suffix}" for suffix in current_formats()]
    for path in paths:
        tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
        fig.savefig(tmp, dpi=130, bbox_inches="tight")
        tmp.replace(path)
    plt.close(fig)
    return paths


def figure(width: float = 5.5, height: float = 4.2):
    return plt.subplots(figsize=(width, height), constrained_layout=True)
