"""The terminal side of the `clamp` command: its argument parser and its progress bar.

Top layer, beside cli.py (which runs the verbs, and is the only module that prints results).
Bad arguments are one line with a did-you-mean and exit 2, as bad input everywhere.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from .names.errors import did_you_mean
from .training.isolation import GRAFTS

ARGV: list[str] | None = None          # the arguments being parsed (cli.main sets them; else sys.argv)


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad arguments as one line with a did-you-mean, exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        hint = ""
        bad = re.search(r"invalid choice: '([^']*)'", message)   # a verb, or an option's value (--graft, ...)
        if bad:
            offered = re.findall(r"'([^']*)'", message.partition("(choose from ")[2])
            hint = did_you_mean(bad[1], offered or VERBS)
            hint = f"; {hint}" if hint else ""
        listed = [o for o in ("--set", "--threshold") if o in (ARGV if ARGV is not None else sys.argv)]
        if "arguments are required" in message and listed:
            hint += (f"; {listed[0]} takes every word after it: write the recipe or directory before {listed[0]}, "
                     "or end the list with --")
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in f"{message}{hint}")
        text = text if len(text) <= 220 else text[:150] + "..." + text[-60:]
        sys.stderr.write(f"{self.prog}: error: {text} (see `{self.prog} --help`)\n")
        sys.exit(2)


def positive(text: str) -> int:
    """--workers: a whole number ≥ 1."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"found {text!r}; expected a whole number of processes, 1 or more")
    return n


VERBS = ("run", "plan", "sites", "demo", "bench", "probe", "discover", "graph", "explain", "report", "prepare-text")


class Progress:
    """Progress of one or many runs on stderr, as a tqdm bar: the fraction of all training steps done,
    then the first few running runs' step and loss. Redrawn every 0.5 s on a terminal, every 10 s
    (a new line each time) in a log; nothing with --quiet."""

    def __init__(self, total_runs: int, stream=None, quiet: bool = False):
        from tqdm import tqdm
        stream = stream or sys.stderr                  # the stderr of now (a notebook or pytest may replace it)
        self.total_runs = max(total_runs, 1)
        self.state: dict = {}
        self.finished = 0
        tty = stream.isatty()
        form = ("{percentage:3.0f}%|{bar:20}| {elapsed}<{remaining} | {desc}" if tty else
                "{percentage:3.0f}% after {elapsed}, ~{remaining} left | {desc}")
        self.bar = tqdm(total=self.total_runs, file=stream if tty else _Lines(stream), disable=quiet,
                        mininterval=0.5 if tty else 10.0, delay=0.5 if tty else 10.0, ncols=150 if tty else None,
                        leave=False, bar_format=form)

    def __call__(self, ev: dict) -> None:
        key = ev.get("run", ev.get("seed"))
        kind = ev.get("event")
        if kind in ("start", "eval"):
            self.state[key] = (ev.get("step", 0), ev.get("steps", 1), ev.get("loss"))
        elif kind == "done":
            self.finished += 1
            self.state.pop(key, None)
        running = sum(s / max(n, 1) for s, n, _ in self.state.values())
        parts = [f"{k}: {s}/{n}" + (f" loss {loss:.3f}" if isinstance(loss, float) else "")
                 for k, (s, n, loss) in sorted(self.state.items(), key=lambda kv: str(kv[0]))[:3]]
        more = f" +{len(self.state) - 3}" if len(self.state) > 3 else ""
        self.bar.set_description_str(f"{self.finished}/{self.total_runs} done | " + "; ".join(parts) + more,
                                     refresh=False)
        self.bar.update(max(0.0, min(self.total_runs, self.finished + running) - self.bar.n))

    def close(self) -> None:
        self.bar.close()


class _Lines:
    """A log is not a terminal: each redraw of the bar becomes one line."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        text = text.strip("\r\n ")
        if text:
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def build_parser(commands: dict) -> argparse.ArgumentParser:  # long: a table: the arguments of every verb
    """The parser of every verb (`commands`: verb → the function that runs it). A table of arguments,
    one block per verb: long, and read top to bottom."""
    p = _Parser(prog="clamp", description="Clamp, freeze or ablate named subcircuits during training "
                "and time when the induction head forms.")
    sub = p.add_subparsers(dest="verb", required=True, parser_class=_Parser)

    def sets(q, memory: bool = True):
        q.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY.PATH=VALUE",
                       help="override recipe keys, e.g. --set train.lr=1e-3 train.steps=500 (repeatable)")
        if memory:
            q.add_argument("--max-memory", metavar="SIZE", help="refuse runs whose memory estimate is above SIZE "
                           "(e.g. 16G; none: no limit; default: half this machine's memory)")

    def training(q) -> None:
        q.add_argument("--device", choices=("cpu", "cuda", "auto"), help="where runs train (train.device)")
        q.add_argument("--no-ensemble", action="store_true", help="train every run alone (default: runs that "
                       "can share train together as one batched ensemble, with the same results)")

    q = sub.add_parser("run", help="train a recipe (every seed) into a run directory")
    q.add_argument("recipe")
    q.add_argument("--out", help="run directory (default runs/<name>)")
    q.add_argument("--workers", type=positive, help="processes for several seeds (default: cores)")
    q.add_argument("--fresh", action="store_true", help="delete the run directory first instead of resuming")
    q.add_argument("--quiet", action="store_true", help="no progress")
    training(q)
    sets(q)
    q.set_defaults(fn=commands["run"])

    q = sub.add_parser("plan", help="print the compiled timeline of a recipe")
    q.add_argument("recipe")
    sets(q)
    q.set_defaults(fn=commands["plan"])

    q = sub.add_parser("sites", help="list every site and parameter of a recipe's model")
    q.add_argument("recipe", nargs="?")
    sets(q, memory=False)
    q.set_defaults(fn=commands["sites"])

    q = sub.add_parser("demo", help="the built-in demo: baseline vs an induction clamp")
    q.add_argument("--out", help="suite directory (default runs/demo, or runs/demo-quick)")
    q.add_argument("--quick", action="store_true", help="a taste in under 20 s of CPU: the task without its offset "
                   "(a shorter plateau), 400 steps at lr 2e-3, smaller evaluations, one process")
    q.add_argument("--workers", type=positive)
    q.add_argument("--quiet", action="store_true")
    q.set_defaults(fn=commands["demo"])

    q = sub.add_parser("bench", help="run a suite of interventions × seeds")
    q.add_argument("suite")
    q.add_argument("--out", help="suite directory (default runs/<suite name>)")
    q.add_argument("--workers", type=positive, help="parallel runs (default: cores)")
    q.add_argument("--backend", choices=("local", "ray"), default="local")
    q.add_argument("--address", help="Ray cluster to join (default: start a local one)")
    q.add_argument("--fresh", action="store_true", help="delete the suite directory first instead of resuming")
    q.add_argument("--quiet", action="store_true")
    training(q)
    sets(q)
    q.set_defaults(fn=commands["bench"])

    q = sub.add_parser("probe", help="apply probes (evaluation-only clamps) to every checkpoint of a run")
    q.add_argument("dir")
    q.add_argument("probes", help="a YAML file with probes: {name: [interventions]} and optional subcircuits")
    q.set_defaults(fn=commands["probe"])

    q = sub.add_parser("discover", help="find what each head became along a run, and when (no head named)")
    q.add_argument("dir", help="a run directory, or a recipe (trained first into runs/<its name>)")
    q.add_argument("--threshold", action="extend", nargs="+", default=[], metavar="ROLE=X",
                   help="a role's threshold, e.g. --threshold induction=0.3 (default: the catalogue's)")
    q.add_argument("--ablate", choices=("mean", "zero", "resample", "none"), default="mean",
                   help="how each head's output is ablated to measure what it does for the loss (default mean)")
    q.add_argument("--suite", metavar="OUT.yaml", help="also write a suite of isolation experiments that test "
                   "what was found (a new file)")
    q.add_argument("--graft", choices=GRAFTS, default="missing",
                   help="which groups the suite also clamps to their own activation at the baseline's last "
                   "checkpoint: those whose role has no ideal pattern (default), all, or none")
    q.add_argument("--run-suite", action="store_true", help="and run it (into runs/<its name>), then judge "
                   "its predictions")
    q.set_defaults(fn=commands["discover"])

    q = sub.add_parser("prepare-text", help="encode text files into a token file for the text task")
    q.add_argument("sources", nargs="+", help="text files, or directories of them")
    q.add_argument("--out", required=True, help="the token file to write (a new .bin; its .json beside it)")
    q.add_argument("--tokenizer", default="bytes", help="'bytes' (default: each UTF-8 byte a token) or a "
                   "directory holding a saved transformers tokenizer")
    q.set_defaults(fn=commands["prepare-text"])

    q = sub.add_parser("graph", help="build the subcircuit graph of suite directories")
    q.add_argument("dir", nargs="+")
    q.add_argument("--out", help="where to write graph.json, graph.graphml, graph.png (default: the first DIR)")
    q.add_argument("--behaviour", metavar="COLUMN:RULE", help="the phase change to use (needed to combine suites "
                   "whose tasks or phase rules differ), e.g. loss:below")
    q.set_defaults(fn=commands["graph"])

    q = sub.add_parser("explain", help="explain a phase change from suite directories")
    q.add_argument("dir", nargs="+")
    q.add_argument("--target", help="the variant whose phase change is explained (default: the first suite's first)")
    q.add_argument("--compare", nargs=2, metavar=("A", "B"), help="two variants in different conditions")
    q.add_argument("--predict", metavar="V1,V2", help="combine these variants' clamps and predict the phase change")
    q.add_argument("--json", action="store_true")
    q.add_argument("--behaviour", metavar="COLUMN:RULE", help="the phase change to explain (needed to combine "
                   "suites whose tasks or phase rules differ), e.g. loss:below")
    q.set_defaults(fn=commands["explain"])

    q = sub.add_parser("report", help="tables, plots and report.html for a run or suite directory")
    q.add_argument("dir")
    q.add_argument("--column", action="append", default=[], metavar="COLUMN",
                   help="a metric column to plot (repeatable; default: loss, accuracy and the phase-rule columns)")
    q.add_argument("--head", action="append", default=[], metavar="SITE[h]",
                   help="a head whose attention to draw, e.g. blocks.1.attn.hook_pattern[3] (repeatable)")
    q.add_argument("--step", action="append", default=[], type=int, metavar="STEP",
                   help="a checkpoint step to draw attention at (repeatable; default: before the phase change, last)")
    q.add_argument("--variant", help="the suite variant whose attention to draw (default: the first)")
    q.add_argument("--seed", type=int, help="the seed whose attention to draw (default: the first)")
    q.set_defaults(fn=commands["report"])
    for verb, q in sub.choices.items():
        if verb != "demo":
            q.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                           help="import a plug-in first: a .py file or package directory, or a module name "
                           "(repeatable); what it registers (tasks, value sources, measures) recipes can name")
            q.add_argument("--trust-plugins", action="store_true",
                           help="also import the plug-ins that run and suite directories list (plug-ins are "
                           "code: only for directories whose author you trust)")
    return p


def deleted(prog: Progress):
    """Progress events, and a line on stderr for what --fresh deleted."""
    def on(ev: dict) -> None:
        if ev.get("event") == "deleted":
            d = Path(ev["dir"])
            sys.stderr.write(f"clamp: --fresh deleted {len(ev['files'])} item(s) clamp wrote in {d}: "
                             f"{listing(ev['files'], d)}\n")
            if ev.get("kept"):
                sys.stderr.write(f"clamp: --fresh kept {len(ev['kept'])} item(s) clamp did not write: "
                                 f"{listing(ev['kept'], d)}\n")
        elif ev.get("event") == "note":
            who = ev.get("run") or f"seed {ev.get('seed')}"
            sys.stderr.write(f"clamp: {who}: {ev['text']}\n")
        elif ev.get("event") == "resumed":
            bad = "; ".join(f"{Path(s['checkpoint']).name}: {s['reason']}" for s in ev["skipped"][:2])
            who = ev.get("run") or f"seed {ev.get('seed')}"
            sys.stderr.write(f"clamp: {who}: resumed from step {ev['step']}, the newest checkpoint that loads ("
                             f"{len(ev['skipped'])} newer one(s) did not: {bad})\n")
            prog(ev)
        else:
            prog(ev)
    return on


class Started:
    """Which runs started training in this call, and at which step: a finished run is returned as it was
    and never starts, so a call that trained nothing can say so."""

    def __init__(self, inner):
        self.inner, self.steps = inner, {}

    def __call__(self, ev: dict) -> None:
        if ev.get("event") == "start":
            self.steps[ev.get("run", ev.get("seed"))] = ev.get("step", 0)
        self.inner(ev)

    def note(self, total: int) -> str:
        """'' when every run trained from step 0, else what was not trained here."""
        done = total - len(self.steps)
        resumed = sorted((str(k), s) for k, s in self.steps.items() if s)
        parts = []
        if done == total:
            parts.append(f"nothing trained: {'the run' if total == 1 else f'all {total} runs'} had finished "
                         "before (--fresh trains again)")
        elif done:
            parts.append(f"{done} of {total} runs had finished before and were not trained again")
        if resumed:
            parts.append("resumed " + ", ".join(f"{k} at step {s}" for k, s in resumed[:4])
                         + (f" and {len(resumed) - 4} more" if len(resumed) > 4 else ""))
        return "; ".join(parts)


def listing(paths: list[str], base: Path, n: int = 8) -> str:
    """Paths relative to `base`, the first `n` of them, and how many more."""
    rel = [os.path.relpath(p, base) for p in paths]
    rel = [r for r in rel if "/" not in r] + [r for r in rel if "/" in r]          # top level first
    return ", ".join(rel[:n]) + (f" (and {len(rel) - n} more)" if len(rel) > n else "") if rel else "nothing"
