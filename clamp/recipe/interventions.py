"""Subcircuits, interventions, windows and probes: the parts of a recipe that name sites.

Recipe layer (spec.py reads a recipe with these). Every target is checked against the model the
recipe builds (its site catalogue), every `to:`/`how:` and its options against the value-source
registry, every window against the run length; a mistake is one located line.
"""
from __future__ import annotations

import dataclasses
import re

from ..names import sites as S
from ..names.errors import InputError, did_you_mean, show
from ..names.schema import build, build_dataclass
from ..values.base import VALUES, get_value
from .types import KINDS, PRESERVE, FreezeOptions, Intervention, Subcircuit


def parse_probes(value, src, shape, subcircuits, steps) -> dict[str, tuple[Intervention, ...]]:
    """Evaluation-only interventions: name → list; measured as extra columns `<column>@<name>`."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise src.error(("probes",), show(value), "a mapping of probe names to lists of interventions")
    out = {}
    for name, items in value.items():
        path = ("probes", name)
        if not isinstance(name, str) or not name.replace("_", "").isalnum():
            raise src.error(path, show(name), "a probe name of letters, digits and _")
        if isinstance(items, dict):
            items = [items]
        ivs = tuple(parse_intervention(it, path + (i,), src, shape, subcircuits, steps)
                    for i, it in enumerate(as_list(items, path, src)))
        for i, iv in enumerate(ivs):
            if iv.kind == "freeze":
                raise src.error(path + (i, "freeze"), "a freeze in a probe", "clamps and ablations (probes only "
                                "evaluate; nothing is trained under them)")
        out[name] = ivs
    return out


def as_list(value, path, src) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise src.error(path, show(value), "a list")
    return value


def check_name(text, path, src, shape, kind) -> list[S.Site]:
    try:
        return S.expand(text, shape, kind)
    except InputError as e:
        hint = e.hint
        other = "parameter" if kind == "activation" else "activation"
        try:
            S.expand(text, shape, other)
            hint = (f"{text} is {'a parameter' if other == 'parameter' else 'an activation'}; "
                    + ("freeze takes parameters, e.g. blocks.0.attn.W_Q[0]" if kind == "parameter"
                       else "clamp and ablate take activation sites, e.g. blocks.0.attn.hook_pattern[0]"))
        except InputError:
            pass
        raise src.error(path, e.found, e.expected, hint) from None


def parse_subcircuits(value, src, shape) -> dict[str, Subcircuit]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise src.error(("subcircuits",), show(value), "a mapping of names to {sites: [...], params: [...]}")
    out = {}
    for name, body in value.items():
        path = ("subcircuits", name)
        if S._PATH_RE.match(str(name)) and "." in str(name):
            raise src.error(path, show(name), "a subcircuit name without dots",
                            "dots are for site names; use e.g. prev_token")
        sc = build_dataclass(Subcircuit, body, path, src)
        for key, what in (("sites", "activation"), ("params", "parameter")):
            for i, s in enumerate(getattr(sc, key)):
                got = check_name(s, path + (key, i), src, shape, what)
                if sc.select is not None:
                    bad = [g for g in got if g.heads is not None or not g.info.per_head]
                    if bad or "[" in s:
                        raise src.error(path + (key, i), show(s), "a per-head name without a head selection "
                                        "(the heads come from select)", f"write {s.split('[')[0]}")
                    if any(g.info.layer != sc.select.layer for g in got):
                        raise src.error(path + (key, i), show(s), f"a name in layer {sc.select.layer} "
                                        "(select.layer)")
        if sc.select is not None and sc.select.layer >= shape.layers:
            raise src.error(path + ("select", "layer"), str(sc.select.layer),
                            f"a layer 0..{shape.layers - 1}")
        if not sc.sites and not sc.params:
            raise src.error(path, "an empty subcircuit", "at least one site or parameter")
        out[str(name)] = sc
    return out


def parse_windows(value, path, src, steps: int) -> tuple[tuple[int, int], ...]:
    """[a, b] or [[a, b], [c, d], ...]; 'end' means the run's last step, '40%' the step 40% into the
    run; half-open, in range."""
    if value is None:
        return ((0, steps),)
    if not isinstance(value, list) or not value:
        raise src.error(path, show(value), "[start, end] or a list of them, e.g. [0, end] or [[0, 500], [1000, end]]")
    pairs = value if isinstance(value[0], list) else [value]
    out = []
    for i, pair in enumerate(pairs):
        p = path + ((i,) if pairs is value else ())
        if not isinstance(pair, list) or len(pair) != 2:
            raise src.error(p, show(pair), "[start, end] (two steps; half-open)")
        a, b = (parse_step(x, p + (j,), src, steps) for j, x in enumerate(pair))
        if a >= b:
            raise src.error(p, show(pair), "start < end (windows are half-open [start, end))",
                            f"[{a}, {a + 1}] is the single step {a}" if a == b else "")
        if b > steps:
            raise src.error(p, show(pair), f"a window inside the run's {steps} steps",
                            f"write [{a}, end] to run to the last step" if a < steps else
                            f"it starts after the run ends: make train.steps larger than {a}, or move the window")
        out.append((a, b))
    out.sort()
    for (a0, b0), (a1, b1) in zip(out, out[1:]):
        if a1 < b0:
            raise src.error(path, show(value), "windows that do not overlap",
                            f"merge [{a0}, {b0}] and [{a1}, {b1}] into [{a0}, {max(b0, b1)}]")
    return tuple(out)


PERCENT = re.compile(r"(\d{1,3}(?:\.\d+)?)%\Z")


def parse_step(x, path, src, steps) -> int:
    """A window bound: a step, 'end' (the run's last step), or a percentage of the run ('40%': the step
    round(0.4 · train.steps)), so a window written in percentages still fits a shortened run."""
    if x == "end":
        return steps
    if isinstance(x, str) and (m := PERCENT.match(x.strip())):
        p = float(m.group(1))
        if p > 100:
            raise src.error(path, show(x), "a percentage of the run between 0% and 100%")
        return int(round(steps * p / 100))
    if isinstance(x, bool) or not isinstance(x, (int, float)) or (isinstance(x, float) and not x.is_integer()):
        raise src.error(path, show(x), "a step (an integer >= 0), 'end', or a percentage of the run like '40%'",
                        did_you_mean(str(x), ["end"]) if isinstance(x, str) else "")
    if x < 0:
        raise src.error(path, show(x), "a step >= 0")
    return int(x)


def parse_intervention(item, path, src, shape, subcircuits, steps) -> Intervention:
    if not isinstance(item, dict):
        raise src.error(path, show(item), "a mapping like {clamp: SITE, to: SOURCE} or {freeze: PARAM}")
    kinds = [k for k in KINDS if k in item]
    if len(kinds) != 1:
        found = "no clamp/ablate/freeze key" if not kinds else "both " + " and ".join(kinds)
        close = [did_you_mean(str(k), KINDS) for k in item if k not in KINDS]
        raise src.error(path, found, "exactly one of clamp, ablate, freeze",
                        next((c for c in close if c), ""))
    kind = kinds[0]
    target = item[kind]
    if not isinstance(target, str):
        raise src.error(path + (kind,), show(target), "a subcircuit name or a site name")
    common = {kind, "steps", "name"} | ({"preserve"} if kind != "freeze" else set())
    source_key = {"clamp": "to", "ablate": "how", "freeze": None}[kind]
    source = None
    options = None
    if source_key:
        default = "zero" if kind == "ablate" else None
        source = item.get(source_key, default)
        if source is None:
            raise src.error(path, f"no {source_key!r} key", f"{source_key}: a value source, one of "
                            + ", ".join(sorted(VALUES)))
        if isinstance(source, dict) and len(source) == 1:     # to: {previous_token: {strength: 0.9}}
            (source, inline), = source.items()
            if inline is not None and not isinstance(inline, dict):
                raise src.error(path + (source_key, str(source)), show(inline),
                                f"the options of {str(source)!r} as a mapping, e.g. {{strength: 0.9}}")
            item = {**item, **(inline or {}), source_key: source}
        try:
            cls = get_value(source, ablation=(kind == "ablate"))
        except InputError as e:
            raise src.error(path + (source_key,), e.found, e.expected, e.hint) from None
        common.add(source_key)
        opt_keys = {k: v for k, v in item.items() if k not in common}
        options = source_options(cls, opt_keys, path, src, kind)
    else:
        options = source_options(FreezeOptions, {k: v for k, v in item.items() if k not in common}, path, src,
                                  kind)
    check_target(target, kind, cls(options) if source_key else None, path, src, shape, subcircuits)
    windows = parse_windows(item.get("steps"), path + ("steps",), src, steps)
    name = build(str, item.get("name", ""), path + ("name",), src)
    preserve = build(tuple[str, ...], item.get("preserve", []), path + ("preserve",), src)
    for i, p in enumerate(preserve):
        if p not in PRESERVE:
            raise src.error(path + ("preserve", i), show(p), "patterns or values (of later attention layers)",
                            did_you_mean(str(p), PRESERVE))
    return Intervention(kind, target, source, options, windows, name, tuple(dict.fromkeys(preserve)))


def source_options(cls, keys: dict, path, src, kind):
    """The options of a value source (`cls.Options`) or of a freeze (`cls` is FreezeOptions)."""
    opts_cls = cls if cls is FreezeOptions else cls.Options
    known = {f.name for f in dataclasses.fields(opts_cls)}
    extra = {"steps", "name"} | ({"to" if kind == "clamp" else "how", "preserve"} if kind != "freeze" else set())
    allowed = sorted(known | extra)
    whose = "freeze" if cls is FreezeOptions else cls.name
    src.check_keys(keys, sorted(known), path, suggest=allowed,
                   expected=f"one of {', '.join(allowed)} (options of {whose}: {', '.join(sorted(known)) or 'none'})")
    return build_dataclass(opts_cls, keys, path, src)


def check_target(target, kind, source, ipath, src, shape, subcircuits) -> None:
    """The target names a subcircuit with the right parts, or a site/parameter of the model."""
    path = ipath + (kind,)
    want = "parameter" if kind == "freeze" else "activation"
    if target in subcircuits:
        sc = subcircuits[target]
        names = sc.params if kind == "freeze" else sc.sites
        if not names:
            part = "params" if kind == "freeze" else "sites"
            raise src.error(path, f"subcircuit {target!r} with no {part}",
                            f"a subcircuit with {part} to {kind}",
                            f"add {part} to subcircuits.{target}")
        resolved = [s for n in names for s in S.expand(n, shape, want)]
        if sc.select is not None:                 # heads unknown yet: check the layout with every head
            resolved = [S.Site(s.name, tuple(range(shape.heads)), s.info) for s in resolved]
    else:
        if "." not in target and "[" not in target and not target.startswith("hook_"):
            hint = did_you_mean(target, subcircuits) or ("no subcircuits are defined" if not subcircuits else "")
            raise src.error(path, show(target), f"a subcircuit name ({', '.join(subcircuits) or 'none defined'}) "
                            f"or a {'parameter' if want == 'parameter' else 'site'} name", hint)
        resolved = check_name(target, path, src, shape, want)
    if source is not None:
        bad = [s for s in resolved if not source.applies_to(s)]
        if bad:
            raise src.error(path, show(str(bad[0])), f"a site {source.name} applies to ("
                            + ", ".join(f"*.{x}" if x != "*" else "any activation" for x in source.sites) + ")")
        for s in resolved:
            problem = source.check(s, shape)
            if problem:
                key, found, expected = problem
                raise src.error(ipath + (key,), found, expected)


