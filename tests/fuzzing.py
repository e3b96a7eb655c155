"""Shared by the loader fuzz tests: any YAML-able value, and every key path of a document."""
from __future__ import annotations

from hypothesis import strategies as st

junk = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-10, 10_000), st.floats(allow_nan=True),
                              st.text(max_size=12), st.sampled_from(["end", "zero", "prev_token", "blocks.0.attn.hook_z[9]",  # noqa: E501
                                                                     "blocks.*.attn.hook_pattern", "fewshot", "crossing",  # noqa: E501
                                                                     "final:loss", "baseline", "module:blocks.0.output",  # noqa: E501
                                                                     "module:", "tiny_lm:tiny_lm", "gpt2", "x.py"])),
                    lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=8), c, max_size=3)),
                    max_leaves=6)


def paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from paths(v, prefix + (i,))


def mutate(doc, data):
    """Put a junk value at a random key path of `doc` (or add a junk key beside it)."""
    where = [p for p in paths(doc) if p]
    path = data.draw(st.sampled_from(where))
    node = doc
    for k in path[:-1]:
        node = node[k]
    if data.draw(st.booleans()) and isinstance(node, dict):
        node[data.draw(st.text(min_size=1, max_size=8))] = data.draw(junk)
    else:
        node[path[-1]] = data.draw(junk)
    return doc
