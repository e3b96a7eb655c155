"""Shared helpers: tiny recipes that train in a fraction of a second."""
from __future__ import annotations

import contextlib

import pytest
import torch
from hypothesis import settings

import clamp

torch.set_num_threads(1)
# no per-example deadline: a first example that imports or builds a model, or a busy machine, is slow
# without being wrong (the examples' count still bounds each test)
settings.register_profile("clamp", deadline=None)
settings.load_profile("clamp")


def tiny(extra: str = "", **sections) -> clamp.Recipe:
    """A 2-layer, 4-head, d_model 16 few-shot recipe; `extra` is appended YAML."""
    base = """
name: tiny
seeds: [0]
model: {layers: 2, heads: 4, d_model: 16}
task: {name: fewshot, classes: 10, labels: 4, dim: 8}
train: {steps: 20, batch: 8, lr: 1.0e-2, eval_every: 5, eval_size: 16}
"""
    from clamp.names.yamlio import load_yaml
    data, src = load_yaml(base + extra, "tiny.yaml")
    for k, v in sections.items():
        data[k] = v
    return clamp.recipe_from_data(data, src)


@pytest.fixture
def tiny_recipe():
    return tiny


@contextlib.contextmanager
def registries_restored():
    """What is registered inside (tasks, value sources, measures, plug-in modules) is gone after it."""
    import sys

    from clamp.measures import MEASURE_PLUGINS
    from clamp.models.plugins import LOADED
    from clamp.tasks import TASKS
    from clamp.values import VALUES
    tables = (TASKS, VALUES, MEASURE_PLUGINS, LOADED)
    saved = [dict(t) for t in tables]
    try:
        yield
    finally:
        for name in set(LOADED) - set(saved[3]):
            sys.modules.pop(name, None)
        for t, s in zip(tables, saved):
            t.clear()
            t.update(s)


@pytest.fixture(autouse=True)
def isolated_registries():
    """No test sees another's extensions (error messages list the registries' names); a module-scoped
    fixture that loads plug-ins wraps itself in `registries_restored` too."""
    with registries_restored():
        yield


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for every test that uses the Ray backend (clamp joins a running one)."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


# Test files that take longest (or wait longest: Ray, killed subprocesses) start first, so that two
# workers (pytest-xdist, one test file per worker at a time) end together rather than one finishing
# the longest file alone at the end of the run. xdist keeps this order only with --no-loadscope-reorder
# (pyproject's addopts): by default it hands out the files with the most tests first.
LONGEST_FIRST = ("test_extension_suite.py", "test_compiled.py", "test_bench.py", "test_graph.py", "test_readme.py",
                 "test_discover.py", "test_affine.py", "test_report.py", "test_ownership.py", "test_ensemble.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))     # stable: the rest keep their order
