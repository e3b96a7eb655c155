"""Every text that says how a phase change moved comes from one table of cases (analysis/wording.py):
each case, its wording, and the contradictions it replaced."""
from __future__ import annotations

import pytest

from clamp.analysis.draw import effect_colour, effect_text
from clamp.analysis.explanations import compare_text, explain_text
from clamp.analysis.wording import CASES, case, waiting, words


def st(per, censored_num=0, censored_den=0, both=0, prevents=False):
    xs = list(per)
    return {"median": sorted(xs)[len(xs) // 2] if xs else None, "min": min(xs) if xs else None,
            "max": max(xs) if xs else None, "n": len(xs), "censored": censored_num + censored_den,
            "censored_num": censored_num, "censored_den": censored_den, "both_censored": both,
            "prevents": prevents, "ci": [0.5, 2.0], "wilcoxon_p": 0.25}


@pytest.mark.parametrize("summary, want, phrase, colour", [
    (st([0.4, 0.5, 0.6]), "earlier", "2.0× earlier", "#2e7d32"),
    (st([1.5, 2.0, 2.5]), "later", "2.00× later", "#c62828"),
    (st([0.8, 1.0, 1.3]), "unchanged", "no consistent change", "#757575"),
    (st([1.0, 1.0, 1.0]), "unchanged", "no consistent change", "#757575"),
    (st([], both=5), "censored", "unknown (neither run changed in 5 seed(s)", "#757575"),
    (st([1.5, 2.0, 3.0], censored_num=1), "later", "at least this large", "#c62828"),
    (st([1.5, 2.0, 3.0], censored_den=1), "bound", "a bound, not a measurement", "#757575"),
    (st([0.3, 0.5, 0.7], censored_num=2), "bound", "a bound, not a measurement", "#757575"),
    (st([2.0, 3.0, 4.0], censored_num=3, prevents=True), "prevents", "prevented", "#c62828"),
])
def test_each_case_has_its_words_and_colour(summary, want, phrase, colour):
    assert case(summary) == want
    assert phrase in words(summary)
    assert effect_colour(summary) == colour
    short = effect_text(summary)
    assert (want in ("censored",)) == ("unknown" in short)


def test_every_case_is_in_the_table():
    assert set(CASES) == {"prevents", "censored", "bound", "earlier", "later", "unchanged"}


@pytest.mark.parametrize("ratio, phrase", [(1.0, "waits for the bottleneck"), (1.6, "more slowly than the slowest"),
                                           (0.7, "faster than the slowest")])
def test_the_bottleneck_sentence_never_contradicts_its_number(ratio, phrase):
    text = waiting(ratio)
    assert phrase in text
    e = {"target": "s/baseline", "condition": "c", "behaviour": "phase:loss:below", "phase_change":
         {"median": 1000, "min": 900, "max": 1100, "n": 3}, "subcircuits": {}, "bottleneck": "match",
         "phase_change_over_bottleneck": ratio}
    out = explain_text(e)
    assert phrase in out and ("faster alone than together" not in out)


def test_compare_on_runs_that_never_changed_says_so_and_attributes_nothing():
    c = {"a": "s/baseline", "b": "s/labels15", "condition_a": "5 labels", "condition_b": "15 labels",
         "phase_change_ratio": st([], both=5), "subcircuits": {"match": {**st([1.0, 1.0, 1.0]),
                                                                        "variant_a": "s/x", "variant_b": "s/y"}},
         "not_measured": []}
    text = compare_text(c)
    assert "unknown (neither run changed in 5 seed(s)" in text and "x1.00" not in text
    assert "no shift to attribute" in text and "mainly" not in text
