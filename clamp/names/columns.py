"""Metric column names: the one place they are built, and what a recipe will produce.

Names layer (pure, no torch). A metrics row has one key per column; the same names appear in
phase rules, stop rules, head selections, suite expectations, results.csv, the graph and reports:

    loss, accuracy                                 the 'train' evaluator
    loss/<evaluator>, accuracy/<evaluator>         the task's other evaluators
    <measure>/blocks.L.attn.hook_pattern[h]        per-head attention measures (prev_token_score, ...)
    negative_similarity/blocks.L.attn.hook_attn_scores[h]   per head, from the pre-softmax scores
    copying_score/blocks.L.attn.W_O[h]             per head, from the weights (the OV circuit)
    position_accuracy/pos<t>                       accuracy of the prediction made at position t
    {k,q,v}_composition/blocks.L1.attn.W_O[h1]>blocks.L2.attn.W_{K,Q,V}[h2]
    <column>@<probe>                               a probe's loss and accuracy columns

A column in a rule may also be an aggregate over a glob of columns: `max(<glob>)`, `min(...)`,
`mean(...)`, e.g. `max(induction_score/blocks.1.attn.hook_pattern[*])`.

Result columns (one row per run in a suite's results.csv; the quantities of expectations):

    crossing:<column>:<rule>             the step a phase rule found (empty: never)
    phase:<column>:<rule>:<field>        a rule's other numbers (reach, leave, fraction, ...)
    final:<column>                       the last evaluation's value
    at:<step>:<column>                   the value at one evaluation step

and a behaviour (what the graph times) is `phase:<column>:<rule>`.
"""
from __future__ import annotations

import fnmatch
import re

from .sites import head_name

AGGREGATE = re.compile(r"^(max|min|mean)\((.+)\)\Z")


def pattern_site(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_pattern"


def scores_site(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_attn_scores"


def measure_column(measure: str, site: str) -> str:
    """A measure's column at a site (a head selection included): `<measure>/<site>`; which site a
    built-in or plug-in measure's per-head columns carry is its own (measures/base.py: head_column)."""
    return f"{measure}/{site}"


def position_column(measure: str, pos: int) -> str:
    """A per-position measure: `position_accuracy/pos3` is the accuracy of the prediction at position 3."""
    return f"{measure}/pos{pos}"


def evaluator_column(measure: str, evaluator: str) -> str:
    """'loss' on 'train' is plain `loss`; on another evaluator `loss/<evaluator>`."""
    return measure if evaluator == "train" else f"{measure}/{evaluator}"


def composition_column(kind: str, l1: int, h1: int, l2: int, h2: int) -> str:
    return (f"{kind}_composition/{head_name(f'blocks.{l1}.attn.W_O', (h1,))}>"
            f"{head_name(f'blocks.{l2}.attn.W_{kind.upper()}', (h2,))}")


def probe_column(column: str, probe: str) -> str:
    return f"{column}@{probe}"


def is_probe_metric(column: str) -> bool:
    """A probe's loss or accuracy column on any evaluator: loss@p, accuracy/<evaluator>@p."""
    base, at, _ = column.partition("@")
    return bool(at) and base.split("/", 1)[0] in ("loss", "accuracy")


def glob_match(pattern: str, column: str) -> bool:
    """`*` matches anything (brackets are literal, as in column names)."""
    return fnmatch.fnmatchcase(column, pattern.replace("[", "[[]"))


def matching(column: str, produced: set[str]) -> list[str]:
    """The produced columns a rule's column names: itself, or the glob of an aggregate."""
    m = AGGREGATE.match(column)
    if not m:
        return [column] if column in produced else []
    return sorted(c for c in produced if glob_match(m.group(2), c))


def crossing_column(column: str, rule: str) -> str:
    return f"crossing:{column}:{rule}"


def phase_column(column: str, rule: str, field: str) -> str:
    return f"phase:{column}:{rule}:{field}"


def final_column(column: str) -> str:
    return f"final:{column}"


def behaviour(column: str, rule: str) -> str:
    """A behaviour the graph times: a phase rule of a column."""
    return f"phase:{column}:{rule}"


def behaviour_crossing(behaviour_name: str) -> str:
    """The result column holding a behaviour's step: phase:C:R (or C:R) → crossing:C:R."""
    return "crossing:" + behaviour_name.removeprefix("phase:")


def is_crossing(key: str) -> bool:
    return key.startswith("crossing:")
