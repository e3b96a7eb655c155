"""Explain and predict from the subcircuit graph (the last analysis stage, before report/CLI).

All numbers come from the graph's behaviour times and effect edges (graph.py), which come from
runs. Definitions:

- target: a variant whose phase change is explained (e.g. the single-head baseline).
- mechanism of a target: the subcircuits that some variant of the same condition clamps on top of
  the target's own interventions.
- isolation of X: the variant of the condition that adds exactly (mechanism − {X}) to the target:
  everything but X clamped, so its phase change is X's own formation time.
- bottleneck: the subcircuit with the latest isolated formation time.
- compare(T_a, T_b): for each subcircuit, its isolated time in T_b's condition over that in
  T_a's (the variants adding the same clamps), paired by seed; the behaviour's ratio likewise;
  each subcircuit's share of the shift is log(ratio_X) / log(ratio_behaviour).
- a run whose phase change never happened counts as its length (censored, a lower bound), as in
  suites; the text marks how many seeds never changed.
- predict(T, variants), two models, per seed:
  multiplicative: the clamps' effects are independent, t(T + all their clamps) = t(T) · Π t(V_i) / t(T);
  bottleneck: the phase change waits for the slowest subcircuit left unclamped, so
  t = max over the mechanism's subcircuits X that none of the variants clamps of X's isolated
  formation time (a lower bound when more than one is left: they form faster alone than together).
  When a variant with the combined signature exists, its measured times give each model's error.
"""
from __future__ import annotations

import math
import statistics
from typing import Any

from ..names.errors import InputError, show
from ..names.phases import paired
from .graph import (
    Graph,
    censored_ratio,
    isolations,
    per_seed,
    resolve_variant,
    times,
    variant_info,
    variant_signature,
    with_censoring,
)
from .wording import moved, waiting, words


def explain_condition(graph, target: str | None = None) -> dict:
    target = resolve_variant(graph, target) if target else graph.g.graph["target"]
    t = times(graph, target)
    iso = isolations(graph, target)
    order = sorted(((x, d["times"]["median_bound"]) for x, d in iso.items()
                    if d["times"].get("median_bound") is not None), key=lambda p: -p[1])
    bottleneck = order[0][0] if order else None
    out: dict[str, Any] = {
           "target": target, "condition": variant_info(graph, target)["condition"],
           "behaviour": graph.g.graph["primary"],
           "phase_change": t, "bottleneck": bottleneck,
           "subcircuits": {x: {"variant": d["variant"], "others": sorted({a[0] for a in d["adds"]}),
                               "interventions": [f"{a[1]} {a[0]}" for a in d["adds"]], **d["times"]}
                           for x, d in iso.items()}}
    if bottleneck and t.get("median_bound"):
        out["phase_change_over_bottleneck"] = t["median_bound"] / dict(order)[bottleneck]
    mech_all = set(graph.g.graph["variants"][target]["clamped"])
    out["not_isolated"] = sorted({x for k, v in graph.g.graph["variants"].items()
                                  if v["condition"] == out["condition"] for x in v["clamped"]} - set(iso) - mech_all)
    out["predictions"] = predictions(graph)
    return out


def predictions(graph) -> list[dict]:
    """The expectations of the graph's suites (e.g. those `clamp discover` writes), judged paired by seed:
    per seed the statistic and whether the rule held; the pairs that tested nothing are listed apart."""
    from .results import load_results
    out = []
    for d in graph.g.graph.get("dirs", []):
        res = load_results(d)
        for v in res.verdicts:
            out.append({"suite": res.suite.name, "name": v["name"], "rule": v["rule"], "verdict": v["verdict"],
                        "median": v["median"], "p": v["p"], "note": v.get("note", ""),
                        "per_seed": [{k: q[k] for k in ("seed", "grid", "value", "censored", "low", "high", "holds")}
                                     for q in v["per_seed"]],
                        "untested": [q["seed"] for q in v.get("untested", [])]})
    return out


def compare_conditions(graph, a: str, b: str) -> dict:
    a, b = resolve_variant(graph, a), resolve_variant(graph, b)
    info = graph.g.graph["variants"]
    beh = censored_ratio(with_censoring(times(graph, b)), with_censoring(times(graph, a)))
    iso_a = isolations(graph, a)
    out: dict[str, Any] = {"a": a, "b": b, "condition_a": info[a]["condition"], "condition_b": info[b]["condition"],
           "behaviour": graph.g.graph["primary"], "phase_change_ratio": beh, "subcircuits": {}}
    tsig_b = variant_signature(graph, b)
    for x, d in iso_a.items():
        want = tsig_b | {tuple(y) for y in d["adds"]}
        match = [k for k, v in info.items()
                 if v["condition"] == info[b]["condition"] and variant_signature(graph, k) == want]
        if not match:
            out["subcircuits"][x] = {"missing": f"no variant in {info[b]['condition']} adds {d['adds']}"}
            continue
        st = censored_ratio(with_censoring(times(graph, match[0])), with_censoring(d["times"]))
        share = (math.log(st["median"]) / math.log(beh["median"])
                 if moved(st) and moved(beh) and abs(math.log(beh["median"])) > 1e-9 else None)
        out["subcircuits"][x] = {"variant_a": d["variant"], "variant_b": match[0], **st, "share": share}
    shifted = {x: d for x, d in out["subcircuits"].items() if "missing" not in d and moved(d)}
    if shifted and moved(beh):               # a shift is attributed only when the phase change itself moved
        out["mainly"] = max(shifted, key=lambda x: abs(math.log(shifted[x]["median"])))
    out["not_measured"] = sorted(x for x, d in out["subcircuits"].items() if "missing" in d)
    return out


def predict_time(graph, variants: list[str], target: str | None = None) -> dict:
    """Phase-change time of the target with the clamps of several variants combined."""
    target = resolve_variant(graph, target) if target else graph.g.graph["target"]
    info = graph.g.graph["variants"]
    tsig = variant_signature(graph, target)
    t0 = per_seed(times(graph, target))
    ratios, sig = [], set(tsig)
    for v in variants:
        k = resolve_variant(graph, v)
        if info[k]["condition"] != info[target]["condition"] or not variant_signature(graph, k) > tsig:
            raise InputError("--predict", "", show(v), f"a variant that adds clamps to {target.split('/', 1)[1]} "
                             "in the same condition")
        ratios.append(paired(per_seed(times(graph, k)), t0, "ratio")["per_seed"])
        sig |= variant_signature(graph, k)
    pred = {s: t0[s] * math.prod(r.get(s, float("nan")) for r in ratios) for s in t0}
    pred = {s: p for s, p in pred.items() if p == p}
    out: dict[str, Any] = {"target": target, "combining": [resolve_variant(graph, v) for v in variants],
           "signature": sorted(map(list, sig)), "predicted": {"per_seed": pred,
                                                               "median": statistics.median(pred.values())}}
    clamped = {x[0] for x in sig - tsig if x[1] == "clamp"}
    iso = isolations(graph, target)
    mech = set(iso) | {x for k in info if info[k]["condition"] == info[target]["condition"]
                       and variant_signature(graph, k) >= tsig for x in info[k]["clamped"]}
    left = sorted(mech - clamped)
    if left and all(x in iso for x in left) and \
            not any(variant_signature(graph, iso[x]["variant"]) == sig for x in left):
        per = [per_seed(iso[x]["times"]) for x in left]
        bn = {s: max(p[s] for p in per) for s in t0 if all(s in p for p in per)}
        if bn:
            out["bottleneck"] = {"left": left, "from": [iso[x]["variant"] for x in left], "per_seed": bn,
                                 "median": statistics.median(bn.values()), "lower_bound": len(left) > 1}
    else:
        out["bottleneck_unavailable"] = ("every subcircuit is clamped" if not left else
                                         f"no isolation experiment (everything else clamped) for: "
                                         f"{', '.join(x for x in left if x not in iso) or 'the combination itself'}")
    actual = [k for k, v in info.items()
              if v["condition"] == info[target]["condition"] and variant_signature(graph, k) == sig]
    if actual:
        act = per_seed(times(graph, actual[0]))
        out["actual"] = {"variant": actual[0], "per_seed": act, "median": statistics.median(act.values())}
        out["error"] = _error(pred, act)
        if "bottleneck" in out:
            out["bottleneck"]["error"] = _error(out["bottleneck"]["per_seed"], act)
    return out


def _error(pred: dict, act: dict) -> dict:
    err = paired(pred, act, "ratio")
    return {"predicted_over_actual": err["per_seed"], "median": err["median"],
            "median_abs_log_error": statistics.median(abs(math.log(x)) for x in err["per_seed"].values())}


# ---------------------------------------------------------------------------------------
# Text


def _t(d) -> str:
    """A time summary: median (range) over the seeds that changed, and how many never did."""
    if not d or d.get("median") is None:
        return f"never (all {d['n']} seeds censored at the run length)" if d and d.get("never") else "-"
    rng = f" ({d['min']:.0f}–{d['max']:.0f})" if d.get("min") is not None else ""
    never = f", {d['never']} of {d['n']} never (censored)" if d.get("never") else ""
    return f"{d['median']:.0f}{rng}{never}"


def explain_text(e: dict) -> str:
    short = lambda k: k.split("/", 1)[1]  # noqa: E731
    lines = [f"{short(e['target'])} ({e['condition']}): {e['behaviour']} at step {_t(e['phase_change'])} "
             "(median, range over seeds)"]
    for x, d in sorted(e["subcircuits"].items(), key=lambda p: -(p[1].get("median") or 0)):
        if d["others"]:
            how = f"with {', '.join(d['interventions'])} ({short(d['variant'])})"
        else:
            how = f"in {short(d['variant'])} itself: no other subcircuit of the mechanism to intervene on"
        lines.append(f"  {x:<12} forms at {_t(d)} {how}")
    if e.get("not_isolated"):
        lines.append(f"  no isolation experiment (every other subcircuit clamped) for: {', '.join(e['not_isolated'])}"
                     + ("; what each intervention does alone: `clamp graph`" if not e["subcircuits"] else ""))
    if e["bottleneck"]:
        r = e.get("phase_change_over_bottleneck")
        lines.append(f"  bottleneck: {e['bottleneck']} (the latest to form alone)"
                     + (f"; {waiting(r)}" if r is not None else ""))
    lines += predictions_text(e.get("predictions", []))
    return "\n".join(lines)


def predictions_text(preds: list[dict]) -> list[str]:
    """Each expectation's verdict, then its value per seed (+ held, - did not, ? censored either way)."""
    if not preds:
        return []
    mark = {True: "+", False: "-", None: "?"}

    def bound(q: dict) -> str:
        if not q["censored"]:
            return ""
        return ">=" if q["high"] > q["value"] else "<=" if q["low"] < q["value"] else ""
    lines = [f"predictions ({len(preds)}), paired by seed (+ held, - did not, ? undecided; <= / >=: a bound, "
             "where a phase change never happened):"]
    for p in preds:
        seeds = "  ".join(f"{q['seed']}{'[' + q['grid'] + ']' if q['grid'] else ''}: {bound(q)}{q['value']:.3g}"
                          f"{mark[q['holds']]}" for q in p["per_seed"])
        med = f"median {p['median']:.3g}" if p["median"] is not None else "no pair"
        lines.append(f"  {p['verdict']:<8} {p['name']}")
        lines.append(f"           {p['rule']}; {med}; per seed {seeds or '-'}"
                     + (f"; untested (same plan as its pair) in seed {', '.join(map(str, p['untested']))}"
                        if p["untested"] else ""))
    return lines


def compare_text(c: dict) -> str:
    short = lambda k: k.split("/", 1)[1]  # noqa: E731
    b = c["phase_change_ratio"]
    lines = [f"{short(c['b'])} ({c['condition_b']}) vs {short(c['a'])} ({c['condition_a']}):",
             f"  {words(b)}{_stats(b)}"]
    for x, d in c["subcircuits"].items():
        if "missing" in d:
            lines.append(f"  {x:<12} {d['missing']}")
            continue
        share = f", {100 * d['share']:.0f}% of the shift" if d.get("share") is not None else ""
        lines.append(f"  {x:<12} {words(d, 'isolated formation')}{_stats(d)}{share}   "
                     f"[{short(d['variant_a'])} -> {short(d['variant_b'])}]")
    if c.get("mainly"):
        caveat = (f" (of those measured; no isolation in {c['condition_b']} for: {', '.join(c['not_measured'])})"
                  if c.get("not_measured") else "")
        lines.append(f"  the shift is mainly {c['mainly']}'s{caveat}")
    elif not moved(b):
        lines.append("  no shift to attribute: the phase change did not move consistently")
    return "\n".join(lines)


def predict_text(p: dict) -> str:
    short = lambda k: k.split("/", 1)[1]  # noqa: E731
    err = lambda e: (f"; predicted/measured {e['median']:.2f} (median over seeds), "  # noqa: E731
                     f"median |log error| {e['median_abs_log_error']:.2f}") if e else ""
    lines = [f"predicted phase change of {short(p['target'])} + " + " + ".join(short(v) for v in p["combining"])
             + " (median over seeds):",
             f"  multiplicative (independent effects): ~{p['predicted']['median']:.0f} steps{err(p.get('error'))}"]
    b = p.get("bottleneck")
    if b:
        lines.append(f"  bottleneck (slowest unclamped subcircuit: {', '.join(b['left'])}): "
                     f"{'>= ' if b['lower_bound'] else '~'}{b['median']:.0f} steps{err(b.get('error'))}")
    else:
        lines.append(f"  bottleneck: not available ({p.get('bottleneck_unavailable')})")
    if "actual" in p:
        lines.append(f"  measured ({short(p['actual']['variant'])}): {p['actual']['median']:.0f} steps")
    else:
        lines.append("  (no run of that combination in these suites yet)")
    return "\n".join(lines)


def _stats(d: dict) -> str:
    """The statistics behind a ratio: n, the median's interval, the Wilcoxon test."""
    if d.get("median") is None:
        return ""
    ci = f", 95% CI of the median {d['ci'][0]:.2f}–{d['ci'][1]:.2f}" if d.get("ci") else ""
    p = d.get("wilcoxon_p")
    return f" [n {d['n']}{ci}" + (f", Wilcoxon p {p:.3g}" if p is not None else "") + "]"


def effect_text(d: dict) -> str:
    """One effect edge in words (wording.py's cases), and the seeds left out."""
    text = words(d, "effect")
    if d.get("both_censored") and d.get("median") is not None:
        text += f"; {d['both_censored']} seed(s) left out: neither run changed"
    if d.get("untested"):
        text += (f"; seed(s) {', '.join(map(str, d['untested']))} left out: both runs had the same plan "
                 "(the intervention selected nothing there)")
    return text


# ---------------------------------------------------------------------------------------
# The public functions (clamp.explain, clamp.compare, clamp.predict)


def explain(graph: Graph, target: str | None = None) -> dict:
    """Each subcircuit's isolated formation time for a target variant (default: the first suite's
    first variant), and the bottleneck."""
    return explain_condition(graph, target)


def compare(graph: Graph, a: str, b: str) -> dict:
    """Which subcircuits' isolated formation times moved between variants `a` and `b`."""
    return compare_conditions(graph, a, b)


def predict(graph: Graph, variants: list[str], target: str | None = None) -> dict:
    """The phase change of `target` with the interventions of `variants` combined."""
    return predict_time(graph, variants, target)
