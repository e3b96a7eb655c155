"""Runs → the subcircuit graph: what forms when, what moves what, measured.

Flow position: suite dirs (results, run dirs) ─graph→ graph files ─explain→ text/JSON.
Nothing here is asserted by hand; every node attribute and edge comes from runs:

- A *variant* is one recipe run over seeds (variants.py reads them). Its *condition* is what it
  trains on (model, task, optimizer, lr, batch); its *signature* is the set of interventions it
  applies, each named by the subcircuit it acts on (the intervention's `name:`, else its target).
- *Behaviour* nodes are phase changes (`phase:<column>:<rule>` of the recipes' phase rules);
  they hold the per-seed times of every variant (with the logistic fit's interval where the
  recipe asked for one).
- *Subcircuit* nodes are the names in signatures. A subcircuit's *formation time* in a condition
  comes from its isolation experiment: the variant of that condition whose signature clamps every
  other subcircuit of the condition's mechanism but not this one (the mechanism: the subcircuits
  clamped by any variant of the condition, less those clamped in every variant).
- *Effect* edges X → behaviour compare a variant with its parent (the variant of the same
  condition whose signature is the largest proper subset of its own), seed by seed: the ratio of
  phase-change times, its interval, sign and Wilcoxon tests; `with` names the other subcircuits
  added alongside X. A run that never changes counts as censored at its length (`prevents` when
  most seeds never change). A seed where both runs compiled the same plan (a selection that picked
  no head) is left out as `untested`.
- *Composition* edges X → Y join subcircuits whose sites name heads in different layers: K/Q/V
  composition of their heads in the final checkpoints of the condition's root variant, against
  the init baseline.
- *Condition* edges compare the same signature across two conditions (e.g. 5 vs 15 labels).

`explain` reads the graph: each subcircuit's formation time and the bottleneck; for two
conditions, which subcircuits' times moved and how much of the behaviour's shift each accounts
for. `predict` estimates the phase change of an unrun combination of clamps by multiplying the
measured effect ratios (effects taken as independent; their joint edges show where not).
"""
from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

import networkx as nx

from ..names.errors import InputError, did_you_mean, show
from ..names.phases import paired, spread
from ..recipe.types import Recipe
from ..store.files import atomic_save, atomic_write
from ..store.owned import writer
from ..store.rundir import SuiteDir
from .draw import draw_graph
from .results import same_plan
from .variants import Variant, condition_name, load_variants
from .variants import behaviours as timed_behaviours


def censored_ratio(times_a: dict, times_b: dict) -> dict:
    """Paired ratio a/b of phase-change times. A seed whose runs both never changed says nothing
    about the effect (left out, counted in `both_censored`); one never changed gives a bound
    (kept at the run length, counted in `censored`)."""
    both = {s for s in times_a if s in times_b and times_a[s][1] and times_b[s][1]}
    a = {s: t for s, (t, _) in times_a.items() if s not in both}
    b = {s: t for s, (t, _) in times_b.items() if s not in both}
    st = paired(a, b, "ratio")
    st["censored"] = sum(times_a[s][1] or times_b[s][1] for s in st["per_seed"])
    st["censored_num"] = sum(times_a[s][1] and not times_b[s][1] for s in st["per_seed"])    # ratio >= its value
    st["censored_den"] = sum(times_b[s][1] and not times_a[s][1] for s in st["per_seed"])    # ratio <= its value
    st["both_censored"] = len(both)
    st["never_a"] = sum(c for _, c in times_a.values())
    st["never_b"] = sum(c for _, c in times_b.values())
    return st


def _summary(times: dict) -> dict:
    xs = [t for t, c in times.values() if not c]
    allx = [t for t, _ in times.values()]
    return {"per_seed": {s: (None if c else t) for s, (t, c) in times.items()},
            **spread(xs), "never": sum(c for _, c in times.values()), "n": len(times),
            # never-changed runs counted at their length (a lower bound), as suites do
            "bound_per_seed": {s: t for s, (t, _) in times.items()},
            "median_bound": statistics.median(allx) if allx else None}


class Graph:
    """A networkx MultiDiGraph of subcircuits and behaviours, with explain and predict."""

    def __init__(self, g: nx.MultiDiGraph):
        self.g = g

    # -- building ------------------------------------------------------------------------

    @classmethod
    def from_runs(cls, dirs: list[str | os.PathLike], behaviour: str | None = None) -> Graph:
        """The graph of one or more suite directories. Suites of different tasks or phase rules are
        combined only when `behaviour` ('COLUMN:RULE') names the phase change every variant times."""
        if isinstance(dirs, (str, os.PathLike)):
            dirs = [dirs]
        variants = load_variants([Path(d) for d in dirs])
        if not variants:
            raise InputError(str(dirs[0]), "", "no suite results", "directories written by `clamp bench`")
        g = nx.MultiDiGraph(dirs=[str(d) for d in dirs])
        ref = variants[0]
        g.graph["reference_condition"] = ref.condition
        behaviours = timed_behaviours(variants, behaviour)
        g.graph["primary"] = behaviours[0]
        conds: dict[str, list[Variant]] = {}
        for v in variants:
            conds.setdefault(v.condition, []).append(v)
        g.graph["conditions"] = {condition_name(c, ref.condition): [v.key for v in vs] for c, vs in conds.items()}
        g.graph["variants"] = {v.key: {"condition": condition_name(v.condition, ref.condition),
                                       "labels": sorted(v.labels),
                                       "signature": sorted([list(x) for x in v.signature]),
                                       "clamped": sorted({x[0] for x in v.signature if x[1] == "clamp"}),
                                       "recipe": v.recipe.name, "seeds": [int(r["seed"]) for r in v.rows]}
                               for v in variants}
        g.graph["target"] = ref.key
        for b in behaviours:
            g.add_node(b, kind="behaviour", times={v.key: _summary(v.times(b)) for v in variants},
                       fits={v.key: _fits(v, b) for v in variants})
        for v in variants:
            for lab in v.labels:
                if lab not in g:
                    g.add_node(lab, kind="subcircuit", **_sites(lab, v.recipe))
        for c, vs in conds.items():
            cname = condition_name(c, ref.condition)
            _effects(g, vs, behaviours, cname)
            _composition(g, vs, cname)
        _condition_edges(g, conds, behaviours, ref.condition)
        for n in [n for n, d in g.nodes(data=True) if d["kind"] == "subcircuit" and g.degree(n) == 0]:
            g.remove_node(n)
        graph = cls(g)
        for x, iso in isolations(graph, ref.key).items():         # formation times, reference target
            if x in g:
                g.nodes[x]["formation"] = {"reference": {"variant": iso["variant"], **iso["times"]}}
        return graph

    # -- files ---------------------------------------------------------------------------

    def save(self, out: str | os.PathLike) -> dict[str, Path]:
        """graph.json (node-link), graph.graphml and graph.png in `out`, each written atomically
        while holding `out` (one writer per directory)."""
        out = Path(out)
        with writer(out, "graph", what=str(out)):
            return self._save(out)

    def _save(self, out: Path) -> dict[str, Path]:
        data = nx.node_link_data(self.g, edges="edges")
        paths = {"json": out / "graph.json", "graphml": out / "graph.graphml", "png": out / "graph.png"}
        atomic_write(paths["json"], json.dumps(data, indent=1, default=_jsonable))
        flat = nx.MultiDiGraph()
        flat.graph.update({k: json.dumps(v, default=_jsonable) for k, v in self.g.graph.items()})
        for n, d in self.g.nodes(data=True):
            flat.add_node(n, **{k: v if isinstance(v, (str, int, float, bool)) else json.dumps(v, default=_jsonable)
                                for k, v in d.items()})
        for a, b, k, d in self.g.edges(keys=True, data=True):
            flat.add_edge(a, b, key=k, **{kk: v if isinstance(v, (str, int, float, bool)) else
                                          json.dumps(v, default=_jsonable) for kk, v in d.items() if v is not None})
        atomic_save(paths["graphml"], lambda tmp: nx.write_graphml(flat, tmp))
        self.draw(paths["png"])
        return paths

    @classmethod
    def load(cls, path: str | os.PathLike) -> Graph:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(nx.node_link_graph(data, directed=True, multigraph=True, edges="edges"))

    def draw(self, png: str | os.PathLike, condition: str = "reference") -> Path:
        """The picture of this graph's effects under one condition (draw.py)."""
        return draw_graph(self.g, png, condition)

    # -- reading -------------------------------------------------------------------------

    def conditions(self) -> dict[str, list[str]]:
        return self.g.graph["conditions"]


# ---------------------------------------------------------------------------------------
# Queries (explanations.py builds on these)


def variant_info(graph, key):
    return graph.g.graph["variants"][key]


def resolve_variant(graph, name: str) -> str:
    vs = graph.g.graph["variants"]
    if name in vs:
        return name
    hits = [k for k in vs if k.split("/", 1)[1] == name]
    if len(hits) == 1:
        return hits[0]
    names = sorted({k.split("/", 1)[1] for k in vs})
    raise InputError("explain", "", show(name), "a variant of these suites: " + ", ".join(names),
                     did_you_mean(name, names))


def times(graph, key: str, behaviour: str | None = None) -> dict:
    b = behaviour or graph.g.graph["primary"]
    return graph.g.nodes[b]["times"][key]


def with_censoring(t: dict) -> dict[int, tuple[float, bool]]:
    """seed → (phase-change step, censored) of a time summary (censored: the run never changed; its length)."""
    return {int(s): (v, t["per_seed"].get(s, t["per_seed"].get(str(s))) is None)
            for s, v in t["bound_per_seed"].items() if v is not None}


def per_seed(t: dict) -> dict[int, float]:
    """seed → phase-change step; a run that never changed counts as its length (censored)."""
    return {int(s): v for s, v in t["bound_per_seed"].items() if v is not None}


def variant_signature(graph, key):
    return {tuple(x) for x in variant_info(graph, key)["signature"]}


def isolations(graph, target: str) -> dict[str, dict]:
    """subcircuit → {'variant', 'times'} of its isolation experiment for `target`."""
    info = graph.g.graph["variants"]
    t = info[target]
    tsig = variant_signature(graph, target)
    same = [k for k, v in info.items() if v["condition"] == t["condition"] and variant_signature(graph, k) >= tsig]
    added = {k: variant_signature(graph, k) - tsig for k in same}
    mech = {x[0] for k in same for x in added[k] if x[1] == "clamp"}
    out = {}
    for x in sorted(mech):
        for k in same:
            if {a[0] for a in added[k]} == mech - {x} and all(a[1] == "clamp" for a in added[k]):
                out[x] = {"variant": k, "times": times(graph, k), "adds": sorted(map(list, added[k]))}
                break
    return out


# ---------------------------------------------------------------------------------------


def _jsonable(o):
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    return str(o)


def _sites(label: str, r: Recipe) -> dict:
    """What a subcircuit node names: its subcircuit's sites and parameters, or, for an intervention
    labelled by `name:` or written on a site directly, the target it writes."""
    sc = r.subcircuits.get(label)
    if sc is None:
        targets = [iv.target for iv in r.interventions if label in (iv.name, iv.target)]
        sc = next((r.subcircuits[t] for t in targets if t in r.subcircuits), None)
        if sc is None:
            return {"sites": [t for t in targets if t not in r.subcircuits][:1]}
    d: dict = {"sites": list(sc.sites), "params": list(sc.params)}
    if sc.select is not None:
        d["select"] = sc.select.describe()
    return d


def _fits(v: Variant, behaviour: str) -> dict:
    """Per seed: the logistic fit's midpoint and interval for the behaviour's column, if computed."""
    col = behaviour.split(":")[1]
    out = {}
    for r in v.rows:
        sm = SuiteDir(v.suite_dir).run(r["run"], int(r["seed"])).summary() or {}
        fit = sm.get("phases", {}).get(col, {}).get("logistic")
        if fit and fit.get("step") is not None:
            out[int(r["seed"])] = {"t0": fit["t0"], "ci": fit.get("ci")}
    return out


def _parents(v: Variant, vs: list[Variant]) -> list[Variant]:
    subs = [w for w in vs if w.signature < v.signature]
    best = [w for w in subs if not any(w.signature < x.signature for x in subs)]
    return best


def _effects(g: nx.MultiDiGraph, vs: list[Variant], behaviours: list[str], cname: str) -> None:
    for v in vs:
        for p in _parents(v, vs):
            added = v.signature - p.signature
            labels = sorted({s[0] for s in added})
            alike = _alike_seeds(v, p)             # the intervention selected nothing there: no test
            for b in behaviours:
                ta, tb = v.times(b), p.times(b)
                st = censored_ratio({s: t for s, t in ta.items() if s not in alike},
                                    {s: t for s, t in tb.items() if s not in alike})
                if not st["per_seed"] and not st["both_censored"]:
                    continue
                prevents = st["never_a"] > st["n"] / 2 and st["never_b"] < st["n"] / 2
                for lab in labels:                  # what was done to this subcircuit; the others are `with`
                    how = sorted({f"{s[1]} to {s[2]}" if s[1] == "clamp" else f"{s[1]} ({s[2]})" if s[2] else s[1]
                                  for s in added if s[0] == lab})
                    g.add_edge(lab, b, kind="effect", condition=cname, variant=v.key, parent=p.key,
                               interventions=how, **{"with": [x for x in labels if x != lab]},
                               prevents=prevents, **{k: st.get(k) for k in
                                                     ("median", "min", "max", "ci", "n", "censored", "both_censored",
                                                      "sign_p", "wilcoxon_p")},
                               per_seed=st["per_seed"], untested=sorted(alike))


def _alike_seeds(v: Variant, p: Variant) -> set[int]:
    """Seeds where a variant and its parent (same condition) ran the same plan: nothing to compare."""
    runs = {int(r["seed"]): r["run"] for r in p.rows if r.get("status") == "ok"}
    return {int(r["seed"]) for r in v.rows if r.get("status") == "ok" and int(r["seed"]) in runs
            and same_plan(v.suite_dir, r["run"], p.suite_dir, runs[int(r["seed"])], int(r["seed"]))}


def _composition(g: nx.MultiDiGraph, vs: list[Variant], cname: str) -> None:
    """K/Q/V composition between per-head subcircuits of different layers, in the root variant."""
    roots = [v for v in vs if not _parents(v, vs)]
    if not roots:
        return
    root = min(roots, key=lambda v: len(v.signature))
    from .composition import subcircuit_composition, subcircuit_heads
    names = [n for n, sc in root.recipe.subcircuits.items()
             if sc.select is not None or subcircuit_heads(root.recipe, n, None) is not None]
    if len(names) < 2:
        return
    for res in subcircuit_composition(root, names):
        for n in (res["from"], res["to"]):
            if n not in g:
                g.add_node(n, kind="subcircuit", **_sites(n, root.recipe))
        g.add_edge(res["from"], res["to"], kind=f"{res['kind']}_composition", condition=cname, variant=root.key,
                   median=res["median"], per_seed=res["per_seed"], baseline=res["baseline"],
                   heads=res["heads"])


def _condition_edges(g: nx.MultiDiGraph, conds: dict, behaviours: list[str], ref: str) -> None:
    if ref not in conds:
        return
    base = {v.signature: v for v in conds[ref]}
    for c, vs in conds.items():
        if c == ref:
            continue
        cname = condition_name(c, ref)
        node = f"condition:{cname}"
        for v in vs:
            w = base.get(v.signature)
            if w is None:
                continue
            g.add_node(node, kind="condition")
            for b in behaviours:
                st = censored_ratio(v.times(b), w.times(b))
                if st["per_seed"] or st["both_censored"]:
                    g.add_edge(node, b, kind="condition", condition=cname, variant=v.key, parent=w.key,
                               signature=sorted(lab for lab in v.labels),
                               **{k: st.get(k) for k in ("median", "min", "max", "ci", "n", "censored",
                                                         "both_censored", "sign_p", "wilcoxon_p")},
                               per_seed=st["per_seed"])
