"""Any model everywhere: a user's model without attention patterns whose blocks are not [batch, pos,
d_model] goes through bench, report, sites and plan; constants can be tensors; each extension point
(a measure, a family, a value source) is one class in one file."""
from __future__ import annotations

import json

import pytest
import torch

from clamp.cli import main

FLAT = '''
import torch
from torch import nn
import clamp


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.lin = nn.Linear(width, width)

    def forward(self, x):                                      # [batch, width]
        return x + torch.tanh(self.lin(x))


class Flat(nn.Module):
    """No attention: the sequence's embeddings flattened through residual MLP blocks of width 20."""
    def __init__(self, layers, vocab, n_ctx, width):
        super().__init__()
        self.embed = nn.Embedding(vocab, 2)
        self.inp = nn.Linear(2 * n_ctx, width)
        self.blocks = nn.ModuleList([Block(width) for _ in range(layers)])
        self.head = nn.Linear(width, n_ctx * vocab)
        self.n_ctx, self.vocab = n_ctx, vocab

    def forward(self, tokens):
        B, T = tokens.shape
        e = nn.functional.pad(self.embed(tokens), (0, 0, 0, self.n_ctx - T))      # [batch, n_ctx, 2]
        x = self.inp(e.reshape(B, -1))
        for b in self.blocks:
            x = b(x)
        return self.head(x).reshape(B, self.n_ctx, self.vocab)[:, :T]


@clamp.model_factory(clamp.Adapter(blocks="blocks", embed="embed"))
def flat(*, layers, vocab, n_ctx, width=20):
    return Flat(layers, vocab, n_ctx, width)
'''
RECIPE = """\
plugins: [flat_any_model.py]
seeds: [0]
model: {module: "flat_any_model:flat", layers: 2, heads: 1, d_model: 4}
task: {name: repeat_tokens, vocab: 8, length: 8, segment: 3}
train: {steps: 20, eval_every: 10, eval_size: 16, batch: 8, checkpoint_every: 10}
"""
SUITE = """\
base: r.yaml
seeds: [0, 1]
variants: {plain: {}, ablated: {interventions: [{ablate: blocks.0.hook_resid_post, steps: [0, 10]}]}}
"""


@pytest.fixture
def flat_dir(tmp_path, monkeypatch):
    (tmp_path / "flat_any_model.py").write_text(FLAT)
    (tmp_path / "r.yaml").write_text(RECIPE)
    (tmp_path / "s.yaml").write_text(SUITE)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_model_without_patterns_through_sites_plan_bench_and_report(flat_dir, capsys):
    assert main(["sites", "r.yaml"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("blocks.{L}.hook_resid_post"))
    assert "[batch, 20]" in line and "d_model" not in line
    assert "hook_pattern" not in out
    assert main(["plan", "r.yaml"]) == 0
    import importlib

    from clamp.recipe.spec import load_recipe
    flat = importlib.import_module("flat_any_model")
    real = sum(p.numel() for p in flat.flat(layers=2, vocab=8, n_ctx=8).parameters())
    assert f"for {real:,} weights" in capsys.readouterr().out
    r = load_recipe("r.yaml")
    assert r.measure == ("loss", "accuracy")                  # the task's pattern measures: not on this model
    code = main(["bench", "s.yaml", "--out", "b", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "internal error" not in err
    page = (flat_dir / "b" / "report.html").read_text()
    assert "exposes no attention patterns" in page
    assert main(["report", "b"]) == 0
    capsys.readouterr()
    assert main(["report", "b", "--head", "blocks.0.attn.hook_pattern[0]"]) == 2
    assert "no attention patterns" in capsys.readouterr().err
    assert main(["plan", "r.yaml", "--set", "measure=[loss, prev_token_score]"]) == 2
    assert "has no site blocks.0.attn.hook_pattern" in capsys.readouterr().err
    # discovery: every role needs attention patterns; one line, exit 2, each role's reason
    assert main(["discover", "b/runs/plain/seed_0"]) == 2
    err = capsys.readouterr().err
    assert "no role this model and task can give" in err and "this model has" in err


def test_a_constant_tensor_from_a_list_and_from_files(tmp_path, capsys):
    """A clamp to a given tensor: one sequence's value at the site, broadcast over the batch."""
    import numpy as np

    from clamp.recipe.spec import load_recipe
    from clamp.training.train import Trainer
    want = torch.arange(5 * 16, dtype=torch.float32).reshape(5, 16) / 100            # [pos, d_model]
    torch.save(want, tmp_path / "v.pt")
    np.save(tmp_path / "v.npy", want.numpy())
    base = ("seeds: [0]\nmodel: {layers: 1, heads: 2, d_model: 16}\ntask: {name: fewshot, classes: 10, labels: 4, "
            "dim: 8}\ntrain: {steps: 2, eval_every: 1, eval_size: 4, batch: 4}\n")
    for value in (json.dumps(want.tolist()), "v.pt", "v.npy"):
        (tmp_path / "r.yaml").write_text(base + f"interventions: [{{clamp: blocks.0.hook_resid_post, to: constant, "
                                         f"value: {value}}}]\n")
        tr = Trainer(load_recipe(tmp_path / "r.yaml"), 0)
        tr.intervener.set_step(0)
        batch = tr.task.train_batch(0, 4)
        with tr.intervener.recording(["blocks.0.hook_resid_post"]) as rec:
            tr.intervener.forward(batch)
        got = rec["blocks.0.hook_resid_post"]
        assert got.shape == (4, 5, 16) and torch.equal(got, want.expand(4, 5, 16)), value
    (tmp_path / "r.yaml").write_text(base + "interventions: [{clamp: blocks.0.hook_resid_post, to: constant, "
                                     "value: [[1, 2, 3]]}]\n")
    assert main(["plan", str(tmp_path / "r.yaml")]) == 2
    err = capsys.readouterr().err
    assert "interventions[0].value: found a tensor of shape [1, 3]" in err and "[5, 16]" in err
    for bad, why in (("[[1, 2], [3]]", "one length per level"), ("nope.txt", ".pt"), ("missing.pt", "existing")):
        (tmp_path / "r.yaml").write_text(base + f"interventions: [{{clamp: blocks.0.hook_resid_post, to: constant, "
                                         f"value: {bad}}}]\n")
        assert main(["plan", str(tmp_path / "r.yaml")]) == 2
        assert why in capsys.readouterr().err


def test_a_value_source_reads_the_task_through_its_context(tmp_path):
    """Context.task is the run's Task: a source can use what the task computed (here, its prototypes)."""
    from clamp.recipe.spec import load_recipe
    from clamp.training.train import Trainer
    from clamp.values import VALUES, NoOptions, ValueSource, register_value
    seen = {}

    @register_value
    class TaskProbe(ValueSource):
        name, Options = "task_probe_test", NoOptions

        def value(self, x, site, ctx):
            seen["protos"] = ctx.task.protos
            return x, None
    try:
        (tmp_path / "r.yaml").write_text(
            "seeds: [3]\nmodel: {layers: 1, heads: 2, d_model: 16}\ntask: {name: fewshot, classes: 10, labels: 4, "
            "dim: 8}\ntrain: {steps: 2, eval_every: 1, eval_size: 4, batch: 4}\n"
            "interventions: [{clamp: blocks.0.hook_resid_post, to: task_probe_test}]\n")
        tr = Trainer(load_recipe(tmp_path / "r.yaml"), 3)
        tr.train_step()
        assert torch.equal(seen["protos"], tr.task.protos)
    finally:
        VALUES.pop("task_probe_test", None)


def test_every_built_in_measure_and_value_source_has_its_line_in_the_readme():
    """Adding a measure or a value source is one class and its README line: the line is checked here."""
    from pathlib import Path

    from clamp.measures import MEASURES
    from clamp.values import VALUES
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    measures = readme.split("### Measures (metric columns)", 1)[1].split("\n### ", 1)[0]
    for name, cls in MEASURES.items():
        if cls.__module__.startswith("clamp."):
            assert f"`{name}" in measures, f"measure {name} has no line in the README's measure list"
    values = readme.split("### Value sources", 1)[1].split("\n### ", 1)[0]
    for name, cls in VALUES.items():
        if cls.__module__.startswith("clamp."):
            assert f"`{name}`" in values, f"value source {name} has no line in the README's table"
