"""Discovery: what each head became along training, and when, from a run directory alone.

Run layer. Flow position: run dir (checkpoints, metrics.jsonl) ─discover→ discovery.json beside each
seed's metrics. No head is named by the user: every head of every layer is scored, for every role of
the catalogue below that the task and model can give, at every checkpoint (evaluated as an online
evaluation at that step would be, like `clamp probe`), and, where the run measured a role's
measure itself, at every evaluation of metrics.jsonl (denser; used instead). A role is a per-head
measure and a threshold; any other per-head measure (a plug-in's too) is a role of its own name,
with the threshold its class declares (`Measure.role`, 0.5 unless it says otherwise; None: not a
role, as for the signed negative_similarity). A head takes a role when its score passes the
threshold; its formation time is the phase rule `{above: threshold}` on its series, the rule every
other phase change uses: a head that never passes has none, and a head still short of it at the
run's last step is censored there.

    role             measure (the first one this task and model give)        threshold
    prev_token       label_prev_token_score, prev_token_score                0.5
    induction        induction_strength, induction_score                     0.5
    duplicate_token  duplicate_token_score                                   0.5
    sink             first_position_score                                    0.5
    uniform          uniformity                                              0.9
    copying          copying_score (from the weights)                        0.7

A discovered head is named `<role>@L<layer>H<head>` (`prev_token@L0H2`): the name its subcircuit gets.

What each head does for the loss (`head_effects`): at every checkpoint, the train loss with the head's
output ablated minus the loss without, and the same for each role's group of heads at once (a group
that costs more than twice its costliest member is redundant: its members cover for each other);
beside it the cheap estimate, attribution patching (`attribution`: one backward for all heads), and
how well the two agree (`agreement`). A head without a role whose ablation costs at least MATTERS of
the costliest head's is discovered by its cost (`unexplained`).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ..measures import MEASURES, head_column
from ..names.columns import probe_column
from ..names.errors import InputError
from ..names.phases import relative_crossing, threshold_crossing
from ..names.sites import catalogue as site_catalogue
from ..recipe.outputs import unavailable
from ..recipe.spec import recipe_from_data
from ..recipe.types import Recipe, recipe_to_dict
from ..store.files import atomic_write, dumps
from ..store.rundir import DISCOVERY, RunDir, load_checkpoint
from .runs import Run
from .train import Trainer

__all__ = ["DISCOVERY", "ROLES", "Role", "agreement", "attribution", "catalogue", "discover", "discover_seed",
           "group_name", "head_effects", "head_name", "unexplained"]


@dataclass(frozen=True)
class Role:
    name: str
    measures: tuple[str, ...]         # the first one the run's task and model can give is used
    threshold: float


ROLES = (
    Role("prev_token", ("label_prev_token_score", "prev_token_score"), 0.5),
    Role("induction", ("induction_strength", "induction_score"), 0.5),
    Role("duplicate_token", ("duplicate_token_score",), 0.5),
    Role("sink", ("first_position_score",), 0.5),
    Role("uniform", ("uniformity",), 0.9),
    Role("copying", ("copying_score",), 0.7),
)


def head_name(role: str, layer: int, head: int) -> str:
    """A discovered head's name: `prev_token@L0H2`."""
    return f"{role}@L{layer}H{head}"


def group_name(role: str, layer: int) -> str:
    """The heads of one layer that hold a role, as a group: `prev_token@L0`."""
    return f"{role}@L{layer}"


def catalogue(thresholds: dict[str, float] | None = None) -> list[Role]:
    """clamp's roles, then every per-head measure none of them uses whose class declares a `role`
    threshold (plug-ins included: a role of the measure's name)."""
    thresholds = thresholds or {}
    used = {m for r in ROLES for m in r.measures}
    extra = [Role(name, (name,), cls.role) for name, cls in sorted(MEASURES.items())
             if cls.head_site is not None and cls.role is not None and name not in used]
    roles = [*ROLES, *extra]
    unknown = sorted(set(thresholds) - {r.name for r in roles})
    if unknown:
        raise InputError("--threshold", "", repr(unknown[0]), "a role: one of " + ", ".join(r.name for r in roles))
    return [replace(r, threshold=thresholds.get(r.name, r.threshold)) for r in roles]


def usable(recipe: Recipe, roles: list[Role]) -> tuple[dict[str, str], dict[str, str]]:
    """(role → the measure it uses, role → why it is skipped) for this run's task and model."""
    use, skipped = {}, {}
    for r in roles:
        why = [f"{m}: {unavailable(recipe, m)}" for m in r.measures if unavailable(recipe, m)]
        ok = [m for m in r.measures if m in MEASURES and not unavailable(recipe, m)]
        if ok:
            use[r.name] = ok[0]
        else:
            skipped[r.name] = "; ".join(why) or "no such measure"
    return use, skipped


def _series(rows: list[dict], column: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[column]) for r in rows if isinstance(r.get(column), (int, float))]
    return [s for s, _ in pts], [float(v) for _, v in pts]


def discover_seed(rd: RunDir, seed: int, roles: list[Role], progress: Callable[[dict], None] | None = None,
                  use_metrics: bool = True, effects: str | None = None) -> dict:  # long: one seed, top to bottom
    """Roles and formation times of every head of one seed's run (discovery.json's content).
    `use_metrics=False`: evaluate every role at the checkpoints, even one the run measured. `effects`
    (zero, mean, resample): also what each head does for the loss (`head_effects`), and the heads
    that matter without a role of the catalogue (`unexplained`), composition included."""
    recipe = rd.recipe()
    ckpts = rd.checkpoints()
    if not ckpts:
        raise InputError(str(rd.path), "", "a run without checkpoints",
                         "a run with train.checkpoint_every set (discovery evaluates every checkpoint)")
    use, skipped = usable(recipe, roles)
    if not use:
        raise InputError(str(rd.path), "", "no role this model and task can give",
                         "a model with what a role reads (attention patterns, for every built-in role)",
                         "; ".join(f"{k}: {v}" for k, v in skipped.items())[:160])
    measured = {r.get("step"): r for r in rd.metrics()}
    dense = {role: m for role, m in use.items() if use_metrics and m in recipe.measure}   # the run measured it
    todo = sorted({m for role, m in use.items() if role not in dense})
    shape = recipe.shape()
    composing = shape.layers > 1 and not unavailable(recipe, "composition")
    if composing:
        todo.append("composition")                  # K/Q/V composition of every pair, at every checkpoint
    rows: list[dict] = []
    if todo:
        probe = replace(recipe, measure=tuple(todo), probes={},                 # the train evaluator only
                        train=replace(recipe.train, evaluators=("train",), evaluator_every={}))
        trainer = Trainer(probe, seed, train=False)
        for step, path in ckpts:
            trainer.load_state(load_checkpoint(path))
            rows.append(trainer.evaluate(probes=False, every=True))
            if progress:
                progress({"event": "eval", "seed": seed, "step": step, "steps": ckpts[-1][0]})
    last = max([ckpts[-1][0], *[s for s in measured if isinstance(s, int)]])
    by_role = {r.name: r for r in roles}
    heads = []
    for role, m in use.items():
        source = list(measured.values()) if role in dense else rows
        thr = by_role[role].threshold
        for L in range(shape.layers):
            for h in range(shape.heads):
                col = head_column(m, L, h)
                steps, values = _series(source, col)
                if not values:
                    continue
                formed = threshold_crossing(steps, values, thr, below=False)
                if formed is None and max(values) <= thr:
                    continue                                 # never took the role: not listed
                heads.append({"name": head_name(role, L, h), "role": role, "layer": L, "head": h,
                              "measure": m, "column": col, "threshold": thr, "formed": formed,
                              "final": values[-1], "peak": max(values), "holds": values[-1] > thr,
                              "steps": steps, "values": [round(v, 5) for v in values]})
    heads.sort(key=lambda d: (d["formed"] is None, d["formed"] or 0, d["layer"], d["head"], d["role"]))
    columns = {c: [r.get(c) for r in rows] for m in todo if m != "composition"       # every head, each checkpoint
               for L in range(shape.layers) for h in range(shape.heads) for c in [head_column(m, L, h)]}
    eff = head_effects(rd, seed, heads, effects, progress) if effects else None
    if eff is not None and "heads" in eff:
        heads += unexplained(heads, eff)
    composition = compositions(heads, rows, recipe) if composing else []
    return {**({"effects": eff} if eff is not None else {}), "seed": seed, "run": str(rd.path), "last_step": last,
            "checkpoints": [s for s, _ in ckpts], "measures": use,
            "from_metrics": sorted(dense), "skipped": skipped, "heads": heads, "columns": columns,
            "composition": composition,
            "phases": (rd.summary() or {}).get("phases", {}),
            "not_formed": {role: f"no head passed {by_role[role].threshold} by step {last} (censored there)"
                           for role in use if not any(d["role"] == role for d in heads)}}


NOTABLE = 0.2          # a composition change counts when it is at least this share of the init baseline
MATTERS = 0.5          # a head without a role matters when its ablation costs this share of the costliest head's


def unexplained(heads: list[dict], effects: dict) -> list[dict]:
    """Heads that hold no role at the end but whose ablation costs at least MATTERS times the costliest
    single head's at the end: they matter, and no role of the catalogue says what they do. Each is a
    head of role `unexplained` (named `unexplained@L1H0`) whose series is its ablation cost along
    training, formed when that cost first passed the same threshold (the `above` rule)."""
    holding = {(h["layer"], h["head"]) for h in heads if h["holds"]}
    costs = effects["heads"]
    top = max((v[-1] for v in costs.values()), default=0.0)
    if top <= 0:
        return []
    thr = round(MATTERS * top, 6)
    out = []
    for name, series in costs.items():
        L, h = (int(x) for x in name[1:].split("H"))
        if (L, h) in holding or series[-1] < thr:
            continue
        out.append({"name": head_name("unexplained", L, h), "role": "unexplained", "layer": L, "head": h,
                    "measure": f"loss +Δ ablated ({effects['how']})", "column": None, "threshold": thr,
                    "formed": threshold_crossing(effects["steps"], series, thr, below=False),
                    "final": series[-1], "peak": max(series), "holds": True, "steps": effects["steps"],
                    "values": series})
    return sorted(out, key=lambda d: (d["formed"] is None, d["formed"] or 0, d["layer"], d["head"]))


def dominant(heads: list[dict]) -> dict[tuple[int, int], dict]:
    """(layer, head) → the role a head holds most clearly at the end, where it holds several: the one
    whose final score is the largest multiple of its threshold (the largest margin above it, for a
    threshold that is not positive). A head that holds both copying and induction is named for the
    one it is further into."""
    def clarity(h: dict) -> float:
        t = h["threshold"]
        return h["final"] / t if t > 0 else h["final"] - t
    out: dict[tuple[int, int], dict] = {}
    for h in heads:
        place = (h["layer"], h["head"])
        if h["holds"] and (place not in out or clarity(h) > clarity(out[place])):
            out[place] = h
    return out


def compositions(heads: list[dict], rows: list[dict], recipe: Recipe) -> list[dict]:
    """K/Q/V composition along training between every two discovered heads in different layers (the
    earlier one's OV into the later one's K, Q or V), with the init baseline: each pair's series, its
    change from the first checkpoint to the last, and when it moved (`moves`: the relative phase rule on
    the series, halfway from its plateau to its final level; None with the reason where the series has
    no plateau to leave), and whether the change is `notable`: at least NOTABLE times the init
    baseline (smaller ones are within what a pair of random heads drifts)."""
    from ..measures.weights import composition_baseline
    from ..names.columns import composition_column
    base = composition_baseline(recipe.shape())
    steps = [r["step"] for r in rows]
    held = {place: h["name"] for place, h in dominant(heads).items()}
    out = []
    for (l1, h1), a in held.items():
        for (l2, h2), b in held.items():
            if l2 <= l1:
                continue
            for kind in "kqv":
                col = composition_column(kind, l1, h1, l2, h2)
                got = [r.get(col) for r in rows]
                if any(v is None for v in got):
                    continue
                values = [float(v) for v in got if v is not None]
                move = relative_crossing(steps, values, 0.5)
                out.append({"from": a, "to": b, "kind": kind, "steps": steps,
                            "values": [round(v, 5) for v in values], "baseline": round(base[f"{kind}_composition"], 5),
                            "change": round(values[-1] - values[0], 5), "moves": move["step"],
                            "notable": abs(values[-1] - values[0]) >= NOTABLE * base[f"{kind}_composition"],
                            "direction": "rise" if values[-1] > values[0] else "fall",
                            **({"reason": move["reason"]} if move.get("reason") else {})})
    return out


def head_effects(rd: RunDir, seed: int, heads: list[dict], how: str = "mean",
                 progress: Callable[[dict], None] | None = None) -> dict:
    """What each head does for the loss along training: at every checkpoint, the train loss with that
    head's output (`hook_z`) ablated (`how`: zero, mean or resample) minus the loss without; and for
    each role more than one head took, the same with the whole group ablated at once. A group whose
    ablation costs more than twice its costliest member's, at the end, is redundant: each member
    covers for the others."""
    recipe = rd.recipe()
    shape = recipe.shape()
    have = {i.name for i in site_catalogue(shape)}
    if "blocks.0.attn.hook_z" not in have:
        return {"skipped": "this model has no site blocks.{L}.attn.hook_z (its family or adapter names none)"}
    places = [(L, h) for L in range(shape.layers) for h in range(shape.heads)]
    probes: dict[str, list] = {f"L{L}H{h}": [{"ablate": f"blocks.{L}.attn.hook_z[{h}]", "how": how}]
                               for L, h in places}
    groups: dict[str, list[tuple[int, int]]] = {}
    for d in heads:
        if d["holds"]:
            groups.setdefault(d["role"], []).append((d["layer"], d["head"]))
    groups = {role: sorted(set(g)) for role, g in groups.items() if len(set(g)) > 1}
    for role, members in groups.items():                       # one ablation per layer the group spans
        layers = sorted({L for L, _ in members})
        sel = {L: ",".join(str(h) for M, h in members if M == L) for L in layers}
        probes[f"group_{role}"] = [{"ablate": f"blocks.{L}.attn.hook_z[{sel[L]}]", "how": how} for L in layers]
    data = recipe_to_dict(recipe)
    # the loss alone (no rule reads another column), and what the recipe's own selections read
    selects = sorted({sc["select"]["by"] for sc in data.get("subcircuits", {}).values()
                      if sc.get("select") and sc["select"].get("run", "self") == "self"})
    data.update(probes=probes, measure=["loss", *selects], phases={})
    data["train"] = {**data["train"], "evaluators": ["train"], "evaluator_every": {}, "stop": {}}
    probing = recipe_from_data(data, default_name=recipe.name)
    trainer = Trainer(probing, seed, train=False)
    steps: list[int] = []
    base: list[float] = []
    delta: dict[str, list[float]] = {name: [] for name in probes}
    estimate: dict[str, list[float]] = {f"L{L}H{h}": [] for L, h in places}
    ckpts = rd.checkpoints()
    for step, path in ckpts:
        trainer.load_state(load_checkpoint(path))
        row = trainer.evaluate(probes=True, every=True)
        steps.append(step)
        base.append(row["loss"])
        for name in probes:
            delta[name].append(round(row[probe_column("loss", name)] - row["loss"], 6))
        for name, v in (attribution(trainer, how) or {}).items():
            estimate[name].append(round(v, 6))
        if progress:
            progress({"event": "eval", "seed": seed, "step": step, "steps": ckpts[-1][0]})
    out: dict = {"how": how, "steps": steps, "loss": base,
                 "heads": {f"L{L}H{h}": delta[f"L{L}H{h}"] for L, h in places}, "groups": {}}
    for role, members in groups.items():
        g = delta[f"group_{role}"]
        single = max(delta[f"L{L}H{h}"][-1] for L, h in members)
        out["groups"][role] = {"heads": [f"L{L}H{h}" for L, h in members], "delta": g,
                               "largest_single": single, "redundant": g[-1] > 2 * max(single, 0.0) and g[-1] > 0}
    out["attribution"] = ({"heads": estimate, "agreement": agreement(out["heads"], estimate)}
                          if all(len(v) == len(steps) for v in estimate.values()) else
                          {"skipped": f"attribution patching estimates {how} ablations only (zero, mean) of a run "
                                      "whose forward is one pass"})
    return out


def attribution(trainer: Trainer, how: str) -> dict[str, float] | None:
    """Attribution patching: each head's ablation effect on the train evaluator's loss to first order,
    sum over batch, positions and d_head of (ablated z - z) * d loss / d z at `hook_z` — one forward and
    one backward for every head at once (an ablation costs a forward per head). `how`: zero or mean
    (the batch mean at each position, as the ablation's); None where it cannot be estimated (another
    ablation; a forward of two passes; a head whose output carries no gradient)."""
    iv = trainer.intervener
    if how not in ("zero", "mean") or iv.n_passes != 1:
        return None
    batch = next(b for key, b, _ in trainer.eval_forwards(every=True) if key == "train")
    fns = dict(next(iv.passes(batch)))
    zs: dict[int, Tensor] = {}

    def keep(L: int, inner: Callable[[Tensor], Tensor] | None) -> Callable[[Tensor], Tensor]:
        def fn(x: Tensor) -> Tensor:
            x = inner(x) if inner is not None else x
            if x.requires_grad:
                x.retain_grad()
                zs[L] = x                       # [batch, pos, head, d_head]
            return x
        return fn
    layers = range(trainer.plan.shape.layers)
    for L in layers:
        fns[f"blocks.{L}.attn.hook_z"] = keep(L, fns.get(f"blocks.{L}.attn.hook_z"))
    iv.attach(fns)
    try:
        with torch.enable_grad():
            trainer.task.loss(trainer.seam.forward(batch), batch).backward()
    finally:
        iv.detach()
        trainer.model.zero_grad(set_to_none=True)
    if len(zs) != len(layers):
        return None
    out = {}
    for L, z in zs.items():
        zd = z.detach()
        target = torch.zeros_like(zd) if how == "zero" else zd.mean(0, keepdim=True)
        est = ((target - zd) * z.grad).sum(dim=(0, 1, 3))                       # [head]
        out.update({f"L{L}H{h}": float(v) for h, v in enumerate(est.tolist())})
    return out


def agreement(ablated: dict[str, list[float]], estimated: dict[str, list[float]]) -> dict:
    """How well attribution patching ranks and sizes the heads' ablation effects: Pearson and Spearman
    correlations over every (head, checkpoint), and over the heads at the last checkpoint."""
    from scipy.stats import pearsonr, spearmanr
    a = [x for k in ablated for x in ablated[k]]
    e = [x for k in ablated for x in estimated[k]]
    a_end = [v[-1] for v in ablated.values()]
    e_end = [estimated[k][-1] for k in ablated]

    def corr(x: list[float], y: list[float]) -> tuple[float | None, float | None]:
        if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
            return None, None
        return round(float(pearsonr(x, y)[0]), 4), round(float(spearmanr(x, y)[0]), 4)
    p, r = corr(a, e)
    p_end, r_end = corr(a_end, e_end)
    return {"n": len(a), "pearson": p, "spearman": r, "heads_at_end": len(a_end), "pearson_end": p_end,
            "spearman_end": r_end}


def discover(run_dir: str | os.PathLike, thresholds: dict[str, float] | None = None,
             progress: Callable[[dict], None] | None = None, effects: str | None = "mean") -> dict[int, dict]:
    """Discover every seed of a run; writes discovery.json beside each seed's metrics.jsonl and returns
    {seed: its discovery}. `effects`: how heads are ablated to measure what they do for the loss
    (zero, mean, resample; None: not measured)."""
    run = Run.load(run_dir)
    if not run.seeds:
        raise InputError(str(run_dir), "", "no run here", "a directory written by `clamp run` or `clamp bench`")
    roles = catalogue(thresholds)
    out = {}
    for seed, sr in sorted(run.seeds.items()):
        rd = RunDir(sr.dir)
        found = discover_seed(rd, seed, roles, progress, effects=effects)
        with rd.held():
            atomic_write(rd.discovery_file, dumps(found) + "\n")
        out[seed] = found
    return out
