"""The subcircuit graph as a picture (graph.png).

Analysis layer, under graph.py (which calls `draw_graph` when it saves). It draws a
networkx MultiDiGraph of the shape graph.py builds: subcircuit nodes (left column) and
behaviour nodes (right column), placed by networkx's `multipartite_layout`; one arrow per
(subcircuit, behaviour): the effect of intervening on it with the fewest other clamps on
(green: the phase change comes earlier, red: later); the strongest composition increases are
listed underneath.
"""
from __future__ import annotations

import os
from pathlib import Path

import networkx as nx

from .store import atomic_save

SUBCIRCUIT, BEHAVIOUR = "#dbe9f6", "#fde2cf"
EARLIER, LATER = "#2e7d32", "#c62828"


def shown_effects(g: nx.MultiDiGraph, condition: str) -> dict[tuple[str, str], dict]:
    """(subcircuit, behaviour) → the effect edge with the fewest other clamps (then the strongest)."""
    effects: dict = {}
    for a, b, d in g.edges(data=True):
        if d["kind"] == "effect" and d.get("condition") in (condition, None) and d.get("median") is not None:
            best = effects.get((a, b))
            rank = lambda e: (len(e.get("with") or ()), e["median"])  # noqa: E731
            if best is None or rank(d) < rank(best):
                effects[(a, b)] = d
    return effects


def strongest_composition(g: nx.MultiDiGraph, n: int = 8) -> list[tuple[str, str, dict]]:
    """The n composition edges whose score rose most above the init baseline."""
    best: dict = {}
    for a, b, d in g.edges(data=True):
        if d["kind"].endswith("composition") and d.get("median") is not None:
            gain = d["median"] - (d.get("baseline") or 0)
            if (d["kind"], a, b) not in best or gain > best[d["kind"], a, b][0]:
                best[d["kind"], a, b] = (gain, d)
    return [(a, b, d) for (_, a, b), (_, d) in sorted(best.items(), key=lambda e: -e[1][0])][:n]


def effect_label(d: dict) -> str:
    med = d["median"]
    earlier = med < 1
    text = (f"×{1 / med:.1f} earlier" if earlier and med > 0 else "at once" if earlier else
            "prevents" if d.get("prevents") else f"×{med:.2f} later")
    if d.get("censored"):
        text += f" (bound: {d['censored']}/{d['n']} censored)"
    kinds = sorted({i.split(" ")[0] for i in d.get("interventions") or ()})
    return f"{'/'.join(kinds)}: {text}  [{d['variant'].split('/', 1)[1]}]"


def draw_graph(g: nx.MultiDiGraph, png: str | os.PathLike, condition: str = "reference") -> Path:
    """Draw the graph's effects under one condition into a PNG (written atomically)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    effects = shown_effects(g, condition)
    subs = [n for n, d in g.nodes(data=True) if d["kind"] == "subcircuit"]
    shown = [n for n in subs if any(a == n for a, _ in effects)] or subs
    behs = [n for n, d in g.nodes(data=True) if d["kind"] == "behaviour"]
    comp = strongest_composition(g)

    pic = nx.DiGraph()
    pic.add_nodes_from(shown, layer=0)
    pic.add_nodes_from(behs, layer=1)
    edges = [(a, b, d) for (a, b), d in sorted(effects.items()) if a in pic and b in pic]
    pic.add_edges_from((a, b) for a, b, _ in edges)
    pos = nx.multipartite_layout(pic, subset_key="layer", align="vertical", scale=1.0)

    labels = {}
    for name in shown:
        form = g.nodes[name].get("formation", {}).get(condition)
        labels[name] = name + (f"\nforms alone at ~{form['median']:.0f} steps" if form and form.get("median") else "")
    for name in behs:
        labels[name] = name.replace("phase:", "phase change of\n")

    n = max(len(shown), len(behs), 2)
    fig, ax = plt.subplots(figsize=(12, 1.6 + 1.0 * n + 0.22 * len(comp)))
    colours = [EARLIER if d["median"] < 1 else LATER for _, _, d in edges]
    nx.draw_networkx_edges(pic, pos, edgelist=[(a, b) for a, b, _ in edges], edge_color=colours, ax=ax,
                           arrows=True, arrowstyle="-|>", arrowsize=14, width=1.1, node_size=3000)
    for group, colour in ((shown, SUBCIRCUIT), (behs, BEHAVIOUR)):
        nx.draw_networkx_labels(pic, pos, labels={k: labels[k] for k in group}, font_size=8, ax=ax,
                                bbox=dict(boxstyle="round", fc=colour, ec="#555555"))
    for k, (a, b, d) in enumerate(edges):
        t = 0.3 + 0.4 * ((k * 3) % 5) / 4                       # spread the labels along the arrows
        (x0, y0), (x1, y1) = pos[a], pos[b]
        ax.text(x0 + t * (x1 - x0), y0 + t * (y1 - y0), effect_label(d), fontsize=7, ha="center", va="center",
                color=colours[k], bbox=dict(fc="white", ec="none", alpha=0.8, pad=0.5))
    if comp:
        lines = ["composition at the end of training (init in brackets), strongest increases:"] + [
            f"  {d['kind'].replace('_', '-')}: {a} → {b}  {d['median']:.2f} ({d.get('baseline') or 0:.2f})"
            for a, b, d in comp]
        ax.text(0.01, 0.01, "\n".join(lines), transform=ax.transAxes, fontsize=7.5, va="bottom", ha="left",
                color="#6a1b9a", family="monospace")
    ax.margins(x=0.25, y=0.15 + 0.03 * len(comp))
    ax.axis("off")
    ax.set_title(f"subcircuit graph ({condition}): how an intervention on each subcircuit (clamp, ablate or "
                 "freeze, as labelled) moves each phase change\n(green: earlier, red: later; [the run, "
                 "against its parent]; censored: a run that never changed, counted at its length)", fontsize=9)
    return save_figure(fig, png)


def save_figure(fig, path: str | os.PathLike) -> Path:
    """A matplotlib figure as a PNG, written atomically; the figure is closed either way."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    try:
        atomic_save(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)
    return Path(path)
