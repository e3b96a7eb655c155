"""Tasks and value sources written by a user through the public interface, used from recipes,
across worker processes and in suites."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import clamp
from clamp.api import bench as run_suite
from clamp.names.yamlio import load_yaml
from clamp.recipe.suite import suite_from_data
from clamp.schema import opt, positive
from clamp.tasks import TASKS, Batch, Task, TaskIO, register_task, rng_for
from clamp.values import VALUES, NoOptions, ValueSource, register_value


@dataclass(frozen=True)
class CountOptions:
    vocab: int = opt(8, check=positive)
    length: int = opt(6, check=positive)


class LastEqualsFirst(Task):
    """A toy task: predict the first token at the last position."""
    name = "last_equals_first"
    Options = CountOptions

    @classmethod
    def io(cls, o):
        return TaskIO(vocab=o.vocab, n_out=o.vocab, n_ctx=o.length)

    @classmethod
    def default_phases(cls, o):
        return {"loss": {"below": 0.5}}

    def _make(self, g, B):
        o = self.options
        tokens = torch.randint(o.vocab, (B, o.length), generator=g)
        targets = torch.full_like(tokens, -100)
        targets[:, -1] = tokens[:, 0]
        keys = torch.zeros(B, o.length, o.length, dtype=torch.bool)
        keys[:, -1, 0] = True
        return Batch(tokens, targets, roles={}, induction_keys=keys, induction_others=torch.zeros_like(keys))

    def train_batch(self, step, size):
        return self._make(rng_for(self.seed, 7, step), size)

    def evaluators(self, size):
        return {"train": self._make(rng_for(self.seed, 11), size)}


class AttendFirst(ValueSource):
    """Every row attends to position 0."""
    name, Options, sites = "attend_first", NoOptions, ("hook_pattern",)

    def value(self, x, site, ctx):
        v = torch.zeros_like(x)
        v[..., 0] = 1.0
        return v, None


@pytest.fixture(autouse=True)
def registered():
    """Register the user's task and value source for these tests only (the registries are global:
    other tests' messages list the built-in names)."""
    register_task(LastEqualsFirst)
    register_value(AttendFirst)
    yield
    TASKS.pop(LastEqualsFirst.name)
    VALUES.pop(AttendFirst.name)


RECIPE = """
name: ext
seeds: [0, 1]
model: {layers: 1, heads: 2, d_model: 16}
task: {name: last_equals_first, vocab: 8, length: 6}
train: {steps: 150, batch: 32, lr: 1.0e-2, eval_every: 10, eval_size: 64}
interventions:
  - clamp: blocks.0.attn.hook_pattern[0]
    to: attend_first
"""


def test_a_user_task_and_value_source_run_from_a_recipe(tmp_path):
    r = clamp.recipe_from_data(*load_yaml(RECIPE, "ext.yaml"))
    run = clamp.run(r, tmp_path / "ext", workers=2)
    assert all(s.status == "ok" for s in run.seeds.values())
    # the clamp hands the model the answer's position: it learns to copy it
    assert all(s.summary["final"]["accuracy"] > 0.9 for s in run.seeds.values())
    assert "attend_first" in (tmp_path / "ext" / "plan.txt").read_text()


def test_a_user_task_in_a_suite(tmp_path):
    data, src = load_yaml("base:\n" + "\n".join("  " + x for x in RECIPE.strip().splitlines()) +
                          "\nseeds: [0, 1]\nvariants:\n  clamped: {}\n  plain: {interventions: []}\n"
                          "expect:\n  - {ratio: [clamped, plain], below: 1.0}\n", "s.yaml")
    res = run_suite(suite_from_data(data, src), tmp_path / "suite", workers=2)
    assert all(r["status"] == "ok" for r in res.rows)
    assert res.verdicts[0]["n"] == 2
