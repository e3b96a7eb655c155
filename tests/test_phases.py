"""Phase-change estimators on synthetic curves with known transition times (REFERENCE.md §5)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clamp.names.phases import band_stats, logistic_fit, max_slope, paired, relative_crossing, threshold_crossing

STEPS = list(range(0, 4000, 10))


def few_shot_curve(t0: float, w: float, noise: float, rng) -> list[float]:
    """Descent from ln 5 to a plateau at ln 2 by step 300, then a logistic drop at t0."""
    out = []
    for s in STEPS:
        base = math.log(5) - (math.log(5) - math.log(2)) * s / 300 if s < 300 else \
            math.log(2) / (1 + math.exp((s - t0) / w))
        out.append(base + rng.normal(0, noise))
    return out


@settings(max_examples=15, deadline=None)
@given(t0=st.floats(900, 3000), w=st.floats(20, 120), noise=st.floats(0.0, 0.03), seed=st.integers(0, 10 ** 6))
def test_estimates_land_near_the_true_transition(t0, w, noise, seed):
    v = few_shot_curve(t0, w, noise, np.random.default_rng(seed))
    tol = 2 * w + 20
    rel = relative_crossing(STEPS, v, 0.5)
    assert abs(rel["plateau"] - math.log(2)) < 0.05 + 2 * noise
    assert abs(rel["step"] - t0) <= tol
    assert abs(max_slope(STEPS, v)["step"] - t0) <= tol + 0.02 * 4000
    fit = logistic_fit(STEPS, v, bootstrap=20, seed=seed)
    assert abs(fit["t0"] - t0) <= tol
    # the paper's absolute threshold (0.4 ln 2) is crossed a little after the midpoint
    expected = t0 + w * math.log(1 / 0.4 - 1)
    assert abs(threshold_crossing(STEPS, v, 0.4 * math.log(2)) - expected) <= tol


def coverage(draws: int, bootstrap: int, seed: int = 1) -> float:
    rng = np.random.default_rng(seed)
    hit = 0
    for i in range(draws):
        t0, w, noise = rng.uniform(1000, 3000), rng.uniform(30, 100), rng.uniform(0.005, 0.03)
        fit = logistic_fit(STEPS, few_shot_curve(t0, w, noise, rng), level=0.9, bootstrap=bootstrap, seed=i)
        hit += fit["ci"][0] <= t0 <= fit["ci"][1]
    return hit / draws


def test_logistic_intervals_cover_the_truth():
    assert coverage(draws=25, bootstrap=40) >= 0.72        # nominal 0.9; a small, fast sample


@pytest.mark.slow
def test_logistic_interval_coverage_is_close_to_nominal():
    c = coverage(draws=200, bootstrap=200)
    assert 0.84 <= c <= 0.96, c                              # nominal 0.9


def test_curves_that_never_change_get_no_time():
    rng = np.random.default_rng(0)
    flat = [0.69 + rng.normal(0, 0.01) for _ in STEPS]
    assert threshold_crossing(STEPS, flat, 0.277) is None
    assert logistic_fit(STEPS, flat)["step"] is None
    assert max_slope(STEPS, [0.7] * len(STEPS))["step"] is None
    assert relative_crossing(STEPS, [0.7] * len(STEPS))["step"] is None


def test_band():
    v = [1.5, 1.0, 0.75, 0.7, 0.68, 0.71, 0.8, 0.69, 0.4, 0.1, 0.05]
    s = list(range(0, 110, 10))
    b = band_stats(s, v, 0.593, 0.793)
    assert b["reach"] == 20 and b["leave"] == 80 and b["fraction"] == pytest.approx(5 / 6)


@settings(deadline=None, max_examples=40)
@given(st.lists(st.floats(0.5, 5.0), min_size=3, max_size=9))
def test_paired_statistics_by_hand(xs):
    a = {i: x * 100 for i, x in enumerate(xs)}
    b = {i: 100.0 for i in range(len(xs))}
    r = paired(a, b, "ratio")
    assert r["per_seed"] == pytest.approx({i: x for i, x in enumerate(xs)})
    assert r["median"] == pytest.approx(float(np.median(xs)))
    assert r["ci"][0] <= r["median"] <= r["ci"][1] or r["ci"][0] == pytest.approx(r["ci"][1])
    from scipy.stats import wilcoxon
    eff = np.log(xs)
    if np.any(eff != 0):
        assert r["wilcoxon_p"] == pytest.approx(float(wilcoxon(eff).pvalue))
    d = paired({0: 5.0, 1: 7.0}, {0: 2.0, 1: 3.0, 2: 9.0}, "difference")
    assert d["per_seed"] == {0: 3.0, 1: 4.0} and d["n"] == 2


def _markov_like(seed: int = 0, noise: float = 0.002):
    """An in-context Markov-chain loss: a fast fall from 1.43 (step 0) to 0.98, a long plateau, then a switch
    to 0.87: the drop from the plateau is 20% of the curve's whole range (the shape 8 of 8 such runs had)."""
    rng = np.random.default_rng(seed)
    s = np.arange(0, 3001, 25)
    v = 0.98 + 0.45 * np.exp(-s / 60) - 0.11 / (1 + np.exp(-(s - 2000) / 40)) + rng.normal(0, noise, len(s))
    return list(s), list(v)


@pytest.mark.parametrize("seed", range(4))
def test_relative_finds_a_plateau_left_after_a_first_fall_that_dominates_the_range(seed):
    s, v = _markov_like(seed)
    got = relative_crossing(s, v, 0.5)
    assert got["step"] is not None, got.get("reason")
    assert 1900 <= got["step"] <= 2100 and got["plateau"] == pytest.approx(0.98, abs=0.01)


@pytest.mark.parametrize("name", ["noise", "smooth", "ramp", "slow_approach", "converged_wiggle", "first_fall_only"])
def test_relative_still_refuses_curves_without_a_plateau_and_a_drop(name):
    rng = np.random.default_rng(1)
    s = np.arange(0, 3001, 25)
    curves = {
        "noise": 0.7 + rng.normal(0, 0.01, len(s)),
        "smooth": 0.2 + 0.9 * np.exp(-s / 700),
        "ramp": 1.1 - 0.3 * s / 3000,
        "slow_approach": 0.5 + 0.6 / (1 + s / 300),
        "converged_wiggle": 0.3 + 0.8 * np.exp(-s / 150) + 0.002 * np.sin(s / 40),
        "first_fall_only": 0.98 + 0.45 * np.exp(-s / 60) + rng.normal(0, 0.002, len(s)),
    }
    got = relative_crossing(list(s), list(curves[name]), 0.5)
    assert got["step"] is None and got.get("reason"), (name, got)
