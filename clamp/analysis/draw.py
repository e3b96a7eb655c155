"""The subcircuit graph as a picture (graph.png).

Analysis layer, under graph.py (which calls `draw_graph` when it saves). It draws a
networkx MultiDiGraph of the shape graph.py builds in three layered columns: subcircuit nodes
(ordered by model layer), one label per effect in a column of its own (so no two labels overlap),
and behaviour nodes; one arrow per (subcircuit, behaviour): the effect of intervening on it with
the fewest other interventions on, worded by its kind (clamping, ablating, freezing; green: the
phase change comes earlier, red: later); the strongest composition increases are dashed arcs,
listed underneath.
"""
from __future__ import annotations

import os
from pathlib import Path

import networkx as nx

from ..names.sites import block_layer
from ..store.files import atomic_save

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


def intervention_phrase(how: str, subcircuit: str) -> str:
    """A graph edge's intervention ('clamp to induction(strength=1.0)@[0,1000)', 'ablate (zero)',
    'freeze (hold@[0,400))') as words: 'clamping match to induction during [0,1000)'."""
    kind, _, rest = how.partition(" ")
    src = rest.removeprefix("to ")
    if kind != "clamp" and src.startswith("(") and src.endswith(")"):
        src = src[1:-1]
    src, _, windows = src.partition("@")
    name = src.split("(", 1)[0]
    when = f" during {windows}" if windows else ""
    if kind == "clamp":
        return f"clamping {subcircuit} to {name}{when}"
    if kind == "ablate":
        return f"ablating {subcircuit}" + (f" ({name})" if name and name != "zero" else "") + when
    if kind == "freeze":
        return f"freezing {subcircuit}{when}"
    return f"{how} {subcircuit}"


def effect_text(d: dict) -> str:
    med = d["median"]
    if d.get("prevents"):
        text = "prevents it (most seeds never changed)"
    elif med == 1:
        text = "no change in the median"
    elif med < 1:
        text = f"{1 / med:.1f}× earlier" if med > 0 else "at once"
    else:
        text = f"{med:.2f}× later"
    rng = f"ratio {d['min']:.2f}–{d['max']:.2f}, {d['n']} seeds" if d.get("min") is not None else f"{d['n']} seeds"
    if d.get("censored"):
        rng += f", {d['censored']} censored: a bound"
    return f"{text} ({rng})"


def effect_label(d: dict, subcircuit: str) -> str:
    hows = d.get("interventions") or ["intervening on"]
    phrases = [intervention_phrase(h, subcircuit) for h in hows]
    if len(phrases) > 1 and all(p.startswith(f"clamping {subcircuit} to ") for p in phrases):
        head = f"clamping {subcircuit} to "
        phrase = head + " + ".join(p.removeprefix(head) for p in phrases)
    else:
        phrase = " + ".join(phrases)
    if d.get("with"):
        phrase += f" (with {', '.join(d['with'])})"
    return f"{phrase}\n→ {effect_text(d)}  [{d['variant'].split('/', 1)[1]} vs {d['parent'].split('/', 1)[1]}]"


def behaviour_text(name: str) -> str:
    """'phase:loss:below' → 'loss: phase change (below)'."""
    body = name.removeprefix("phase:")
    col, _, rule = body.rpartition(":")
    return f"phase change of\n{col}\n({rule} rule)"


def _layer_of(sites: list[str]) -> float:
    """The first model layer a subcircuit's sites name (embeddings -1, unembedding last, unknown 99)."""
    ls = [L for x in sites for L in [block_layer(x)] if L is not None]
    if ls:
        return min(ls)
    if any(x.startswith(("embed", "pos_embed", "hook_embed", "hook_pos")) for x in sites):
        return -1
    if any(x.startswith(("unembed", "hook_logits", "ln_final")) for x in sites):
        return 90
    return 99


def draw_graph(g: nx.MultiDiGraph, png: str | os.PathLike, condition: str = "reference") -> Path:
    """Draw the graph's effects under one condition into a PNG (written atomically)."""
    return save_figure(graph_figure(g, condition), png)


NO_CHANGE = "#757575"


def effect_colour(d: dict) -> str:
    """Green when every seed's phase change came earlier, red when every seed's came later (or most
    never came), grey when the seeds disagree or nothing moved: a direction the data do not show is
    not drawn as one."""
    if d.get("prevents"):
        return LATER
    lo, hi = d.get("min"), d.get("max")
    if lo is not None and hi is not None and hi < 1:
        return EARLIER
    if lo is not None and hi is not None and lo > 1:
        return LATER
    return NO_CHANGE


def graph_figure(g: nx.MultiDiGraph, condition: str = "reference"):
    """The graph's effects under one condition as a matplotlib figure.

    Three layered columns: subcircuits (ordered by the model layer their sites are in), one label per
    experiment and phase change (its own row, so labels never overlap; rows grouped by phase change,
    each phase change level with its group), phase changes. An experiment that intervened on several
    subcircuits at once has one label joined to each. Green: every seed earlier; red: every seed later
    or prevented; grey: no consistent direction. Composition increases are dashed purple arcs between
    subcircuits, listed below."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    effects = shown_effects(g, condition)
    subs = [n for n, d in g.nodes(data=True) if d["kind"] == "subcircuit"]
    shown = [n for n in subs if any(a == n for a, _ in effects)] or subs
    comp = [(a, b, d) for a, b, d in strongest_composition(g, 6) if a in shown and b in shown]

    def sites(n):
        d = g.nodes[n]
        return list(d.get("sites") or []) + list(d.get("params") or [])
    shown.sort(key=lambda n: (_layer_of(sites(n)), n))
    behs = sorted(n for n, d in g.nodes(data=True) if d["kind"] == "behaviour")
    groups: dict = {}                 # (behaviour, variant, parent) → subcircuits, the effect
    for (a, b), d in effects.items():
        if a in shown and b in behs:
            key = (b, d["variant"], d["parent"])
            groups.setdefault(key, ([], d))[0].append(a)
    order = sorted(groups, key=lambda k: (behs.index(k[0]), min(shown.index(a) for a in groups[k][0]), k[1]))
    rows = max(len(shown), len(order), 2)
    fig, ax = plt.subplots(figsize=(15, 1.5 + 0.8 * rows + 0.2 * len(comp)))
    ax.set_xlim(-0.45, 2.35)
    ax.set_ylim(-0.8 - 0.35 * len(comp), rows - 0.2)

    def ys(n: int) -> list[float]:                   # n rows spread over the height, top first
        return [rows - 1 - (i + 0.5) * rows / n + 0.5 for i in range(n)] if n else []
    boxes = {}
    for name, y in zip(shown, ys(len(shown))):
        layer = _layer_of(sites(name))
        where = ("" if layer == 99 else "embeddings" if layer == -1 else "unembedding" if layer == 90
                 else f"layer {layer}")
        form = g.nodes[name].get("formation", {}).get(condition)
        text = name + (f"  ({where})" if where else "")
        if form and form.get("median"):
            text += f"\nforms alone at ~{form['median']:.0f} steps"
        boxes[name] = ax.text(0, y, text, ha="center", va="center", fontsize=8.5, zorder=4,
                              bbox=dict(boxstyle="round", fc=SUBCIRCUIT, ec="#555555"))
    label_y = dict(zip(order, ys(len(order))))
    for k, b in enumerate(behs):
        mine = [label_y[o] for o in order if o[0] == b]
        y = sum(mine) / len(mine) if mine else ys(len(behs))[k]
        boxes[b] = ax.text(2.05, y, behaviour_text(b), ha="center", va="center", fontsize=8.5, zorder=4,
                           bbox=dict(boxstyle="round", fc=BEHAVIOUR, ec="#555555"))
    for key in order:
        names, d = groups[key]
        b = key[0]
        colour = effect_colour(d)
        text = " + ".join(effect_label(d, a).split("\n")[0].split(" (with ")[0] for a in names)
        text += "\n" + effect_label(d, names[0]).split("\n", 1)[1]
        # labels share one left edge, so a line from a subcircuit ends at its label's edge without
        # crossing another label; labels sit above the lines, so one passing behind stays readable
        lab = ax.text(0.55, label_y[key], text, ha="left", va="center", fontsize=7.5, color=colour, zorder=4,
                      bbox=dict(boxstyle="round", fc="white", ec=colour, lw=0.8),
                      gid=f"effect {'+'.join(names)} -> {b}")
        for a in names:
            ax.annotate("", xy=(0.0, 0.5), xycoords=lab, xytext=(1.0, 0.5), textcoords=boxes[a], zorder=2,
                        arrowprops=dict(arrowstyle="-", color=colour, lw=1.0, shrinkA=0, shrinkB=0))
        ax.annotate("", xy=(0.0, 0.5), xycoords=boxes[b], xytext=(1.0, 0.5), textcoords=lab, zorder=2,
                    arrowprops=dict(arrowstyle="-|>", color=colour, lw=1.1, mutation_scale=14, shrinkA=0,
                                    shrinkB=2))
    for k, (a, b, d) in enumerate(comp):
        ax.annotate("", xy=(0.0, 0.5), xycoords=boxes[b], xytext=(0.0, 0.5), textcoords=boxes[a],
                    arrowprops=dict(arrowstyle="-|>", color="#6a1b9a", lw=0.9, ls="--",
                                    connectionstyle=f"arc3,rad={0.35 + 0.1 * k}"))
    if comp:
        lines = ["composition at the end of training (init in brackets), strongest increases (dashed arcs):"] + [
            f"  {d['kind'].replace('_', '-')}: {a} → {b}  {d['median']:.2f} ({d.get('baseline') or 0:.2f})"
            for a, b, d in comp]
        ax.text(-0.43, -0.6 - 0.35 * len(comp), "\n".join(lines), fontsize=7.5, va="bottom", ha="left",
                color="#6a1b9a", family="monospace")
    ax.axis("off")
    ax.set_title(f"subcircuit graph ({condition}): what intervening on each subcircuit did to each phase change, "
                 "paired by seed against the variant without it\n(green: every seed earlier; red: every seed later, "
                 "or prevented; grey: no consistent direction; the ratio is of phase-change steps; censored: a run "
                 "that never changed, counted at its length)", fontsize=9)
    return fig


def save_figure(fig, path: str | os.PathLike) -> Path:
    """A matplotlib figure as a PNG, written atomically; the figure is closed either way."""
    import matplotlib.pyplot as plt
    if not fig.get_layout_engine():
        fig.tight_layout()
    try:
        atomic_save(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)
    return Path(path)
