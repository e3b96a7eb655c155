"""Clamp-based progress measures after the fact: probes applied to every checkpoint of a run.

Flow position: run dir (checkpoints) ─posthoc→ probes_<probes file stem>.jsonl (one per probes
file, so a second probes file never overwrites the first's results). A probes file uses recipe
syntax for two keys, `subcircuits` (added to the run's) and `probes` (name → list of clamps
and ablations); it is checked against the run's own model with the usual located errors.
Each checkpoint is evaluated exactly as an online evaluation at that step would be (the
run's own interventions active at that step, then each probe on top), so a probe given to
`clamp run` and the same probe applied here afterwards give the same numbers.
"""
from __future__ import annotations

import os
from collections.abc import Callable

from ..models.plugins import reading_directory
from ..names.errors import InputError, show
from ..names.yamlio import Source, load_yaml_file, safe_name
from ..recipe.spec import recipe_from_data
from ..recipe.types import Recipe, recipe_to_dict
from ..store.files import atomic_write, dumps
from ..store.rundir import RunDir, load_checkpoint
from .runs import Run
from .train import Trainer

PROBE_KEYS = ("subcircuits", "probes")


def with_probes(recipe: Recipe, probes_path: str | os.PathLike) -> Recipe:
    """The run's recipe with the subcircuits and probes of a probes file added."""
    path = os.fspath(probes_path)
    data, src = load_yaml_file(path, "a probes file")
    if not isinstance(data, dict) or "probes" not in data:
        raise src.error((), show(data), "a mapping with probes: {name: [interventions]} (and optional subcircuits)")
    src.check_keys(data, PROBE_KEYS, expected="subcircuits or probes")
    merged = recipe_to_dict(recipe)
    merged["subcircuits"] = {**merged.get("subcircuits", {}), **(data.get("subcircuits") or {})}
    merged["probes"] = data["probes"]
    msrc = Source(path, {})
    for p, line in src.lines.items():
        msrc.lines[p] = line
    for p in list(msrc.lines):                  # the run's own keys are not in this file
        if p and p[0] not in PROBE_KEYS:
            del msrc.lines[p]
    return recipe_from_data(merged, msrc, default_name=recipe.name)


def probes_output(probes_path: str | os.PathLike) -> str:
    """The file name a probes file's results are written to: probes_<its stem>.jsonl."""
    return f"probes_{safe_name(os.path.splitext(os.path.basename(os.fspath(probes_path)))[0])}.jsonl"


def probe_run(run_dir: str | os.PathLike, probes_path: str | os.PathLike,
              progress: Callable[[dict], None] | None = None) -> dict[int, list[dict]]:
    """Evaluate every checkpoint of every seed of a run with the probes; writes
    `probes_output(probes_path)` beside each seed's metrics.jsonl and returns the rows per seed."""
    run = Run.load(run_dir)
    if not run.seeds:
        raise InputError(str(run_dir), "", "no run here", "a directory written by `clamp run` or `clamp bench`")
    out = {}
    for seed, sr in sorted(run.seeds.items()):
        rd = RunDir(sr.dir)
        with reading_directory(str(rd.recipe_file)):
            recipe = with_probes(rd.recipe(), probes_path)
        ckpts = rd.checkpoints()
        if not ckpts:
            raise InputError(str(sr.dir), "", "a run without checkpoints", "a run with train.checkpoint_every set")
        trainer = Trainer(recipe, seed, train=False)
        rows = []
        for step, path in ckpts:
            trainer.load_state(load_checkpoint(path))
            rows.append(trainer.evaluate(probes=True))
            if progress:
                progress({"event": "eval", "seed": seed, "step": step, "steps": ckpts[-1][0]})
        with rd.held():
            atomic_write(rd.file(probes_output(probes_path)), "".join(dumps(r) + "\n" for r in rows))
        out[seed] = rows
    return out
