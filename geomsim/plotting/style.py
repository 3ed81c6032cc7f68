"""Shared matplotlib setup: headless backend, consistent labels, PNG + PDF output."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TIME_LABEL = "training time t = steps x learning rate"
ALIGN_LABEL = r"alignment loss increase $\Delta L_A(t)$ (loss units)"


def save(fig, out_dir: str | Path, stem: str) -> list[Path]:
    """Save `fig` as `<stem>.png` and `<stem>.pdf`; returns both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"]
    for path in paths:
        tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
        fig.savefig(tmp, dpi=130, bbox_inches="tight")
        tmp.replace(path)
    plt.close(fig)
    return paths


def figure(width: float = 5.5, height: float = 4.2):
    return plt.subplots(figsize=(width, height), constrained_layout=True)
