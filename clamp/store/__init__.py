"""Store: the files clamp writes, and which directories are its own.

Layer 4 of 7; imports the layers below; never trains. What lives here: owned (verified markers,
manifests, locks, --fresh: clamp changes only what it created), files (atomic writes, valid JSON,
metrics, the directory layout, checkpoints, resuming, loading a model back), provenance (the
versions and device recorded with every run).
"""
