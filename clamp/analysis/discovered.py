"""What `clamp discover` found, as a graph and a picture: the discovered subcircuits and how they compose.

Analysis layer. From one seed's discovery (training/discover.py), a networkx MultiDiGraph: a node per
head that holds a role at the end, named for the role it holds most clearly (`dominant`; `roles`
lists them all), with its layer, head, formation step, final score and, where
measured, what ablating it costs), a node per phase change of the run (`phase:<column>:<rule>`, its
step), K/Q/V composition edges between heads of different layers (the series along training, its
change, and the step it moved by the relative rule) and `forms` edges from each head to each phase
change (how many steps before or after it the head took its role). Saved beside discovery.json as
discovery_graph.json (node-link) and discovery.png, drawn with networkx's multipartite layout (one
column per layer, the phase changes last).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import networkx as nx

from ..store.files import atomic_write
from ..training.discover import dominant
from .draw import save_figure

GRAPH_JSON, GRAPH_PNG = "discovery_graph.json", "discovery.png"


def seed_text(seed: int, d: dict) -> str:
    """What `clamp discover` prints for one seed: the roles used, a table of heads, the groups, the
    agreement of attribution patching with the ablations, and what was not found or skipped."""
    from .report import table
    lines = [f"seed {seed}: {len(d['checkpoints'])} checkpoints to step {d['last_step']}; roles from "
             + ", ".join(f"{r} ({m}{', every evaluation' if r in d['from_metrics'] else ''})"
                         for r, m in d["measures"].items())]
    eff = d.get("effects", {})
    cost = {k: v[-1] for k, v in eff.get("heads", {}).items()}
    rows = [[h["name"], h["formed"] if h["formed"] is not None else "-", h["final"], h["peak"],
             "yes" if h["holds"] else "no (lost it)", cost.get(f"L{h['layer']}H{h['head']}", "-")] for h in d["heads"]]
    if rows:
        lines.append(table(["head", "formed at step", "final", "peak", "holds at the end",
                            f"loss +Δ ablated ({eff.get('how', '-')}, end)"], rows))
    for role, g in eff.get("groups", {}).items():
        lines.append(f"  {role} group {'+'.join(g['heads'])} ablated together: loss +{g['delta'][-1]:.4g} at the "
                     f"end (largest single head +{g['largest_single']:.4g})"
                     + ("; redundant: each covers for the others" if g["redundant"] else ""))
    agree = eff.get("attribution", {}).get("agreement")
    if agree and agree["spearman"] is not None:
        end = (f"; at the end, over {agree['heads_at_end']} heads: Spearman {agree['spearman_end']}, Pearson "
               f"{agree['pearson_end']}" if agree["spearman_end"] is not None else "")
        lines.append(f"  attribution patching (one backward per checkpoint) against the ablations: Spearman "
                     f"{agree['spearman']}, Pearson {agree['pearson']} over {agree['n']} head-checkpoints{end}")
    for why in (eff.get("skipped"), eff.get("attribution", {}).get("skipped")):
        if why:
            lines.append(f"  effects: {why}")
    lines += [f"  {role}: {why}" for role, why in {**d["not_formed"], **d["skipped"]}.items()]
    return "\n".join(lines) + "\n"


def discovery_graph(found: dict) -> nx.MultiDiGraph:
    """One seed's discovery (discovery.json's content) as a graph."""
    g = nx.MultiDiGraph(seed=found.get("seed"), run=found.get("run"))
    cost = {k: v[-1] for k, v in found.get("effects", {}).get("heads", {}).items()}
    also: dict[tuple[int, int], list[str]] = {}
    for h in found["heads"]:
        if h["holds"]:
            also.setdefault((h["layer"], h["head"]), []).append(h["role"])
    for place, h in dominant(found["heads"]).items():      # a node per head, named for its clearest role
        g.add_node(h["name"], kind="head", role=h["role"], roles=also[place], layer=h["layer"], head=h["head"],
                   formed=h["formed"], final=h["final"], peak=h["peak"],
                   ablation_cost=cost.get(f"L{h['layer']}H{h['head']}"))
    for c in found.get("composition", []):
        if c["from"] in g and c["to"] in g:
            g.add_edge(c["from"], c["to"], kind=f"{c['kind']}_composition", first=c["values"][0],
                       final=c["values"][-1], baseline=c["baseline"], change=c["change"], moves=c["moves"],
                       direction=c["direction"], notable=c.get("notable", True))
    for col, rules in (found.get("phases") or {}).items():
        for rule, r in rules.items() if isinstance(rules, dict) else ():
            if not isinstance(r, dict) or "step" not in r:
                continue
            b = f"phase:{col}:{rule}"
            g.add_node(b, kind="behaviour", step=r["step"])
            for n, d in list(g.nodes(data=True)):
                if d.get("kind") == "head" and d["formed"] is not None:
                    g.add_edge(n, b, kind="forms", before=None if r["step"] is None else r["step"] - d["formed"])
    return g


def save(seed_dir: str | os.PathLike, found: dict) -> list[Path]:
    """Write discovery_graph.json and discovery.png beside one seed's discovery.json."""
    d = Path(seed_dir)
    g = discovery_graph(found)
    data = nx.node_link_data(g, edges="links")
    atomic_write(d / GRAPH_JSON, json.dumps(data, indent=1, default=str) + "\n")
    return [d / GRAPH_JSON, save_figure(figure(g), d / GRAPH_PNG)]


def figure(g: nx.MultiDiGraph):
    """The picture: heads in one column per layer, phase changes in the last; composition that rose
    as arrows (thicker: a larger rise; only rises of at least discover.NOTABLE of the init baseline),
    formation step under each head."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    heads = [n for n, d in g.nodes(data=True) if d["kind"] == "head"]
    layers = sorted({g.nodes[n]["layer"] for n in heads}) or [0]
    D = nx.DiGraph()
    for n in heads:
        D.add_node(n, subset=g.nodes[n]["layer"])
    for n, d in g.nodes(data=True):
        if d["kind"] == "behaviour":
            D.add_node(n, subset=layers[-1] + 1)
    rose: dict[tuple[str, str], float] = {}
    for a, b, d in g.edges(data=True):
        if (d["kind"].endswith("composition") and d["direction"] == "rise" and d["moves"] is not None
                and d["notable"]):
            key = (a, b)
            rose[key] = max(rose.get(key, 0.0), d["change"])
    D.add_edges_from(rose)
    pos = nx.multipartite_layout(D, subset_key="subset") if len(D) else {}
    tall = max([sum(1 for n in D if D.nodes[n]["subset"] == s) for s in {D.nodes[n]["subset"] for n in D}] or [1])
    fig, ax = plt.subplots(figsize=(4 + 3 * len(layers), 1.5 + 0.9 * tall))
    labels = {}
    for n in D:
        d = g.nodes[n]
        if d["kind"] == "head":
            labels[n] = f"{n}\nformed {d['formed'] if d['formed'] is not None else '-'}"
        else:
            labels[n] = f"{n.split(':', 1)[1]}\nstep {d['step'] if d['step'] is not None else 'none'}"
    colours = ["#dbe9f6" if g.nodes[n]["kind"] == "head" else "#fde2cf" for n in D]
    nx.draw_networkx_nodes(D, pos, ax=ax, node_color=colours, node_size=2600, node_shape="s")
    nx.draw_networkx_labels(D, pos, labels, ax=ax, font_size=7)
    top = max(rose.values(), default=1.0) or 1.0
    nx.draw_networkx_edges(D, pos, ax=ax, edgelist=list(rose), width=[0.5 + 3 * rose[e] / top for e in rose],
                           edge_color="#555", arrows=True, node_size=2600, node_shape="s")
    ax.set_title(f"seed {g.graph.get('seed')}: discovered heads (columns: layers); arrows: composition that rose",
                 fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    return fig
