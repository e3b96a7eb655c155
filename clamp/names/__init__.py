"""Names: the vocabulary every other layer speaks, and nothing else.

Layer 1 of 7 (bottom; imports nothing of clamp's outside this folder; no torch models, no files
beyond the one input file being read). What lives here: errors (one-line located InputError),
registry (named registries), sites (the site grammar and catalogues), yamlio (bounded YAML that
knows the line of every key path; names; key paths), schema (typed build of options), columns
(every metric and result column name), phases (curves → phase-change times, per-seed spreads).
"""
