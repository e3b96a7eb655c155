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

Where every seed's group is the same heads, the subcircuit names them (`blocks.0.attn.hook_pattern
[1,5]`) and each head is also a subcircuit of its own (`prev_token@L0H1`); where seeds differ, the
subcircuit selects, per seed, the heads of that layer whose role measure was above the threshold at
the baseline's last checkpoint (`select: {run: .../seed_{seed}, ...}`), which reads the scores that
`clamp discover` saved beside the run. `clamp bench` on the suite, then `clamp explain`, says which
predictions held, paired by seed.
"""
from __future__ import annotations

import os
import statistics
from pathlib import Path

from ..names.errors import InputError
from ..store.rundir import RecipeDir

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


def isolation_suite(run_dir: str | os.PathLike, found: dict[int, dict],  # long: a table of variants
                    name: str) -> tuple[dict, list[str]]:
    """The suite (as data) that tests `found` (discover()'s result for the run at `run_dir`), and a note
    per role it could not test."""
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
        group = f"{role}@L{L}"
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
                subcircuits[f"{role}@L{L}H{h}"] = _part(L, site, weights, str(h))
        else:
            last = min(found[s]["checkpoints"][-1] for s in seeds)
            subcircuits[group] = {"sites": [f"blocks.{L}.attn.{site}"],
                                  "params": [f"blocks.{L}.attn.W_{w}" for w in weights],
                                  "select": {"layer": L, "by": measure, "above": threshold, "run": template,
                                             "at": last}}
        formed = [min(h["formed"] for h in found[s]["heads"] if h["role"] == role and h["layer"] == L
                      and h["holds"] and h["formed"] is not None) for s in by_seed]
        until = int(statistics.median(formed))
        slug = f"{role}_L{L}"
        if role in IDEAL:
            variants[f"clamp_{slug}"] = {"interventions": [{"clamp": group, "to": IDEAL[role], "strength": 1.0,
                                                            "name": group}]}
            expect.append({"name": f"clamping {group} to its ideal pattern brings the phase change earlier",
                           "ratio": [f"clamp_{slug}", "baseline"], "of": "crossing", "below": 1.0})
        else:
            notes.append(f"{group}: no ideal value source for the role {role}; ablated and frozen only")
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
    suite = {"name": name, "base": str(base), "seeds": seeds,        # every variant adds the same subcircuits
             "variants": {k: {"subcircuits": subcircuits, **v} for k, v in variants.items()}, "expect": expect}
    return suite, notes


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
    text = yaml.safe_dump(suite, sort_keys=False, width=110)           # the shared subcircuits: one anchor
    return "\n".join(head) + "\n" + text.replace("&id001", "&subcircuits").replace("*id001", "*subcircuits")
