"""A user's own nn.Module (clamp/usermodel.py, adapter.py) and raw module sites (modsites.py),
each checked against plain PyTorch doing the same thing on the same module: forward hooks that
edit the same tensors, a hand-made pattern edit, and bit-for-bit parameter comparisons."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from clamp.names.errors import InputError
from clamp.names.yamlio import load_yaml
from clamp.recipe.spec import load_recipe, recipe_from_data
from clamp.training.train import Trainer

pytest.importorskip("nnsight")

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "recipes" / "user_model" / "tiny_lm.py"
SMALL = ["seeds=[0]", "train.steps=12", "train.batch=4", "train.eval_every=6", "train.eval_size=8",
         "train.checkpoint_every=0", "model.d_model=32", "task.length=16", "task.segment=5"]


def tiny(*sets: str):
    return load_recipe(ROOT / "recipes" / "user_model" / "tiny_lm.yaml", [*SMALL, *sets])


def with_interventions(text: str):
    return tiny(f"interventions={text}")


def forward_pair(recipe, reference_hook):
    """clamp's logits at step 0, and the plain module's with `reference_hook(module)` installed
    (it returns the handles to remove)."""
    tr = Trainer(recipe, 0)
    batch = tr.task.train_batch(0, 4)
    tr.intervener.set_step(0)
    ours = tr.intervener.forward(batch)
    tr.intervener.detach()
    handles = reference_hook(tr.model)
    ref = tr.model(batch.tokens)
    for h in handles:
        h.remove()
    plain = tr.model(batch.tokens)
    return ours, ref, plain


def test_the_factory_builds_the_model_under_the_seed_and_trains():
    tr = Trainer(tiny(), 0)
    assert type(tr.model).__name__ == "TinyLM"
    torch.manual_seed(0)
    mod = sys.modules["tiny_lm"]
    same = mod.tiny_lm(layers=2, heads=4, d_model=32, d_head=8, vocab=64, n_ctx=16)
    assert all(torch.equal(a, b) for a, b in zip(tr.model.state_dict().values(), same.state_dict().values()))
    batch = tr.task.train_batch(0, 4)
    assert torch.equal(tr.intervener.forward(batch), same(batch.tokens))           # no intervention: the module
    opt = torch.optim.Adam(same.parameters(), lr=tr.recipe.train.lr)               # plain PyTorch, same batches
    for step in range(6):
        ours = tr.train_step()
        b = tr.task.train_batch(step, 4)
        loss = torch.nn.functional.cross_entropy(same(b.tokens).flatten(0, 1), b.targets.flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert ours == pytest.approx(loss.item(), rel=1e-5, abs=1e-6)
    row = tr.evaluate()
    assert 0 <= row["induction_score/blocks.1.attn.hook_pattern[2]"] <= 1


def hand_forward(model, tokens, layer: int, head: int):
    """TinyLM's forward written out from its weights, with `head`'s pattern in `layer` replaced by the
    previous-token pattern."""
    F = torch.nn.functional
    T = tokens.shape[1]
    x = model.embed.weight[tokens] + model.pos.weight[torch.arange(T)]
    prev = torch.zeros(T, T)
    prev[0, 0] = 1.0
    prev[torch.arange(1, T), torch.arange(T - 1)] = 1.0
    for L, blk in enumerate(model.blocks):
        a = blk.attn
        h = F.layer_norm(x, x.shape[-1:], blk.ln1.weight, blk.ln1.bias)
        q, k, v = (h @ lin.weight.T for lin in (a.q, a.k, a.v))                   # [batch, pos, H·e]
        q, k, v = (t.view(*t.shape[:2], a.heads, a.d_head).transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-1, -2) / a.d_head ** 0.5).masked_fill(
            ~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
        p = torch.softmax(scores, dim=-1)                                           # [batch, head, query, key]
        if layer == L:
            p = torch.where((torch.arange(a.heads) == head)[None, :, None, None], prev, p)
        x = x + (p @ v).transpose(1, 2).reshape(*x.shape[:2], -1) @ a.o.weight.T
        h = F.layer_norm(x, x.shape[-1:], blk.ln2.weight, blk.ln2.bias)
        x = x + blk.mlp(h)
    return model.unembed(F.layer_norm(x, x.shape[-1:], model.ln_f.weight, model.ln_f.bias))


def test_a_pattern_clamp_equals_a_hand_written_forward():
    """Head 1 of layer 0 held to the previous-token pattern: logits and every parameter's gradient."""
    tr = Trainer(with_interventions("[{clamp: 'blocks.0.attn.hook_pattern[1]', to: previous_token}]"), 0)
    batch = tr.task.train_batch(0, 4)
    tr.intervener.set_step(0)
    ours = tr.intervener.forward(batch)
    ours.logsumexp(-1).sum().backward()
    grads = {n: p.grad.clone() for n, p in tr.model.named_parameters()}
    tr.model.zero_grad(set_to_none=True)
    ref = hand_forward(tr.model, batch.tokens, 0, 1)
    ref.logsumexp(-1).sum().backward()
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    for n, p in tr.model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-5, atol=1e-7)
    tr.intervener.detach()
    assert not torch.allclose(tr.model(batch.tokens), ours)                  # the clamp did act


@pytest.mark.parametrize("site, module, cols", [
    ("blocks.1.attn.hook_q[2]", "blocks.1.attn.q", slice(16, 24)),
    ("blocks.0.attn.hook_v[0,3]", "blocks.0.attn.v", [*range(0, 8), *range(24, 32)]),
])
def test_a_head_ablation_of_q_or_v_zeroes_that_heads_features(site, module, cols):
    def hand(model):
        def zero(_m, _a, out):
            out = out.clone()
            out[..., cols] = 0
            return out
        return [model.get_submodule(module).register_forward_hook(zero)]
    ours, ref, plain = forward_pair(with_interventions(f"[{{ablate: '{site}'}}]"), hand)
    assert torch.equal(ours, ref) and not torch.equal(ours, plain)


def test_hook_z_ablation_zeroes_the_output_projections_input():
    def hand(model):
        def zero(_m, args):
            x = args[0].clone()
            x[..., 8:16] = 0
            return (x,)
        return [model.blocks[1].attn.o.register_forward_pre_hook(zero)]
    ours, ref, _ = forward_pair(with_interventions("[{ablate: 'blocks.1.attn.hook_z[1]'}]"), hand)
    assert torch.equal(ours, ref)


def test_raw_module_sites_equal_torch_hooks_and_their_own_names():
    def hand(model):
        return [model.blocks[0].mlp.register_forward_hook(lambda _m, _a, out: torch.zeros_like(out))]
    raw, ref, plain = forward_pair(with_interventions("[{ablate: 'module:blocks.0.mlp.output'}]"), hand)
    named, _, _ = forward_pair(with_interventions("[{ablate: 'blocks.0.hook_mlp_out'}]"), hand)
    assert torch.equal(raw, ref) and torch.equal(named, ref) and not torch.equal(raw, plain)


def test_a_per_head_freeze_and_a_raw_parameter_freeze_hold_bit_for_bit():
    tr = Trainer(with_interventions("[{freeze: 'blocks.0.attn.W_K[3]'}, {freeze: 'module:blocks.1.mlp.0.bias'}]"), 0)
    Wk, bias = tr.model.blocks[0].attn.k.weight, tr.model.blocks[1].mlp[0].bias
    before_k, before_b = Wk.detach().clone(), bias.detach().clone()
    for _ in range(5):
        tr.train_step()
    assert torch.equal(Wk[24:32], before_k[24:32]) and torch.equal(bias, before_b)
    assert (Wk[:24] != before_k[:24]).any(1).all()
    assert torch.equal(tr.seam.weight("blocks.0.attn.W_K")[3], Wk[24:32].T)          # [d_model, d_head] view


def write_plugin(tmp_path: Path, body: str, name: str = "my_model") -> Path:
    (tmp_path / f"{name}.py").write_text(body)
    return tmp_path


GOOD = PLUGIN.read_text()


@pytest.mark.parametrize("plugin, model, message", [
    (None, "module: 'tiny_lm:tiny_lm'", r"model.module: found 'tiny_lm:tiny_lm'; expected a factory in a module "
     r"that plugins: lists \(it lists none\)"),
    ("[nope.py]", "module: 'nope:f'", r"plugins\[0\]: found .*nope.py.*; expected a .py file or a package"),
    ("[my_model.py]", "module: 'my_model:tiny_lmm'", "did you mean 'tiny_lm'"),
    ("[my_model.py]", "module: 'my_model:TinyLM'", "a factory that declares its adapter"),
    ("[my_model.py]", "module: 'my_model'", r"expected <plug-in module>:<factory>"),
    ("[my_model.py]", "{module: 'my_model:tiny_lm', family: gpt2}", "no family with model.module"),
    ("[my_model.py]", "{module: 'my_model:tiny_lm', config: {a: 1}}", "config only with a transformers family"),
    ("[my_model.py]", "{module: 'my_model:tiny_lm', options: {depth: 3}}", "unexpected keyword argument 'depth'"),
    ("[my_model.py]", "{module: 'my_model:tiny_lm', options: {layers: 3}}",
     r"model.options.layers: .*set model.layers"),
    ("[my_model.py]", "{module: 'my_model:tiny_lm', pos: rope}",
     r"model.pos: found 'rope'; expected no pos for my_model"),
])
def test_bad_user_models_are_located_errors(tmp_path, plugin, model, message):
    write_plugin(tmp_path, GOOD)
    model = model if model.startswith("{") else "{" + model + "}"
    text = (f"plugins: {plugin}\n" if plugin else "") + f"model: {model}\ntask: {{name: repeat_tokens}}\n"
    (tmp_path / "r.yaml").write_text(text)
    with pytest.raises(InputError, match=message) as e:
        load_recipe(tmp_path / "r.yaml")
    assert str(e.value).startswith(str(tmp_path / "r.yaml") + ":")
    sys.modules.pop("my_model", None)


@pytest.mark.parametrize("change, message", [
    (('blocks="blocks"', 'blocks="blokcs"'), r"adapter path 'blokcs'; expected a module path.*did you mean 'blocks'"),
    (('q="q"', 'q="q", qkv="q"'), "either separate q, k, v or one fused qkv"),
    (("for _ in range(layers)", "for _ in range(layers + 1)"), "3 blocks at 'blocks'; expected model.layers = 2"),
    (("heads * d_head, bias=False)\n        self.k", "heads * d_head + 1, bias=False)\n        self.k"),
     r"blocks.0.attn.q.weight of shape \[33, 32\]; expected 8 heads × d_head 4"),
    (("import clamp\n", "import clamp\nraise RuntimeError('broken')\n"), "importing it raised RuntimeError: broken"),
])
def test_bad_plugins_and_adapters_are_located_errors(tmp_path, change, message):
    write_plugin(tmp_path, GOOD.replace(*change))
    (tmp_path / "r.yaml").write_text("plugins: [my_model.py]\nmodel: {module: 'my_model:tiny_lm', d_model: 32}\n"
                                     "task: {name: repeat_tokens}\n")
    with pytest.raises(InputError, match=message):
        load_recipe(tmp_path / "r.yaml")
    sys.modules.pop("my_model", None)


def test_nothing_unlisted_is_imported(tmp_path):
    write_plugin(tmp_path, GOOD + "\nraise SystemExit('imported')\n", "unlisted")
    (tmp_path / "r.yaml").write_text("model: {module: 'unlisted:tiny_lm'}\ntask: {name: repeat_tokens}\n")
    with pytest.raises(InputError, match="add the file that defines unlisted to plugins:"):
        load_recipe(tmp_path / "r.yaml")
    assert "unlisted" not in sys.modules


def test_an_adapter_whose_sites_run_out_of_order_is_told_so(tmp_path):
    swapped = GOOD.replace('q="q", k="k", v="v"', 'q="v", k="k", v="q"')      # v's output comes before q's
    write_plugin(tmp_path, swapped)
    (tmp_path / "r.yaml").write_text("plugins: [my_model.py]\nmodel: {module: 'my_model:tiny_lm', d_model: 32}\n"
                                     "task: {name: repeat_tokens}\n")
    with pytest.raises(InputError, match="model.module: ") as e:
        load_recipe(tmp_path / "r.yaml")                   # when loaded: a trace on the meta device
    assert e.value.found.endswith("blocks.0.attn.k.output reached after the model ran past it")
    assert e.value.expected.startswith("an adapter whose parts run in the order resid_pre → q → k → v")
    sys.modules.pop("my_model", None)


def test_raw_sites_are_listed_and_checked():
    from clamp.names import sites as S
    shape = tiny().shape()
    names = {i.name for i in S.catalogue(shape)}
    assert {"module:blocks.0.mlp.output", "module:blocks.1.ln1.input", "module:unembed.weight",
            "module:output"} <= names and "module:blocks.input" not in names      # a ModuleList never runs
    for bad, message in [("module:blocks.0.mlp.outptu", "did you mean 'module:blocks.0.mlp.output'"),
                         ("module:blocks.0.mlp.output[0]", "not split by head")]:
        with pytest.raises(InputError, match=message.replace("[", r"\[")):
            with_interventions(f"[{{ablate: '{bad}'}}]")
    builtin = recipe_from_data(*load_yaml("task: {name: repeat_tokens}\n"
                                          "interventions: [{ablate: 'module:blocks.1.attn.hook_z.output'}]\n"))
    assert builtin.interventions[0].target == "module:blocks.1.attn.hook_z.output"


USER_SUITE = """\
name: user_suite
base: {base}
seeds: [0, 1]
set: ["train.steps=6", "train.batch=4", "train.eval_every=3", "train.eval_size=8", "train.checkpoint_every=0",
      "model.d_model=32", "task.length=16", "task.segment=5"]
variants:
  plain: {{}}
  clamped:
    interventions: [{{clamp: "blocks.0.attn.hook_pattern[0]", to: previous_token}}]
"""


def test_suites_ship_plugins_to_their_workers(tmp_path):
    """Two workers (forked processes) run a suite of a user's module; every run matches the same run
    done here. (On Ray workers: tests/test_extension_suite.py, whose suite has a user's model.)"""
    backend = "local"
    from clamp.api import bench
    from clamp.recipe.suite import load_suite
    (tmp_path / "suite.yaml").write_text(USER_SUITE.format(base=ROOT / "recipes" / "user_model" / "tiny_lm.yaml"))
    suite = load_suite(tmp_path / "suite.yaml")
    res = bench(suite, tmp_path / "out", workers=2, backend=backend)
    assert [r["status"] for r in res.rows] == ["ok"] * 4
    recorded = (tmp_path / "out" / "suite.yaml").read_text()
    assert str(PLUGIN) in recorded                                       # an absolute path, usable anywhere
    spec = next(r for r in suite.runs() if r.variant == "clamped" and r.seed == 1)
    here = Trainer(spec.recipe, 1)
    for _ in range(6):
        here.train_step()
    assert next(r for r in res.rows if r["run"] == "clamped" and r["seed"] == 1)["final:loss"] == pytest.approx(
        here.evaluate()["loss"], rel=1e-6)


def test_clamp_sites_lists_both_kinds_for_a_user_model(capsys):
    from clamp.cli import main
    assert main(["sites", str(ROOT / "recipes" / "user_model" / "tiny_lm.yaml")]) == 0
    out = capsys.readouterr().out
    assert "model: module, 2 layers" in out
    for name in ("blocks.{L}.attn.hook_pattern", "blocks.{L}.attn.W_Q", "module:blocks.{i}.mlp.output",
                 "module:blocks.{i}.attn.q.weight"):
        assert name in out


def test_a_raw_site_on_a_builtin_hook_point_acts_even_where_the_model_skips_it():
    """LayerNorm's fused fast path skips hook_normalized when nothing is installed there; the raw
    site on that hook point still acts, exactly as the named site does."""
    def run(site):
        r = recipe_from_data(*load_yaml("task: {name: repeat_tokens, length: 16, segment: 5}\n"
                                        f"interventions: [{{ablate: '{site}', how: mean}}]\n"))
        tr = Trainer(r, 0)
        b = tr.task.train_batch(0, 4)
        tr.intervener.set_step(0)
        ours = tr.intervener.forward(b)
        tr.intervener.detach()
        return ours, tr.model(b.tokens)
    raw, _ = run("module:blocks.1.ln1.hook_normalized.output")
    named, plain = run("blocks.1.ln1.hook_normalized")
    assert torch.equal(raw, named) and not torch.equal(raw, plain)
