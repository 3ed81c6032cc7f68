"""Which files a figure is saved as: `--figures png|pdf|both|none` on every command line.

PNG alone is the default. Saving a PDF as well doubles the time spent in figures
(measured here, the default sweep's five figures: 4.9 s as PNG + PDF, see
benchmarks/RESULTS.md), and a person looking at a run opens the PNG. `python -m
paper_repro` saves both, since the repository's figures/ keeps the PDFs for papers.
No matplotlib here: the command lines import this before deciding to draw anything.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

CHOICES: dict[str, tuple[str, ...]] = {"png": ("png",), "pdf": ("pdf",), "both": ("png", "pdf"), "none": ()}
DEFAULT = "png"
_current: ContextVar[tuple[str, ...]] = ContextVar("geomsim_figure_formats", default=CHOICES[DEFAULT])


def add_figures_flag(parser: argparse.ArgumentParser) -> None:
    """`--figures png|pdf|both|none` (default png) and `--no-plots`, the same as `--figures none`."""
    parser.add_argument("--figures", choices=list(CHOICES), default=DEFAULT,
                        help="file formats of the figures, drawn once the tables are on disk; none: no figures")
    parser.add_argument("--no-plots", dest="figures", action="store_const", const="none",
                        help="the same as --figures none")


@contextlib.contextmanager
def figure_formats(choice: str) -> Iterator[None]:
    """Save every figure drawn inside as the formats of `choice` (a key of CHOICES)."""
    if choice not in CHOICES:
        raise ValueError(f"figures: expected one of {', '.join(CHOICES)}, got {choice!r}")
    token = _current.set(CHOICES[choice])
    try:
        yield
    finally:
        _current.reset(token)


def current_formats() -> tuple[str, ...]:
    """The file suffixes `geomsim.plotting.style.save` writes now."""
    return _current.get()
