"""The site grammar: parse/format round trips, expansion against a model shape, errors."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clamp.names import sites as S
from clamp.names.errors import InputError

SHAPE = S.ModelShape(layers=3, heads=8, d_model=64, d_head=8, attn_only=False, d_mlp=256,
                     norm="pre", pos="rope", vocab=10, n_out=10, n_ctx=5, vector_dim=4)

segment = st.one_of(st.from_regex(r"[a-z_][a-z0-9_]{0,6}", fullmatch=True),
                    st.integers(0, 20).map(str), st.just("*"))
path = st.lists(segment, min_size=1, max_size=5).map(".".join)
item = st.one_of(st.integers(0, 15), st.tuples(st.integers(0, 10), st.integers(1, 6)).map(lambda t: (t[0], t[0] + t[1])),  # noqa: E501
                 st.just("*"))
heads = st.one_of(st.none(), st.lists(item, min_size=1, max_size=4).map(tuple))


@given(path, heads)
def test_parse_format_roundtrip(p, h):
    ref = S.SiteRef(p, h)
    text = S.format_site(ref)
    assert S.parse(text) == ref
    assert S.format_site(S.parse(text)) == text


def test_examples_from_the_design():
    assert S.parse("blocks.1.attn.hook_z[0,1,2,4:8]") == S.SiteRef("blocks.1.attn.hook_z", (0, 1, 2, (4, 8)))
    assert S.parse("blocks.*.attn.W_Q[*]") == S.SiteRef("blocks.*.attn.W_Q", ("*",))
    assert S.parse("hook_embed") == S.SiteRef("hook_embed", None)


@given(st.sets(st.integers(0, 7), min_size=1))
def test_expand_heads_counts_and_canonical_names(hs):
    text = f"blocks.1.attn.hook_pattern[{','.join(map(str, sorted(hs)))}]"
    [site] = S.expand(text, SHAPE)
    assert site.heads == tuple(sorted(hs))
    # the canonical name names the same heads
    [again] = S.expand(str(site), SHAPE)
    assert again.heads == site.heads


def test_wildcards_expand_to_every_layer_and_head():
    got = S.expand("blocks.*.attn.W_Q[*]", SHAPE)
    assert [s.name for s in got] == [f"blocks.{L}.attn.W_Q" for L in range(3)]
    assert all(s.heads == tuple(range(8)) for s in got)
    mlp = S.expand("blocks.0.mlp.*", SHAPE, "parameter")
    assert {s.name for s in mlp} == {f"blocks.0.mlp.{n}" for n in ("W_in", "b_in", "W_out", "b_out")}
    assert len(S.expand("blocks.*.attn.hook_*", SHAPE)) == 3 * 8     # q k v rot_q rot_k scores pattern z


def test_ranges():
    [s] = S.expand("blocks.0.attn.hook_z[0,1,2,4:8]", SHAPE)
    assert s.heads == (0, 1, 2, 4, 5, 6, 7)
    assert str(s) == "blocks.0.attn.hook_z[0:3,4:8]"


@pytest.mark.parametrize("text, expected, hint", [
    ("blocks.5.attn.hook_z", "a layer 0..2", "0-based"),
    ("blocks.1.attn.hook_z[8]", "heads 0..7", ""),
    ("blocks.1.attn.hook_z[2:9]", "heads below 8", "2:8"),
    ("blocks.1.attn.hook_z[1,1]", "each head once", ""),
    ("blocks.1.hook_resid_post[1]", "no head selection", "without brackets"),
    ("blocks.1.attn.hook_patern[3]", "activation site", "blocks.1.attn.hook_pattern"),
    ("blocks.1.attn.hook_z[3:3]", "a < b", "3:4"),
    ("blocks.1.attn.hook_z[]", "heads inside the brackets", ""),
])
def test_errors_explain(text, expected, hint):
    with pytest.raises(InputError) as e:
        S.expand(text, SHAPE, "activation")
    assert expected in e.value.expected
    if hint:                                  # the fix is named, as a did-you-mean or in what is expected
        assert hint in e.value.hint or hint in e.value.expected, (e.value.hint, e.value.expected)
    else:                                     # nothing to suggest: no hint is made up
        assert e.value.hint == ""


def test_catalogue_lists_every_kind():
    names = {i.name for i in S.catalogue(SHAPE)}
    for n in ("hook_embed", "blocks.2.hook_resid_mid", "blocks.0.attn.hook_attn_scores", "blocks.1.hook_mlp_out",
              "hook_logits", "embed.W_E", "embed.W_x", "unembed.W_U", "blocks.0.attn.W_O"):
        assert n in names
    attn_only = S.ModelShape(layers=2, heads=4, d_model=16, d_head=4, attn_only=True, pos="learned")
    names = {i.name for i in S.catalogue(attn_only)}
    assert "blocks.0.hook_mlp_out" not in names and "pos_embed.W_pos" in names
    with pytest.raises(InputError) as e:
        S.expand("blocks.0.hook_mlp_out", attn_only)
    assert "attention-only" in e.value.hint


@given(L=st.integers(0, 999), h=st.integers(0, 999), leaf=st.sampled_from(["hook_pattern", "hook_z", "W_O"]))
def test_one_head_reads_back_what_head_name_writes(L, h, leaf):
    from clamp.names.sites import block_layer, head_name, one_head
    path = f"blocks.{L}.attn.{leaf}"
    assert one_head(head_name(path, (h,))) == (path, L, h) and block_layer(path) == L
    assert one_head(head_name(path, (h, h + 1, h + 2))) is None and one_head(path) is None
    assert one_head(f"embed.W_E[{h}]") is None and block_layer("embed.W_E") is None
