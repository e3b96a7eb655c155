"""The experiments that test a discovery: a runnable suite written from `clamp discover`'s findings.

Run layer (reads run directories; writes nothing itself: `isolation_suite` returns the suite as
data and `suite_yaml` as text). For every role a group of heads took in one layer, in at least half
the seeds (in a seed without it, the group's interventions select no head), the suite has a
subcircuit `<role>@L<layer>` of what the role's measure reads (`acted_on`: for a role of the
attention pattern the heads' patterns and their W_Q and W_K; for copying, an OV-circuit role, their
outputs z and W_V, W_O; for heads found by their ablation cost, z and all four weights) and, beside
the baseline, these variants with the prediction each one tests:

    clamp_<role>_L<l>    the group clamped to its role's ideal pattern (previous_token or induction)
                         from step 0: the phase change comes earlier (ratio below 1)
    ablate_<role>_L<l>   its sites mean-ablated from step 0: the phase change comes later or
                         never (ratio above 1; a run without one is censored, which still counts)
    freeze_<role>_L<l>   its weights frozen until the step it formed at in the baseline
                         (median over seeds): the phase change comes later (ratio above 1)

    graft_<role>_L<l>    the group clamped, from step 0, to its own activation in the baseline's
                         last checkpoint (`graft`; for roles without an ideal pattern, or for all
                         with graft="all"): the phase change comes earlier

Where the discovery found a group A composing into a later group B (a composition score that rose
by a notable amount, in at least half the seeds), the suite tests that dependency: B's formation
(its role measure, the largest over B's layer, crossing the role's threshold: a phase rule every
variant adds) comes later when A is ablated and earlier when A is clamped; and a pair variant

    clamp_<A>__ablate_<B>  A clamped (or grafted) and B ablated: the phase change is no earlier than
                         with B ablated alone (A's help runs through B)

Where every seed's group is the same heads, the subcircuit names them (`blocks.0.attn.hook_pattern
[1,5]`) and each head is also a subcircuit of its own (`prev_token@L0H1`); where seeds differ, the
subcircuit selects, per seed, the heads of that layer whose role measure was above the threshold at
the baseline's last checkpoint (`select: {run: .../seed_{seed}, ...}`), which reads the scores that
`clamp discover` saved beside the run. `clamp bench` on the suite, then `clamp explain`, says which
predictions held, paired by seed.
"""
from __future__ import annotations

import os
import re
import statistics
from pathlib import Path

from ..names.errors import InputError
from ..store.rundir import RecipeDir
from .discover import group_name, head_name

IDEAL = {"prev_token": "previous_token", "induction": "induction"}    # roles with an ideal value source


def _groups(found: dict[int, dict]) -> dict[tuple[str, int], dict[int, list[int]]]:
    """(role, layer) → seed → heads holding that role at the end; only groups at least half the seeds have
    (in a seed without one, the group's interventions select no head: that seed runs as its baseline)."""
    out: dict[tuple[str, int], dict[int, list[int]]] = {}
    for seed, d in found.items():
        for h in d["heads"]:
            if h["holds"]:
                out.setdefault((h["role"], h["layer"]), {}).setdefault(seed, []).append(h["head"])
    return {k: {s: sorted(v) for s, v in by.items()} for k, by in sorted(out.items()) if 2 * len(by) >= len(found)}


def _seed_dirs(run_dir: Path) -> str:
    """The baseline run of `{seed}` as a path template (a single-seed run is its own directory)."""
    dirs = RecipeDir(run_dir).seed_runs()
    if len(dirs) == 1:
        return str(next(iter(dirs.values())).path.resolve())
    return str((run_dir / "seed_{seed}").resolve())


GRAFTS = ("missing", "all", "none")     # graft variants: for roles without an ideal pattern, for all, or none


def isolation_suite(run_dir: str | os.PathLike, found: dict[int, dict],  # long: a table of variants
                    name: str, graft: str = "missing") -> tuple[dict, list[str]]:
    """The suite (as data) that tests `found` (discover()'s result for the run at `run_dir`), and a note
    per role it could not test. `graft` (GRAFTS): which groups also get a variant clamped to their
    activation in the baseline's last checkpoint."""
    run_dir = Path(run_dir)
    base = (run_dir / "recipe.yaml").resolve()
    if not base.is_file():
        raise InputError(str(run_dir), "", "no recipe.yaml", "a run directory written by `clamp run`")
    seeds = sorted(found)
    template = _seed_dirs(run_dir)
    notes: list[str] = []
    subcircuits: dict[str, dict] = {}
    variants: dict[str, dict] = {"baseline": {}}
    expect: list[dict] = []
    for (role, L), by_seed in _groups(found).items():
        first = found[seeds[0]]
        measure = first["measures"].get(role)          # none for `unexplained` (read from the ablations)
        threshold = next(h["threshold"] for s in seeds for h in found[s]["heads"] if h["role"] == role)
        group = group_name(role, L)
        lacking = [s for s in seeds if s not in by_seed]
        if measure is None and (lacking or len({tuple(v) for v in by_seed.values()}) > 1):
            notes.append(f"{group}: its heads differ by seed and no per-head measure selects them (found by their "
                         "ablation cost); not tested")
            continue
        if lacking:
            notes.append(f"{group}: seed(s) {', '.join(map(str, lacking))} have no such head; there its interventions "
                         "select none and the run is that seed's baseline")
        same = not lacking and len({tuple(v) for v in by_seed.values()}) == 1
        site, weights = acted_on(measure)
        if same:
            subcircuits[group] = _part(L, site, weights, ",".join(map(str, by_seed[seeds[0]])))
            for h in by_seed[seeds[0]]:
                subcircuits[head_name(role, L, h)] = _part(L, site, weights, str(h))
        else:
            last = min(found[s]["checkpoints"][-1] for s in seeds)
            subcircuits[group] = {"sites": [f"blocks.{L}.attn.{site}"],
                                  "params": [f"blocks.{L}.attn.W_{w}" for w in weights],
                                  "select": {"layer": L, "by": measure, "above": threshold, "run": template,
                                             "at": last}}
        formed = [min(h["formed"] for h in found[s]["heads"] if h["role"] == role and h["layer"] == L
                      and h["holds"] and h["formed"] is not None) for s in by_seed]
        until = int(statistics.median(formed))
        slug = _slug(role, L)
        if role in IDEAL:
            variants[f"clamp_{slug}"] = {"interventions": [{"clamp": group, "to": IDEAL[role], "strength": 1.0,
                                                            "name": group}]}
            expect.append({"name": f"clamping {group} to its ideal pattern brings the phase change earlier",
                           "ratio": [f"clamp_{slug}", "baseline"], "of": "crossing", "below": 1.0})
        elif graft == "none":
            notes.append(f"{group}: no ideal value source for the role {role}; ablated and frozen only")
        if graft == "all" or graft == "missing" and role not in IDEAL:
            variants[f"graft_{slug}"] = {"interventions": [{"clamp": group, "to": "graft", "run": template, "step": -1,
                                                            "name": group}]}
            expect.append({"name": f"clamping {group} to its activation at the end of the baseline brings the phase "
                                   "change earlier", "ratio": [f"graft_{slug}", "baseline"], "of": "crossing",
                           "below": 1.0})
        variants[f"ablate_{slug}"] = {"interventions": [{"ablate": group, "how": "mean", "name": group}]}
        expect.append({"name": f"ablating {group} delays or prevents the phase change",
                       "ratio": [f"ablate_{slug}", "baseline"], "of": "crossing", "above": 1.0})
        if until > 0:
            variants[f"freeze_{slug}"] = {"interventions": [{"freeze": group, "steps": [0, until], "name": group}]}
            what = {"QK": "queries and keys", "VO": "values and outputs"}.get(weights, "weights")
            expect.append({"name": f"freezing {group}'s {what} until step {until} (when it formed) "
                                   "delays the phase change",
                           "ratio": [f"freeze_{slug}", "baseline"], "of": "crossing", "above": 1.0})
    if len(variants) == 1:
        raise InputError(str(run_dir), "", "no role that a group of heads held in at least half the seeds",
                         "nothing to test: see `clamp discover`'s table (lower a role's --threshold?)")
    shared: dict = {"subcircuits": subcircuits}          # what every variant adds to the base recipe
    _dependencies(found, base, variants, expect, notes, shared)
    suite = {"name": name, "base": str(base), "seeds": seeds,
             "variants": {k: {**shared, **v} for k, v in variants.items()}, "expect": expect}
    return suite, notes


def dependencies(found: dict[int, dict]) -> dict[tuple[str, str], list[str]]:
    """(group A, group B) → the composition kinds ('k', 'q', 'v') by which a head of A's composes into
    a head of B's with a notable rise, in at least half the seeds (groups named by `group_name`)."""
    seen: dict[tuple[str, str], dict[int, set[str]]] = {}
    for seed, d in found.items():
        group_of = {h["name"]: group_name(h["role"], h["layer"]) for h in d["heads"]}   # composition names heads
        for c in d.get("composition", []):
            a, b = group_of.get(c["from"]), group_of.get(c["to"])
            if a and b and c.get("notable", True) and c["direction"] == "rise":
                seen.setdefault((a, b), {}).setdefault(seed, set()).add(c["kind"])
    return {k: sorted(set().union(*by.values())) for k, by in sorted(seen.items()) if 2 * len(by) >= len(found)}


def _dependencies(found: dict[int, dict], base: Path, variants: dict, expect: list, notes: list,
                  shared: dict) -> None:
    """Add the experiments that test each dependency A → B between tested groups (module docstring)."""
    from ..measures.base import head_site
    from ..names.columns import measure_column
    from ..recipe.spec import load_recipe
    deps = dependencies(found)
    if not deps:
        return
    recipe = load_recipe(base)
    measures, phases = list(recipe.measure), {k: dict(v) for k, v in recipe.phases.items()}
    first = found[min(found)]
    role_layer = {group_name(r, L): (r, L) for r, L in _groups(found)}
    for (a, b), kinds in deps.items():
        if a not in role_layer or b not in role_layer:
            continue                                                   # a group the suite does not test
        sa, sb = (_slug(*role_layer[g]) for g in (a, b))
        if f"ablate_{sb}" not in variants or f"ablate_{sa}" not in variants:
            continue
        how = "/".join(k.upper() for k in kinds)
        role_b, layer_b = role_layer[b]
        measure = first["measures"].get(role_b)
        helper = next((v for v in (f"clamp_{sa}", f"graft_{sa}") if v in variants), None)
        if measure is None or not phases:
            why = ("has no per-head measure (found by its ablation cost)" if measure is None else
                   "would be the recipe's only phase rule (the suite's `crossing`)")
            notes.append(f"{a} → {b} ({how}-composition): {b} {why}, so its formation is not timed; tested "
                         "through the phase change only")
        else:
            threshold = next(h["threshold"] for d in found.values() for h in d["heads"] if h["role"] == role_b)
            col = f"max({measure_column(measure, head_site(measure, layer_b))}[*])"
            measures += [] if measure in measures else [measure]
            phases.setdefault(col, {})["above"] = threshold
            when = f"phase:{col}:above"
            expect.append({"name": f"ablating {a} delays {b} forming ({how}-composition)",
                           "ratio": [f"ablate_{sa}", "baseline"], "of": when, "above": 1.0})
            if helper:
                expect.append({"name": f"{helper.split('_')[0]}ing {a} brings {b} forming earlier",
                               "ratio": [helper, "baseline"], "of": when, "below": 1.0})
        if helper is None:
            continue
        pair = f"{helper}__ablate_{sb}"
        both = variants[helper]["interventions"] + variants[f"ablate_{sb}"]["interventions"]
        variants[pair] = {"interventions": [dict(iv) for iv in both]}
        expect.append({"name": f"with {b} ablated, {helper.split('_')[0]}ing {a} does not bring the phase change "
                               f"earlier ({a}'s help runs through {b})",
                       "ratio": [pair, f"ablate_{sb}"], "of": "crossing", "above": 0.9})
    if measures != list(recipe.measure):
        shared["measure"] = measures
    if phases != {k: dict(v) for k, v in recipe.phases.items()}:
        shared["phases"] = phases


def _slug(role: str, layer: int) -> str:
    """A group's part of its variants' names: `clamp_<slug>`, `ablate_<slug>`."""
    return f"{role}_L{layer}"


def acted_on(measure: str | None) -> tuple[str, str]:
    """(site, weights) an isolation experiment acts on for a role read from `measure`: a role of the
    attention pattern (its measure reads patterns or scores) — the pattern, W_Q and W_K; a role of
    the OV circuit (its measure reads W_V or W_O: copying) — the head's output z, W_V and W_O; a head
    found by its ablation cost (no measure: `unexplained`) — its output and all four weights."""
    from ..measures import MEASURES
    if measure is None:
        return "hook_z", "QKVO"
    head_site = MEASURES[measure].head_site if measure in MEASURES else None
    if head_site and any(part in head_site for part in (".W_O", ".W_V", "hook_z", "hook_v")):
        return "hook_z", "VO"
    return "hook_pattern", "QK"


def _part(L: int, site: str, weights: str, heads: str) -> dict:
    """A subcircuit of layer L's heads (`heads`: '2' or '0,3'): their `site` and W_<w> for w in `weights`."""
    return {"sites": [f"blocks.{L}.attn.{site}[{heads}]"],
            "params": [f"blocks.{L}.attn.W_{w}[{heads}]" for w in weights]}


def suite_yaml(suite: dict, notes: list[str], run_dir: str | os.PathLike) -> str:
    """The suite as a YAML file, headed by where it came from and what it could not test."""
    import yaml
    head = [f"# Isolation experiments for the heads `clamp discover` found in {run_dir}",
            "# (clamp bench this file, then clamp explain its directory)."]
    head += [f"# Note: {n}" for n in notes]
    text = yaml.safe_dump(suite, sort_keys=False, width=110)    # what every variant shares: one anchor each
    for key, anchor in re.findall(r"(\w+): &(id\d+)", text):
        text = text.replace(f"&{anchor}", f"&{key}").replace(f"*{anchor}", f"*{key}")
    return "\n".join(head) + "\n" + text
