"""Recipes: what an experiment says, checked before anything runs.

Layer 3 of 7; imports names/, models/, tasks/, values/, measures/ and its own layer; never reads
run directories' results beyond what is passed in, never trains. What lives here: types (Recipe
and its parts, written back exactly), overrides (extends, --set, suite variants: one merge), spec
(YAML → Recipe with located errors), outputs (the columns a recipe produces, checked), budget (a
run's memory, estimated before allocation), compile (the Plan: the timeline of interventions),
suite (Suite and its loading).
"""
