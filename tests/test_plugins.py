"""Plug-ins named in recipes: a user's task through the CLI, and registries that refuse taken names."""
from __future__ import annotations

import json

import pytest

from clamp.cli import main
from clamp.names.registry import NameTaken, register
from clamp.tasks import TASKS, register_task
from clamp.values import VALUES, register_value

TASK_PLUGIN = '''
from dataclasses import dataclass
import torch
from clamp.tasks import Batch, Task, TaskIO, register_task, rng_for
from clamp.schema import opt, positive


@dataclass(frozen=True)
class CountOptions:
    vocab: int = opt(8, check=positive, doc="vocabulary")
    length: int = opt(12, check=positive, doc="sequence length")


@register_task
class CountUp(Task):
    """x, x+1, x+2, ... mod vocab: every next token follows from the current one."""
    name = "{name}"
    Options = CountOptions

    @classmethod
    def io(cls, o):
        return TaskIO(vocab=o.vocab, n_out=o.vocab, n_ctx=o.length)

    def _seq(self, g, B):
        o = self.options
        tokens = (torch.randint(o.vocab, (B, 1), generator=g) + torch.arange(o.length)) % o.vocab
        return Batch(tokens, torch.cat([tokens[:, 1:], torch.full((B, 1), -100)], 1))

    def train_batch(self, step, size):
        return self._seq(rng_for(self.seed, 7, step), size)

    def evaluators(self, size):
        return {{"train": self._seq(rng_for(self.seed, 11), size)}}
'''

RECIPE = """\
name: counting
plugins: [{plugin}]
task: {{name: {name}}}
measure: [loss, accuracy]
train: {{steps: 60, eval_every: 20, eval_size: 32, lr: 1.0e-2}}
"""


def test_a_plugin_task_runs_from_the_cli(tmp_path):
    (tmp_path / "count_plugin.py").write_text(TASK_PLUGIN.format(name="count_up_cli"))
    (tmp_path / "r.yaml").write_text(RECIPE.format(plugin="count_plugin.py", name="count_up_cli"))
    assert main(["plan", str(tmp_path / "r.yaml")]) == 0
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out")]) == 0
    rows = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"]


def test_a_plugin_that_takes_a_builtin_name_is_refused_with_both_named(tmp_path, capsys):
    (tmp_path / "bad_plugin.py").write_text(TASK_PLUGIN.format(name="fewshot"))
    (tmp_path / "r.yaml").write_text(RECIPE.format(plugin="bad_plugin.py", name="fewshot"))
    assert main(["plan", str(tmp_path / "r.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "r.yaml:2: plugins[0]" in err
    assert "clamp.tasks.fewshot.Fewshot" in err and "bad_plugin.CountUp" in err and "replace=True" in err
    assert TASKS["fewshot"].__module__ == "clamp.tasks.fewshot"                  # the built-in is intact


def test_registries_refuse_a_taken_name_unless_replacing_on_purpose():
    class Zero:
        name = "zero"
    with pytest.raises(NameTaken, match=r"value source name .zero. is taken by clamp\.values\.ablations\.Zero"):
        register_value(Zero)
    register_value(replace=True)(Zero)
    assert VALUES["zero"] is Zero

    class Again:
        name = "again_task"
    register_task(Again)
    register_task(Again)                                          # the same class twice: not a collision
    table: dict = {}
    register(table, "thing", "a", Again)
    with pytest.raises(NameTaken):
        register(table, "thing", "a", Zero)


def test_plugin_errors_are_located(tmp_path, capsys):
    (tmp_path / "broken.py").write_text("raise RuntimeError('no')\n")
    for plugin, expected in (("missing.py", "a .py file or a package directory"),
                             ("broken.py", "importing it raised RuntimeError: no")):
        (tmp_path / "r.yaml").write_text(RECIPE.format(plugin=plugin, name="fewshot"))
        assert main(["plan", str(tmp_path / "r.yaml")]) == 2
        err = capsys.readouterr().err.strip()
        assert "r.yaml:2: plugins[0]" in err and expected in err and "Traceback" not in err


def test_the_plugin_flag_imports_before_any_verb_reads(tmp_path, capsys, monkeypatch):
    (tmp_path / "flag_plugin.py").write_text(TASK_PLUGIN.format(name="count_up_flag"))
    (tmp_path / "r.yaml").write_text("name: counting\ntask: {name: count_up_flag}\nmeasure: [loss]\n"
                                     "train: {steps: 20, eval_every: 10, eval_size: 16}\n")
    monkeypatch.chdir(tmp_path)
    assert main(["plan", "r.yaml"]) == 2                                    # not imported: an unknown task
    assert "task.name: found 'count_up_flag'" in capsys.readouterr().err
    for verb in (["plan", "r.yaml"], ["sites", "r.yaml"], ["run", "r.yaml", "--out", "out"]):
        assert main(verb + ["--plugin", "flag_plugin.py"]) == 0
    assert main(["report", "out", "--plugin", "flag_plugin.py"]) == 0
    assert main(["plan", "r.yaml", "--plugin", "nowhere.py"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("clamp: error: --plugin: found") and "nowhere.py" in err
    (tmp_path / "boom").mkdir()
    (tmp_path / "boom" / "__init__.py").write_text("raise KeyError('x')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for bad in ("", ".x", "no_such_module_anywhere", "boom"):          # module names, as written
        assert main(["plan", "r.yaml", "--plugin", bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("clamp: error: --plugin: found") and "Traceback" not in err[0]


HEAD_MEASURE_PLUGIN = '''
from clamp.measures import head_column
from clamp.measures import Measure, register_measure


@register_measure
class OutputNorm(Measure):
    name = "output_norm"
    doc = "Frobenius norm of each head's W_O"

    @classmethod
    def columns(cls, shape, evaluators):
        return [head_column(cls.name, L, h) for L in range(shape.layers) for h in range(shape.heads)]

    def compute(self, outputs, batches, seam):
        out = {}
        for L in range(seam.shape.layers):
            for h, v in enumerate(seam.weight(f"blocks.{L}.attn.W_O").flatten(1).norm(dim=1).tolist()):
                out[head_column(self.name, L, h)] = v
        return out
'''


def test_a_plugin_per_head_measure_selects_heads_and_times_a_phase(tmp_path):
    (tmp_path / "norms.py").write_text(HEAD_MEASURE_PLUGIN)
    (tmp_path / "r.yaml").write_text(
        "name: norms\nplugins: [norms.py]\nmodel: {layers: 2, heads: 4, d_model: 16}\n"
        "task: {name: fewshot, classes: 10, labels: 4, dim: 8}\nmeasure: [loss, output_norm]\n"
        "train: {steps: 20, batch: 8, eval_every: 5, eval_size: 16}\n"
        "phases: {'max(output_norm/blocks.1.attn.hook_pattern[*])': {above: 0.0}}\n"
        "subcircuits:\n  big: {sites: [blocks.1.attn.hook_z], select: {layer: 1, by: output_norm, top: 1}}\n"
        "probes:\n  no_big: [{ablate: big}]\n")
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out")]) == 0
    rows = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        norms = [r[f"output_norm/blocks.1.attn.hook_pattern[{h}]"] for h in range(4)]
        assert r["heads@no_big"]["big"] == [max(range(4), key=lambda h: norms[h])]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["phases"]["max(output_norm/blocks.1.attn.hook_pattern[*])"]["above"]["step"] == 0
    # ... and in a stop rule: the run ends at the first evaluation after step 0 that meets it
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "stopped"), "--set",
                 "train.stop={'max(output_norm/blocks.1.attn.hook_pattern[*])': {above: 0.0}}"]) == 0
    stopped = [json.loads(x) for x in (tmp_path / "stopped" / "metrics.jsonl").read_text().splitlines()]
    assert stopped[-1]["step"] < 20


def test_a_plugin_measure_in_an_ensemble_equals_runs_alone(tmp_path):
    (tmp_path / "norms.py").write_text(HEAD_MEASURE_PLUGIN)
    (tmp_path / "r.yaml").write_text(
        "name: norms\nplugins: [norms.py]\nseeds: [0, 1]\nmodel: {layers: 2, heads: 4, d_model: 16}\n"
        "task: {name: fewshot, classes: 10, labels: 4, dim: 8}\nmeasure: [loss, output_norm]\n"
        "train: {steps: 20, batch: 8, eval_every: 5, eval_size: 16}\n")
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "ens"), "--workers", "1"]) == 0
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "alone"), "--no-ensemble"]) == 0
    assert json.loads((tmp_path / "ens" / "seed_0" / "summary.json").read_text())["ensemble"] == {"members": 2}
    for s in (0, 1):
        ens = (tmp_path / "ens" / f"seed_{s}" / "metrics.jsonl").read_bytes()
        assert ens == (tmp_path / "alone" / f"seed_{s}" / "metrics.jsonl").read_bytes() and b"output_norm" in ens
