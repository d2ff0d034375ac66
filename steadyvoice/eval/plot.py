"""PNG plot of per-file scores: one panel per metric column, noisy vs estimate as box + strip plots.

Uses matplotlib's object-oriented API with the Agg canvas (no pyplot, so the caller's backend and
global state are untouched). The PNG is written atomically.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from steadyvoice.errors import DataError, os_failure
from steadyvoice.fileio import atomic_write

__all__ = ["plot_scores"]

_COLORS = {"noisy": "#9e9e9e", "estimate": "#1f77b4"}


def plot_scores(path: str | Path, rows: list[dict], columns: list[str], *, has_noisy: bool,
                title: str | None = None, noisy_label: str = "noisy") -> None:
    """Write a PNG with one panel per column: per-file points and a box per signal kind.

    ``noisy_label`` names the unprocessed input on the x axis ("mixture" for separation).
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise DataError("plotting needs matplotlib: pip install matplotlib") from None
    ok = [row for row in rows if row["status"] == "ok"]
    kinds = ["noisy", "estimate"] if has_noisy else ["estimate"]
    ncols = min(4, max(1, len(columns)))
    nrows = max(1, math.ceil(len(columns) / ncols))
    fig = Figure(figsize=(3.2 * ncols, 3.0 * nrows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    rng = np.random.default_rng(0)  # fixed jitter: the same scores give the same picture
    for i, column in enumerate(columns):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        data = [[row[kind][column] for row in ok if math.isfinite(row[kind][column])] for kind in kinds]
        positions = np.arange(1, len(kinds) + 1)
        if any(data):
            boxes = ax.boxplot([d if d else [np.nan] for d in data], positions=positions, widths=0.5,
                               showfliers=False, patch_artist=True)
            for patch, kind in zip(boxes["boxes"], kinds):
                patch.set_facecolor(_COLORS[kind])
                patch.set_alpha(0.35)
            xs = []
            for pos, values, kind in zip(positions, data, kinds):
                xs.append(pos + rng.uniform(-0.12, 0.12, size=len(values)))
                ax.scatter(xs[-1], values, s=12, color=_COLORS[kind], zorder=3)
            if has_noisy and len(data[0]) == len(data[1]):  # the same files: join each noisy-estimate pair
                for x0, x1, y0, y1 in zip(xs[0], xs[1], data[0], data[1]):
                    ax.plot([x0, x1], [y0, y1], color="#bbbbbb", linewidth=0.6, zorder=2)
        else:
            ax.text(0.5, 0.5, "no scores", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks(positions, [noisy_label if kind == "noisy" else kind for kind in kinds])
        ax.set_xlim(0.4, len(kinds) + 0.6)
        ax.set_title(column)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title or f"per-file scores ({len(ok)} files)")
    _save_png(fig, Path(path))


def _save_png(fig, path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda fh: fig.savefig(fh, format="png"))
    except OSError as exc:
        raise os_failure(DataError, path, exc, "cannot write the plot") from None
