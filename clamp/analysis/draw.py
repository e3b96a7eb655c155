"""The subcircuit graph as a picture (graph.png).

Analysis layer, under graph.py (which calls `draw_graph` when it saves). From the networkx
MultiDiGraph graph.py builds, it makes a display graph of three layers (subcircuits ordered by
model layer; one label node per effect; behaviours), lays it out with networkx's multipartite
layout and draws it with networkx's drawing functions: one line per (subcircuit, behaviour) through
the label of the effect of intervening on it with the fewest other interventions on, worded by its
kind (clamping, ablating, freezing; green: the phase change comes earlier, red: later); the
strongest composition increases are dashed arcs, listed underneath.
"""
from __future__ import annotations

import os
from pathlib import Path

import networkx as nx

from ..names.sites import block_layer
from ..store.files import atomic_save
from .wording import case, short

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
    """An effect edge in a few words (analysis/wording.py's cases)."""
    return short(d)


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
    never came), grey otherwise: the colour of the effect's case (analysis/wording.py), so a direction
    the data do not show is not drawn as one."""
    return {"earlier": EARLIER, "later": LATER, "prevents": LATER}.get(case(d), NO_CHANGE) if d.get(
        "median") is not None else NO_CHANGE


TITLE = ("subcircuit graph ({condition}): what intervening on each subcircuit did to each phase change, paired by "
         "seed against the variant without it\n(green: every seed earlier; red: every seed later, or prevented; grey: "
         "no consistent direction; the ratio is of phase-change steps; censored: a run that never changed, counted "
         "at its length)")


def graph_figure(g: nx.MultiDiGraph, condition: str = "reference"):
    """The graph's effects under one condition as a matplotlib figure, laid out and drawn by networkx.

    A display graph of three layers (networkx's multipartite layout, one column each): subcircuits
    (ordered by the model layer their sites are in), one label node per experiment and phase change,
    phase changes. An experiment that intervened on several subcircuits at once has one label joined
    to each. Green: every seed earlier; red: every seed later or prevented; grey: no consistent
    direction. Composition increases are dashed purple arcs between subcircuits, listed below. Rows are
    as tall as the tallest label, so no two boxes overlap."""
    import matplotlib
    matplotlib.use("Agg")
    D, comp = display_graph(g, condition)
    return _draw(D, place(D), comp, condition)


def display_graph(g: nx.MultiDiGraph, condition: str) -> tuple[nx.DiGraph, list]:
    """The picture as a graph: subcircuit (layer 0), effect-label (1) and behaviour (2) nodes with their
    text and colours, in drawing order; and the composition edges to draw between subcircuits."""
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


    D = nx.DiGraph()                  # the picture: nodes in drawing order (top to bottom in each column)
    for name in reversed(shown):
        layer = _layer_of(sites(name))
        where = ("" if layer == 99 else "embeddings" if layer == -1 else "unembedding" if layer == 90
                 else f"layer {layer}")
        form = g.nodes[name].get("formation", {}).get(condition)
        text = name + (f"  ({where})" if where else "")
        if form and form.get("median"):
            text += f"\nforms alone at ~{form['median']:.0f} steps"
        D.add_node(name, layer=0, text=text, fc=SUBCIRCUIT, ec="#555555", colour="black", size=8.5)
    for key in reversed(order):
        names, d = groups[key]
        text = " + ".join(effect_label(d, a).split("\n")[0].split(" (with ")[0] for a in names)
        text += "\n" + effect_label(d, names[0]).split("\n", 1)[1]
        node = f"effect {'+'.join(names)} -> {key[0]} [{key[1]} vs {key[2]}]"
        D.add_node(node, layer=1, text=text, fc="white", ec=effect_colour(d), colour=effect_colour(d), size=7.5)
        for a in names:
            D.add_edge(a, node, colour=effect_colour(d), arrow=False)
        D.add_edge(node, key[0], colour=effect_colour(d), arrow=True)
    for b in reversed(behs):
        D.add_node(b, layer=2, text=behaviour_text(b), fc=BEHAVIOUR, ec="#555555", colour="black", size=8.5)
    return D, comp


def place(D: nx.DiGraph) -> dict:
    """Node positions: networkx's multipartite layout gives the columns; within a column the nodes keep
    their order (by model layer, by phase change) and spread over the whole height, so a short column
    sits level with its rows."""
    pos = nx.multipartite_layout(D, subset_key="layer", align="vertical", scale=1.0)
    xs = sorted({round(float(p[0]), 9) for p in pos.values()})
    for k in range(3):
        col = [n for n in D.nodes if D.nodes[n]["layer"] == k][::-1]            # top first
        for i, n in enumerate(col):
            x = xs.index(round(float(pos[n][0]), 9))
            pos[n] = (-1.0 + 2.0 * x / max(len(xs) - 1, 1) if len(xs) > 1 else 0.0,
                      1.0 - (2 * i + 1) / len(col))
    return pos


def _draw(D: nx.DiGraph, pos: dict, comp: list, condition: str):
    """Boxes (networkx labels), then edges from box edge to box edge (networkx edges between ports)."""
    import matplotlib.pyplot as plt
    columns = [[n for n, d in D.nodes(data=True) if d["layer"] == k] for k in range(3)]
    lines = max(d["text"].count("\n") + 1 for _, d in D.nodes(data=True)) if D else 1
    rows = max(len(c) for c in columns) if D else 1
    row_h = 0.2 + 0.16 * lines                                         # inches: the tallest box and a gap
    fig, ax = plt.subplots(figsize=(16, 1.6 + rows * row_h + 0.2 * len(comp)))
    ax.set_xlim(-1.45, 1.45)
    ax.set_ylim(-1.0 - (0.1 + 0.12 * len(comp)), 1.0)
    ax.axis("off")
    texts = {}
    for n, d in D.nodes(data=True):                                    # one labelled box per node
        texts.update(nx.draw_networkx_labels(
            D, pos, labels={n: d["text"]}, font_size=d["size"], font_color=d["colour"], ax=ax,
            horizontalalignment="center", bbox=dict(boxstyle="round", fc=d["fc"], ec=d["ec"], lw=0.8)))
    for n, t in texts.items():
        t.set_zorder(4)
        t.set_gid(n)
    ax.set_title(TITLE.format(condition=condition), fontsize=9)
    fig.tight_layout()                                                 # the final geometry, then measured once
    fig.set_layout_engine("none")
    fig.canvas.draw()                                                  # box sizes, for where edges end
    renderer = fig.canvas.get_renderer()                               # type: ignore[attr-defined]
    inv = ax.transData.inverted()
    edge_x = {}                                                        # node → (left, right) of its box
    for n, t in texts.items():
        bb = t.get_bbox_patch().get_window_extent(renderer)
        (x0, _), (x1, _) = inv.transform([(bb.x0, bb.y0), (bb.x1, bb.y1)])
        edge_x[n] = (float(x0), float(x1))
    # each edge runs from the right edge of its source's box to the left edge of its target's (ports)
    P = nx.DiGraph()
    ports = {}
    for u, v, d in D.edges(data=True):
        src, dst = (u, "out"), (v, "in")
        ports[src] = (edge_x[u][1], pos[u][1])
        ports[dst] = (edge_x[v][0], pos[v][1])
        P.add_edge(src, dst, **d)
    for u, v, d in P.edges(data=True):
        nx.draw_networkx_edges(P, ports, edgelist=[(u, v)], node_size=0, ax=ax, edge_color=d["colour"],
                               width=1.1 if d["arrow"] else 1.0, arrows=True,
                               arrowstyle="-|>" if d["arrow"] else "-", arrowsize=14)
    for k, (a, b, _) in enumerate(comp):                               # composition: left edge to left edge
        C = nx.DiGraph([((a, "c"), (b, "c"))])
        cpos = {(a, "c"): (edge_x[a][0], pos[a][1]), (b, "c"): (edge_x[b][0], pos[b][1])}
        nx.draw_networkx_edges(C, cpos, node_size=0, ax=ax, edge_color="#6a1b9a", style="dashed", width=0.9,
                               arrows=True, arrowstyle="-|>", connectionstyle=f"arc3,rad={0.35 + 0.1 * k}")
    if comp:
        listing = ["composition at the end of training (init in brackets), strongest increases (dashed arcs):"] + [
            f"  {d['kind'].replace('_', '-')}: {a} → {b}  {d['median']:.2f} ({d.get('baseline') or 0:.2f})"
            for a, b, d in comp]
        ax.text(-1.43, ax.get_ylim()[0], "\n".join(listing), fontsize=7.5, va="bottom", ha="left",
                color="#6a1b9a", family="monospace")
    return fig


def save_figure(fig, path: str | os.PathLike, *, laid_out: bool = False) -> Path:
    """A matplotlib figure as a PNG, written atomically; the figure is closed either way. Unless
    `laid_out` (its margins set by its builder), matplotlib's tight layout places it first."""
    import matplotlib.pyplot as plt
    if not laid_out and not fig.get_layout_engine():
        fig.tight_layout()
    try:
        atomic_save(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)
    return Path(path)
