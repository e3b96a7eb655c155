"""GPT-2 from config behind the seam (clamp/hf.py): clamp's interventions against the same ones
written by hand in plain PyTorch (a patched eager attention), and a per-head freeze of the fused
c_attn weight checked bit for bit."""
from __future__ import annotations

import copy

import pytest
import torch

from clamp.models.hf import FAMILIES as HF_FAMILIES
from clamp.names.errors import InputError
from clamp.names.yamlio import load_yaml
from clamp.recipe.spec import recipe_from_data
from clamp.training.train import Trainer

pytest.importorskip("nnsight")
pytest.importorskip("transformers")
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS  # noqa: E402

GPT2 = """
model: {family: FAMILY, layers: 2, heads: 4, d_model: 32}
task: {name: repeat_tokens, vocab: 16, length: 24, segment: 6}
train: {steps: 20, batch: 8, lr: 1.0e-2, optimizer: adamw, weight_decay: 0.1, eval_every: 5, eval_size: 8}
"""


FAMILIES = list(HF_FAMILIES)              # every transformers family clamp ships, one record each


def gpt2(extra: str = "", family: str = "gpt2"):
    return recipe_from_data(*load_yaml(GPT2.replace("FAMILY", family) + extra, f"{family}.yaml"))


def previous_token(T: int) -> torch.Tensor:
    p = torch.zeros(T, T)
    p[0, 0] = 1.0
    p[torch.arange(1, T), torch.arange(T - 1)] = 1.0
    return p


def by_hand(model, tokens, layer: int, head: int, pattern):
    """A fresh GPT-2 with the same weights whose attention is a hand-written eager attention in
    which `pattern(T)` (or zeros, for None) stands for one head's pattern in one layer (registered
    as transformers' attention implementation "by_hand"); returns (logits, that model)."""
    def eager(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        w = torch.matmul(query, key.transpose(-1, -2)) * scaling             # [batch, head, q, k]
        T = w.shape[-1]
        w = w.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))   # causal, written here
        w = torch.nn.functional.softmax(w, dim=-1)
        if module.layer_idx == layer:
            T = w.shape[-1]
            new = torch.zeros(T, T) if pattern is None else pattern(T)
            pick = (torch.arange(w.shape[1]) == head)[None, :, None, None]
            w = torch.where(pick, new, w)
        out = torch.matmul(w, value).transpose(1, 2)
        return out, w
    ALL_ATTENTION_FUNCTIONS["by_hand"] = eager
    config = copy.deepcopy(model.config)
    config._attn_implementation = "by_hand"
    fresh = type(model)(config)
    fresh.load_state_dict(model.state_dict())
    return fresh(tokens).logits, fresh


@pytest.mark.parametrize("extra, layer, head, pattern", [
    ("interventions: [{clamp: 'blocks.0.attn.hook_pattern[1]', to: previous_token}]", 0, 1, previous_token),
    ("interventions: [{ablate: 'blocks.1.attn.hook_pattern[2]'}]", 1, 2, None),
], ids=["pattern clamp", "head ablation"])
@pytest.mark.parametrize("family", FAMILIES)
def test_interventions_equal_a_patched_eager_attention(extra, layer, head, pattern, family):
    tr = Trainer(gpt2(extra, family), 0)
    batch = tr.task.train_batch(0, 8)
    tr.intervener.set_step(0)
    ours = tr.intervener.forward(batch)
    ours.logsumexp(-1).sum().backward()
    ours_grad = {n: p.grad.clone() for n, p in tr.model.named_parameters() if p.grad is not None}
    tr.model.zero_grad(set_to_none=True)
    ref, fresh = by_hand(tr.model, batch.tokens, layer, head, pattern)
    ref.logsumexp(-1).sum().backward()
    assert torch.equal(ours, ref)
    ref_grad = {n: p.grad for n, p in fresh.named_parameters() if p.grad is not None}
    assert ours_grad.keys() == ref_grad.keys()
    assert all(torch.equal(ours_grad[n], ref_grad[n]) for n in ours_grad)
    plain = tr.model(batch.tokens).logits
    assert not torch.equal(plain, ours)                     # the intervention did act


@pytest.mark.parametrize("family", FAMILIES)
def test_a_per_head_freeze_holds_exactly_that_heads_slice_of_the_weight(family):
    """GPT-2: head 1's query columns of the fused c_attn [d, 3·H·e]; GPT-NeoX: head 1's query rows of
    query_key_value [H·3·e, d] (each head's q, k, v together); Llama: head 1's rows of q_proj [H·e, d].
    Held bit for bit under AdamW while every other column (row) learns."""
    tr = Trainer(gpt2("interventions: [{freeze: 'blocks.0.attn.W_Q[1]'}]", family), 0)
    e = 32 // 4
    held = torch.zeros(3 * 4 * e if family != "llama" else 4 * e, dtype=torch.bool)
    if family == "gpt2":
        W = tr.model.transformer.h[0].attn.c_attn.weight                   # [d, 3·H·e]: Q | K | V blocks
        held[1 * e:2 * e] = True
    elif family == "gpt_neox":
        W = tr.model.gpt_neox.layers[0].attention.query_key_value.weight.T  # features: head-major, q|k|v each
        held[1 * 3 * e:1 * 3 * e + e] = True
    else:
        W = tr.model.model.layers[0].self_attn.q_proj.weight.T             # columns = output features
        held[1 * e:2 * e] = True
    before = W.detach().clone()
    for _ in range(6):
        tr.train_step()
    assert torch.equal(W[:, held], before[:, held])
    assert (W[:, ~held] != before[:, ~held]).any(0).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_measures_and_sites(family):
    tr = Trainer(gpt2("""
interventions: [{clamp: 'blocks.0.attn.hook_pattern[1]', to: previous_token}]
measure: [loss, prev_token_score, induction_score, composition]
""", family), 0)
    for _ in range(3):
        tr.train_step()
    row = tr.evaluate()
    assert row["prev_token_score/blocks.0.attn.hook_pattern[1]"] == pytest.approx(1.0)
    assert "induction_score/blocks.1.attn.hook_pattern[3]" in row
    assert 0 < row["k_composition/blocks.0.attn.W_O[0]>blocks.1.attn.W_K[0]"] < 1     # weights in TL layout
    names = {i.name for i in tr.seam.catalogue()}
    assert {"hook_embed", "blocks.1.attn.hook_pattern", "blocks.0.hook_mlp_out", "hook_logits",
            "blocks.1.attn.W_O"} <= names


@pytest.mark.parametrize("text, message", [
    ("model: {family: gpt3}\n", "model.family: found 'gpt3'; expected a model family: builtin, gpt2"),
    ("model: {family: gpt2}\ntask: {name: fewshot}\n", "a task of tokens only for gpt2"),
    ("model: {family: gpt2, config: {n_layer: 3}}\ntask: {name: repeat_tokens}\n", "a key clamp does not set"),
    ("model: {family: llama, config: {num_key_value_heads: 1}}\ntask: {name: repeat_tokens}\n",
     "a key clamp does not set"),
    ("model: {family: gpt2}\ntask: {name: repeat_tokens}\n"
     "interventions: [{clamp: 'blocks.0.attn.hook_pattern[0]', to: previous_token_input}]\n",
     "previous_token_input on gpt2; expected the built-in model"),
])
def test_bad_families_are_located_errors(text, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        recipe_from_data(*load_yaml(text, "bad.yaml"))


@pytest.mark.parametrize("model, key", [("{family: gpt2}", "model.family: found gpt2"),
                                        ("{backend: nnsight}", "model.backend: found nnsight")])
def test_without_nnsight_a_foreign_model_is_a_located_error(monkeypatch, model, key):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nnsight" else real(name, *a))
    with pytest.raises(InputError, match=key + r", which needs nnsight \(not installed\)"):
        recipe_from_data(*load_yaml(f"model: {model}\ntask: {{name: repeat_tokens}}\n", "m.yaml"))


@pytest.mark.parametrize("family, module, which, cols", [
    ("gpt2", "transformer.h.1.attn.c_attn", "hook_k[2]", (4 * 8 + 2 * 8, 8)),         # [Q|K|V] blocks of H·e
    ("gpt_neox", "gpt_neox.layers.1.attention.query_key_value", "hook_v[1]", (1 * 24 + 16, 8)),   # head-major q,k,v
    ("llama", "model.layers.1.self_attn.k_proj", "hook_k[2]", (2 * 8, 8)),
    ("gpt2", "transformer.h.1.attn.c_proj", "hook_z[3]", None),
])
def test_per_head_q_k_v_z_ablations_zero_those_features(family, module, which, cols):
    """clamp's per-head views of fused and separate projections against forward hooks on the
    projection that zero the same features, computed here by hand from each layout."""
    tr = Trainer(gpt2(f"interventions: [{{ablate: 'blocks.1.attn.{which}'}}]", family), 0)
    batch = tr.task.train_batch(0, 8)
    tr.intervener.set_step(0)
    ours = tr.intervener.forward(batch)
    tr.intervener.detach()
    m = tr.model.get_submodule(module)
    if cols is None:                                    # hook_z: the output projection's input, head 3
        def pre(_m, args):
            x = args[0].clone()
            x[..., 24:32] = 0
            return (x, *args[1:])
        h = m.register_forward_pre_hook(pre)
    else:
        def post(_m, _a, out):
            out = out.clone()
            out[..., cols[0]:cols[0] + cols[1]] = 0
            return out
        h = m.register_forward_hook(post)
    ref = tr.model(batch.tokens).logits
    h.remove()
    assert torch.equal(ours, ref)
    assert not torch.equal(ours, tr.model(batch.tokens).logits)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_site_at_once_in_one_trace_changes_nothing(family):
    """Identity functions at every activation site (TransformerLens and raw) give the plain logits."""
    from clamp.models.seam import build
    r = gpt2("", family)
    seam = build(r.shape(), 0)
    batch = r.task and Trainer(r, 0).task.train_batch(0, 4)
    plain = seam.module(batch.tokens).logits
    seam.install({i.name: (lambda x: x) for i in seam.catalogue() if i.kind == "activation"})
    assert torch.equal(seam.forward(batch), plain)
    sites = {i.name for i in seam.catalogue()}
    assert {"blocks.0.hook_resid_pre", "blocks.1.attn.hook_q", "blocks.1.attn.hook_attn_scores",
            "blocks.1.attn.hook_z"} <= sites
