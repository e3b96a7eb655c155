"""Every recipe and suite shipped in the repository loads, compiles and fits the default memory limit.

A recipe or suite that drifts from the code (a renamed key, a site that no longer exists, a
quantity no recipe produces) fails here, by file name, before anyone runs it.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from clamp.names.yamlio import load_yaml_file
from clamp.recipe import budget
from clamp.recipe.compile import compile_plan, probe_text
from clamp.recipe.spec import load_recipe
from clamp.recipe.suite import load_suite
from clamp.store.rundir import run_metrics

ROOT = Path(__file__).resolve().parent.parent
FILES = sorted(subprocess.run(["git", "ls-files", "*.yaml", "*.yml"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.split())


def test_the_repository_has_recipes_and_suites():
    assert len(FILES) >= 20 and any("singh2024" in f for f in FILES) and any("repeat_tokens" in f for f in FILES)


@pytest.mark.parametrize("name", FILES)
def test_every_file_loads_and_compiles(name):
    path = ROOT / name
    data, _ = load_yaml_file(path, "a YAML file")
    if isinstance(data, dict) and "variants" in data:                 # a suite
        suite = load_suite(path)
        assert suite.runs()
        recipes = list(suite.recipes.values())
    else:
        recipes = [load_recipe(path)]
    for recipe in recipes:
        for seed in recipe.seeds[:1]:
            plan = compile_plan(recipe, seed, metrics_of=run_metrics)
            assert plan.text()
            for probe in recipe.probes:              # heads chosen at each evaluation are described
                assert probe_text(recipe, probe, seed, metrics_of=run_metrics)
        budget.check(recipe, budget.default_limit())
