"""The pictures of report.html: curves of metric columns, and attention heatmaps.

Analysis layer (htmlreport.py lays them out in the page). Each builder returns a matplotlib figure,
so tests read their lines, markers and shaded spans.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..names.phases import column_value
from ..recipe.types import Recipe

SEED_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                "#bcbd22", "#17becf"]
WINDOW_COLOURS = ["#9e9e9e", "#ffb74d", "#81c784", "#e57373", "#ba68c8", "#4dd0e1"]


@dataclass
class Series:
    """What a report draws for one variant: its recipe, and per seed its run directory, metrics rows
    and phase-change steps ({column: {rule: step or None}})."""

    name: str
    recipe: Recipe
    dirs: dict[int, Path] = field(default_factory=dict)
    rows: dict[int, list[dict]] = field(default_factory=dict)
    phases: dict[int, dict[str, dict]] = field(default_factory=dict)
    summaries: dict[int, dict] = field(default_factory=dict)


def intervention_label(iv) -> str:
    """How an intervention reads in a legend: 'ablate layer0', 'clamp copy_lag1 → previous_token'."""
    what = iv.name or iv.target
    if iv.kind == "clamp":
        return f"clamp {what} → {iv.source}"
    if iv.kind == "ablate":
        return f"ablate {what}" + (f" ({iv.source})" if iv.source and iv.source != "zero" else "")
    return f"freeze {what}"


def windows_of(recipe: Recipe) -> list[tuple[str, int, int]]:
    """(label, start, end) of every window of the recipe's interventions, `end` clipped to the run."""
    out = []
    for iv in recipe.interventions:
        for a, b in iv.windows:
            out.append((intervention_label(iv), a, min(b, recipe.train.steps)))
    return out


def series_values(rows: list[dict], column: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for r in rows:
        v = column_value(r, column)
        if v is not None:
            steps.append(r["step"])
            values.append(v)
    return steps, values


RULE_MARKERS = ["o", "s", "^", "D", "v", "P"]


def shade_windows(ax, recipe: Recipe, last: int) -> list[str]:
    """Each intervention's windows before `last` shaded and labelled; returns the labels."""
    labels: list[str] = []
    for label, a, b in windows_of(recipe):
        if a >= last:
            continue
        whole = a == 0 and b >= recipe.train.steps
        label = label + (" (whole run)" if whole else f" [{a}, {b})")
        first = label not in labels
        labels += [label] if first else []
        ax.axvspan(a, min(b, last), color=WINDOW_COLOURS[labels.index(label) % len(WINDOW_COLOURS)],
                   alpha=0.12 if whole else 0.3, lw=0, label=label if first else None)
    return labels


def draw_seed(ax, sr: Series, s: int, column: str, colour: str, rules_seen: list[str]) -> None:
    """One seed's line, with a marker per phase rule that fired on the column (a dotted line at the first)."""
    steps, values = series_values(sr.rows[s], column)
    if not steps:
        return
    ax.plot(steps, values, color=colour, lw=1.3, gid=f"seed {s}")
    for j, (rule, step) in enumerate(sr.phases.get(s, {}).get(column, {}).items()):
        if step is None:
            continue
        rules_seen += [rule] if rule not in rules_seen else []
        if j == 0:
            ax.axvline(step, color=colour, ls=":", lw=1.0)
        y = values[min(range(len(steps)), key=lambda i: abs(steps[i] - step))]
        ax.plot([step], [y], RULE_MARKERS[rules_seen.index(rule) % len(RULE_MARKERS)], color=colour, ms=4.5,
                gid=f"crossing {rule} seed {s}")


def curve_figure(series: list[Series], column: str, log: bool = False):
    """One panel per variant that has the column, one line per seed (colour by seed), windows shaded,
    crossings marked: a dot per seed and phase rule on the column (a marker shape per rule), and a
    dotted vertical line at the step of the column's first rule."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    series = [sr for sr in series if any(series_values(rows, column)[0] for rows in sr.rows.values())] or series
    n = len(series)
    cols = min(n, 3)
    nrows = (n + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.0 * nrows + 0.6), squeeze=False, sharey=True)
    seeds = sorted({s for sr in series for s in sr.rows})
    rules_seen: list[str] = []
    for k, sr in enumerate(series):
        ax = axes[k // cols][k % cols]
        last = max((r["step"] for rows in sr.rows.values() for r in rows[-1:]), default=sr.recipe.train.steps)
        labels = shade_windows(ax, sr.recipe, last)
        for s in sorted(sr.rows):
            draw_seed(ax, sr, s, column, SEED_COLOURS[seeds.index(s) % len(SEED_COLOURS)], rules_seen)
        ax.set_xlim(0, last)
        ax.set_title(sr.name, fontsize=10)
        ax.set_xlabel("optimizer step", fontsize=8)
        if k % cols == 0:
            ax.set_ylabel(column if len(column) < 45 else column[:42] + "…", fontsize=8)
        if log:
            ax.set_yscale("log")
        ax.tick_params(labelsize=8)
        if labels:
            ax.legend(fontsize=7, loc="best", title="intervention windows", title_fontsize=7)
    for k in range(n, nrows * cols):
        axes[k // cols][k % cols].axis("off")
    handles = [Line2D([], [], color=SEED_COLOURS[i % len(SEED_COLOURS)], lw=1.5, label=f"seed {s}")
               for i, s in enumerate(seeds)]
    handles += [Line2D([], [], color="#444444", marker=RULE_MARKERS[i % len(RULE_MARKERS)], ls=":" if i == 0 else "",
                       label=f"phase change ({r})") for i, r in enumerate(rules_seen)]
    fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 10), fontsize=8, frameon=False)
    fixed_margins(fig, nrows, cols, top=0.55 + 0.25, between_rows=0.25 + 0.45)
    return fig


def fixed_margins(fig, nrows: int, cols: int, *, left: float = 0.7, right: float = 0.15, bottom: float = 0.45,
                  top: float = 0.3, between_rows: float = 0.55, between_cols: float = 0.25) -> None:
    """Margins and gaps in inches (fonts of 7-10 pt: tick labels, an axis label, a panel title) set once:
    matplotlib's tight layout measures every text twice per draw, which cost more than the drawing
    (save such a figure with `save_figure(..., laid_out=True)`)."""
    w, h = fig.get_size_inches()
    ax_w = (w - left - right - between_cols * (cols - 1)) / cols
    ax_h = (h - top - bottom - between_rows * (nrows - 1)) / nrows
    fig.subplots_adjust(left=left / w, right=1 - right / w, bottom=bottom / h, top=1 - top / h,
                        wspace=between_cols / ax_w, hspace=between_rows / ax_h)


def attention_figure(panels: list[tuple[str, list[list[float]], list[str]]]):
    """Heatmaps: (title, pattern [query][key], axis labels) per panel, rows = queries."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cols = min(len(panels), 4)
    nrows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(3.4 * cols, 3.4 * nrows), squeeze=False)
    for k, (title, A, labels) in enumerate(panels):
        ax = axes[k // cols][k % cols]
        ax.imshow(A, cmap="viridis", vmin=0.0, vmax=1.0)
        T = len(A)
        step = max(1, T // 16)
        ax.set_xticks(range(0, T, step))
        ax.set_yticks(range(0, T, step))
        ax.set_xticklabels(labels[::step], fontsize=6, rotation=90)
        ax.set_yticklabels(labels[::step], fontsize=6)
        ax.set_xlabel("key", fontsize=7)
        ax.set_ylabel("query", fontsize=7)
        ax.set_title(title, fontsize=8)
    for k in range(len(panels), nrows * cols):
        axes[k // cols][k % cols].axis("off")
    return fig


# ---------------------------------------------------------------------------------------
# What to draw


