"""Headless matplotlib for scripts and benchmark reports.

:func:`pyplot` selects the non-interactive ``Agg`` backend (so plotting works without a display, in
tests and on servers) and returns ``matplotlib.pyplot``; :func:`save_figure` writes a figure and
closes it so long runs do not accumulate open figures; :func:`line_plot` draws named curves of
one metric against one variable (accuracy against length, against epochs) and saves them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot`` with the ``Agg`` backend (imported on first call)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(
    fig: Any, path: str | os.PathLike[str], *, dpi: int = 110, tight: bool = True
) -> Path:
    """Saves ``fig`` to ``path`` (parent folders created), closes it, and returns the path.

    ``tight=True`` trims the margins (``bbox_inches="tight"``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight" if tight else None)
    pyplot().close(fig)
    return path


def line_plot(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | os.PathLike[str],
    *,
    xlabel: str,
    ylabel: str,
    title: str | None = None,
    log_x_base: float | None = None,
    ylim: tuple[float, float] | None = None,
    title_fontsize: float | None = None,
    legend: bool | None = None,
    figsize: tuple[float, float] = (6, 4),
    dpi: int = 120,
    marker: str = "o-",
    tight: bool = False,
) -> Path:
    """One line per ``name -> (xs, ys)``, saved with :func:`save_figure`; returns the path.

    ``legend=None`` draws a legend when there is more than one curve.
    """
    fig, ax = pyplot().subplots(figsize=figsize)
    for name, (xs, ys) in curves.items():
        ax.plot(xs, ys, marker, label=name)
    if log_x_base is not None:
        ax.set_xscale("log", base=log_x_base)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    if title is not None:
        ax.set_title(title, fontsize=title_fontsize)
    ax.grid(alpha=0.3)
    if legend or (legend is None and len(curves) > 1):
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path, dpi=dpi, tight=tight)
