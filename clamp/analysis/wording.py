"""The words for a paired ratio of phase-change times: one table of cases, used by every text.

Analysis layer (explanations.py, draw.py and the CLI's graph lines say effects with it). A ratio
summary (graph._stat, phases.paired) falls in exactly one case, and each case has one wording:

    censored    no seed says anything: in every seed neither run changed
    prevents    most runs with the intervention never changed, while those without it did
    bound       some seeds had a run that never changed and the bound leaves the direction open
    earlier     every seed's ratio below 1 (a seed whose baseline never changed: below a value < 1)
    later       every seed's ratio above 1 (a seed whose intervened run never changed: above a value > 1)
    unchanged   the seeds disagree, or every ratio is 1: no direction is claimed
"""
from __future__ import annotations

CASES = {
    "prevents": "{what}: prevented (in most seeds the run with it never changed; ×{m:.2f} is a bound)",
    "censored": "{what}: unknown (neither run changed in {both} seed(s): both censored at the run length)",
    "bound": "{what}: ×{m:.2f} median ({lo:.2f}–{hi:.2f}), a bound, not a measurement: in {c} of {n} seed(s) a "
             "run never changed and counts at its length",
    "earlier": "{what}: {inv:.1f}× earlier (×{m:.2f} median, every seed earlier: {lo:.2f}–{hi:.2f}){cens}",
    "later": "{what}: {m:.2f}× later (every seed later: {lo:.2f}–{hi:.2f}){cens}",
    "unchanged": "{what}: no consistent change (×{m:.2f} median; seeds {lo:.2f}–{hi:.2f})",
}


def case(st: dict) -> str:
    """Which case a ratio summary ({median, min, max, n, censored, both_censored}) is."""
    if st.get("median") is None:
        return "censored"
    if st.get("prevents"):
        return "prevents"
    c, num, den = st.get("censored") or 0, st.get("censored_num") or 0, st.get("censored_den") or 0
    if st["max"] < 1 and (not c or num == 0):
        return "earlier"                        # censoring only lowers a bound that is already below 1
    if st["min"] > 1 and (not c or den == 0):
        return "later"                          # censoring only raises a bound that is already above 1
    return "bound" if c else "unchanged"


def words(st: dict, what: str = "phase change") -> str:
    """The ratio in words, by its case."""
    k = case(st)
    m = st.get("median")
    return CASES[k].format(what=what, both=st.get("both_censored") or st.get("n") or 0, m=m or 0.0,
                           lo=st.get("min") or 0.0, hi=st.get("max") or 0.0, inv=(1 / m) if m else 0.0,
                           c=st.get("censored") or 0, n=st.get("n") or 0, cens=_cens(st))


def _cens(st: dict) -> str:
    c = st.get("censored") or 0
    return f"; {c} of {st.get('n')} seed(s) censored, so the change is at least this large" if c else ""


SHORT = {"prevents": "prevents it (most seeds never changed)", "censored": "unknown (neither run changed)",
         "bound": "×{m:.2f}, a bound ({c} of {n} censored)", "earlier": "{inv:.1f}× earlier",
         "later": "{m:.2f}× later", "unchanged": "no consistent change (×{m:.2f} median)"}


def short(st: dict) -> str:
    """The same case in a few words (a picture's label), with the seeds' range."""
    k = case(st)
    m = st.get("median")
    text = SHORT[k].format(m=m or 0.0, inv=(1 / m) if m else 0.0, c=st.get("censored") or 0, n=st.get("n") or 0)
    if m is not None:
        text += f" (ratio {st['min']:.2f}–{st['max']:.2f}, {st['n']} seeds)"
    return text


def moved(st: dict) -> bool:
    """A ratio that shows a direction: every seed earlier, or every seed later (no censoring)."""
    return case(st) in ("earlier", "later")


def waiting(ratio: float) -> str:
    """The phase change's time over its bottleneck's (the latest subcircuit to form alone), in words."""
    if ratio > 1.05:
        return (f"the phase change comes {ratio:.2f}× after it forms alone: together, the subcircuits form more "
                "slowly than the slowest of them alone")
    if ratio < 0.95:
        return (f"the phase change comes {ratio:.2f}× of its time alone, earlier: together, the subcircuits form "
                "faster than the slowest of them alone")
    return f"the phase change comes when it forms alone (×{ratio:.2f}): it waits for the bottleneck"
