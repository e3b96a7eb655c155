"""K/Q/V composition between the heads of two subcircuits, read from a variant's checkpoints.

Used by graph.py. A subcircuit's heads come from its per-head sites (`blocks.0.attn.hook_z[2]`)
or, for a `select`, from the run's own last evaluation (so "the previous-token heads" are the
ones that run actually grew). Scores are the mean over head pairs of measures.composition_scores;
the baseline is the same mean for weights drawn from the init distribution.
"""
from __future__ import annotations

import statistics

import torch

from ..measures import composition_baseline, composition_scores
from ..names import sites as S
from ..names.columns import composition_column
from ..recipe.compile import select_heads
from ..store.rundir import list_checkpoints, load_model, run_dir, run_metrics


def subcircuit_heads(recipe, name: str, last_row: dict | None) -> tuple[int, tuple[int, ...]] | None:
    """(layer, heads) of a subcircuit whose sites all name heads of one attention layer."""
    sc = recipe.subcircuits[name]
    shape = recipe.shape()
    if sc.select is not None:
        if last_row is None and sc.select.run == "self":
            return None
        heads, _ = select_heads(sc.select, shape, recipe.seeds[0], last_row, recipe, name, run_metrics)
        return (sc.select.layer, heads) if heads else None
    found = set()
    for text in sc.sites + sc.params:
        for s in S.expand(text, shape):
            if not s.info.per_head or s.info.layer is None:
                return None
            found.add((s.info.layer, s.heads if s.heads is not None else tuple(range(shape.heads))))
    layers = {L for L, _ in found}
    if len(layers) != 1:
        return None
    return layers.pop(), tuple(sorted({h for _, hs in found for h in hs}))


def subcircuit_composition(variant, names: list[str]) -> list[dict]:
    recipe = variant.recipe
    shape = recipe.shape()
    base = composition_baseline(shape)
    per: dict[tuple, dict] = {}
    heads_seen: dict[tuple, dict] = {}
    for r in variant.rows:
        if r.get("status") != "ok":
            continue
        d = run_dir(variant.suite_dir, r["run"], int(r["seed"]))
        rows = run_metrics(d)
        if not rows or not list_checkpoints(d):
            continue
        with torch.no_grad():
            scores = composition_scores(load_model(d, seed=int(r["seed"])).seam)
        hs = {n: subcircuit_heads(recipe, n, rows[-1]) for n in names}
        for x in names:
            for y in names:
                hx, hy = hs[x], hs[y]
                if hx is None or hy is None or hx[0] >= hy[0]:
                    continue
                (L1, h1s), (L2, h2s) = hx, hy
                for kind in "kqv":
                    vals = [scores[composition_column(kind, L1, a, L2, b)] for a in h1s for b in h2s]
                    per.setdefault((x, y, kind), {})[int(r["seed"])] = sum(vals) / len(vals)
                    heads_seen.setdefault((x, y, kind), {})[int(r["seed"])] = [list(h1s), list(h2s)]
    return [{"from": x, "to": y, "kind": kind, "per_seed": v, "median": statistics.median(v.values()),
             "baseline": base[f"{kind}_composition"], "heads": heads_seen[(x, y, kind)]}
            for (x, y, kind), v in per.items()]
