"""Models: every model clamp can train, behind one seam, and the user code that defines some.

Layer 2 of 7, with tasks/, values/ and measures/ (the model and what acts on it); imports names/
and its own layer. What lives here: builtin (clamp's transformer), stacked (K built-in models as
one batched module), folded (K models of any adapted family folded into one batch), seam (the
ModelSeam interface and the table of families), adapter (any module's parts as TransformerLens
sites), modsites (raw `module:` sites), hf (transformers families), nnsight_seam (the built-in
model through nnsight), usermodel (a user's factory), plugins (importing user code, and when).
"""
