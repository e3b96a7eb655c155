"""Reading input: YAML with the line of every key path, bounded, and the names a user writes.

Names layer (under schema.py's typed build, spec.py and suite.py). `read_text` reads a regular
UTF-8 file of bounded size (never a FIFO or device, so nothing blocks); `load_yaml` parses plain
YAML only (no tags, bounded nesting, alias expansion and integers) into plain data and a `Source`
that knows where each key path was written (or which override set it), so every error names
file:line. Also the name grammar (run, suite and variant names are names, not paths) and key
paths (`interventions.0.steps`).
"""
from __future__ import annotations

import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from .errors import InputError, did_you_mean, format_path, show

Path = tuple  # of str | int


# ---------------------------------------------------------------------------------------
# Where things are


@dataclass
class Source:
    """Maps key paths of one input to 'file:line' (or to a fixed label like '--set')."""

    file: str = ""
    lines: dict = field(default_factory=dict)          # Path -> 1-based line
    overrides: dict = field(default_factory=dict)      # Path -> label ('--set train.lr=…')

    def where(self, path: Sequence) -> str:
        path = tuple(path)
        if path and path not in self.lines and path not in self.overrides:
            made = [label for p, label in self.overrides.items() if p[:len(path)] == path]
            if made:                          # a key no file wrote: the override that made it
                return made[0]
        for n in range(len(path), -1, -1):
            if path[:n] in self.overrides:
                return self.overrides[path[:n]]
            if path[:n] in self.lines:
                return f"{self.file}:{self.lines[path[:n]]}" if self.file else f"line {self.lines[path[:n]]}"
        return self.file

    def error(self, path: Sequence, found: str, expected: str, hint: str = "") -> InputError:
        return InputError(self.where(path), format_path(path), found, expected, hint)

    def check_keys(self, data: Any, allowed: Sequence[str], path: Sequence = (), *, what: str = "key",
                   expected: str = "", suggest: Sequence[str] = ()) -> None:
        """The one check of a mapping's keys: the first key not in `allowed` is an error at its own
        location, with what is allowed and a did-you-mean (among `suggest`, default `allowed`)."""
        for k in data:
            if k not in allowed:
                raise self.error(tuple(path) + (k,), f"unknown {what} {k!r}",
                                 expected or "one of " + ", ".join(map(str, allowed)),
                                 did_you_mean(str(k), suggest or allowed))

    def file_of(self, path: Sequence) -> str | None:
        """The file the value at `path` was written in (None: the command line, or no file)."""
        path = tuple(path)
        for n in range(len(path), -1, -1):
            if path[:n] in self.overrides:
                label = self.overrides[path[:n]]
                m = re.match(r"(.*?):\d+(?::|$)", label)        # 'file:line' or 'file:line: key path'
                return None if label.startswith("--set") or not m else m.group(1)
            if path[:n] in self.lines:
                break
        return self.file or None

    def resolve(self, path: Sequence, value: str) -> str:
        """A path written at key `path`, made absolute relative to the file that wrote it (the working
        directory for --set and files-less recipes), so the resolved recipe means the same anywhere."""
        if os.path.isabs(value):
            return os.path.normpath(value)
        f = self.file_of(path)
        base = os.path.dirname(os.path.abspath(f)) if f else os.getcwd()
        return os.path.normpath(os.path.join(base, value))


_SITE_WITH_HEADS = re.compile(r"[A-Za-z_*][\w*]*(?:\.[\w*]+)*\[[0-9,:* ]*\]")


def quote_site_names(text: str) -> str:
    """Quote unquoted names like blocks.0.attn.hook_pattern[2] so they parse inside [...] lists.

    In YAML a flow list `[a[2], b]` is a syntax error; researchers write site lists that way,
    so such names are quoted first. Quoted text and comments are left alone; line numbers
    do not change.
    """
    out = []
    for line in text.split("\n"):
        i, n, buf, quote = 0, len(line), [], ""
        while i < n:
            c = line[i]
            if quote:
                buf.append(c)
                if c == quote:
                    quote = ""
                i += 1
                continue
            if c in "'\"":
                quote = c
            elif c == "#" and (i == 0 or line[i - 1] in " \t"):
                buf.append(line[i:])
                break
            elif i == 0 or line[i - 1] in " \t[,{":          # a whole YAML token only
                m = _SITE_WITH_HEADS.match(line, i)
                if m and "." in m.group(0) and (m.end() == n or line[m.end()] in " \t,]}#"):
                    buf.append("'" + m.group(0) + "'")
                    i = m.end()
                    continue
            buf.append(c)
            i += 1
        out.append("".join(buf))
    return "\n".join(out)


# Bounds on what is read: every input file, whatever it holds, is read in bounded time and memory.
MAX_FILE_BYTES = 1 << 20          # 1 MiB; recipes and suites are a few kB
MAX_DEPTH = 64                    # nested mappings/lists
MAX_VALUES = 100_000              # values after YAML aliases are expanded ("billion laughs")
MAX_INT_DIGITS = 20               # integers beyond int64 mean nothing in a recipe
_KINDS = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


def read_text(path: str | os.PathLike, what: str) -> str:
    """The text of a regular UTF-8 file of at most MAX_FILE_BYTES; InputError (located at the file)
    otherwise. Never blocks: FIFOs, devices and directories are refused before they are read."""
    path = os.fspath(path)
    shown = path if len(path) <= 120 else path[:55] + "..." + path[-55:]
    if "\x00" in path:
        raise InputError(repr(shown)[1:-1], "", "a path with a NUL byte", f"{what} path")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except (OSError, ValueError) as e:
        raise InputError(shown, "", "no readable file", f"{what} (YAML)", getattr(e, "strerror", "") or "") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(shown, "", _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file"),
                             f"{what}: a regular file")
        if st.st_size > MAX_FILE_BYTES:
            raise InputError(shown, "", f"a file of {st.st_size:,} bytes",
                             f"{what} of at most {MAX_FILE_BYTES:,} bytes")
        chunks, size = [], 0
        while size <= MAX_FILE_BYTES:
            b = os.read(fd, MAX_FILE_BYTES + 1 - size)
            if not b:
                break
            chunks.append(b)
            size += len(b)
        data = b"".join(chunks)
    except OSError as e:
        raise InputError(shown, "", "a file that cannot be read", f"{what} (YAML)", e.strerror or "") from None
    finally:
        os.close(fd)
    if len(data) > MAX_FILE_BYTES:
        raise InputError(shown, "", f"a file of more than {MAX_FILE_BYTES:,} bytes",
                         f"{what} of at most {MAX_FILE_BYTES:,} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise InputError(f"{shown}:{line}", "", f"a byte that is not UTF-8 (0x{data[e.start]:02x} at column {col})",
                         f"{what} in UTF-8 text") from None


def load_yaml_file(path: str | os.PathLike, what: str) -> tuple[Any, Source]:
    """Read and parse a YAML file; a missing, unreadable, oversized or non-regular one is an
    InputError naming `what` ('a recipe file', 'a suite file', ...)."""
    return load_yaml(read_text(path, what), os.fspath(path))


def load_yaml(text: str, file: str = "") -> tuple[Any, Source]:
    """Parse YAML into plain Python data and a Source of line numbers; InputError on bad YAML.

    Plain YAML only: tags (`!!python/...`, `!foo`, `!!binary`) are refused where they stand; merge
    keys (`<<: *base`) merge; dates stay the strings they were written as. Nesting, alias
    expansion and integer size are bounded (MAX_DEPTH, MAX_VALUES, MAX_INT_DIGITS)."""
    text = quote_site_names(text)
    last = None                                          # the last event parsed (where an escape broke)
    try:
        depth = 0
        for ev in yaml.parse(text, Loader=yaml.SafeLoader):
            last = ev.end_mark
            if isinstance(ev, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    raise InputError(f"{file}:{ev.start_mark.line + 1}", "", f"nesting deeper than {MAX_DEPTH} levels",
                                     f"at most {MAX_DEPTH} nested mappings and lists")
            elif isinstance(ev, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise InputError(f"{file}{line}", "", "text that is not valid YAML", "a YAML mapping",
                         str(problem)) from None
    except (ValueError, OverflowError) as e:             # e.g. a "\\U0099999999" escape past U+10FFFF
        line = f":{last.line + 1}" if last is not None else ""
        raise InputError(f"{file}{line}", "", "text that is not valid YAML", "a YAML mapping",
                         f"an escape that names no character ({str(e)[:60]})") from None
    src = Source(file=file)
    if node is None:
        return None, src
    return _Converter(src).convert(node, (), 0), src


_STD = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_STD + t for t in ("str", "int", "float", "bool", "null")}


class _Converter:
    """YAML nodes → plain data, with every key path's line, within the bounds above."""

    def __init__(self, src: Source):
        self.src = src
        self.loader = yaml.SafeLoader("")
        self.values = 0

    def error(self, node: yaml.Node, path: Path, found: str, expected: str, hint: str = "") -> InputError:
        return InputError(f"{self.src.file}:{node.start_mark.line + 1}", format_path(path), found, expected, hint)

    def convert(self, node: yaml.Node, path: Path, depth: int) -> Any:
        self.values += 1
        if self.values > MAX_VALUES:
            raise self.error(node, path, f"aliases that expand to more than {MAX_VALUES:,} values",
                             "a document of ordinary size", "write the values out, or alias less")
        if depth > MAX_DEPTH:
            raise self.error(node, path, f"nesting deeper than {MAX_DEPTH} levels (through aliases)",
                             f"at most {MAX_DEPTH} nested mappings and lists")
        self.src.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            self._tag(node, path, _STD + "map")
            return self._mapping(node, path, depth)
        if isinstance(node, yaml.SequenceNode):
            self._tag(node, path, _STD + "seq")
            return [self.convert(v, path + (i,), depth + 1) for i, v in enumerate(node.value)]
        if node.tag == _STD + "timestamp":
            return node.value                          # a date is kept as the text written
        self._tag(node, path, *_SCALAR_TAGS)
        if node.tag == _STD + "int" and sum(c.isdigit() for c in node.value) > MAX_INT_DIGITS:
            raise self.error(node, path, f"an integer of {sum(c.isdigit() for c in node.value):,} digits",
                             f"a number of at most {MAX_INT_DIGITS} digits")
        return self.loader.construct_object(node)

    def _tag(self, node: yaml.Node, path: Path, *allowed: str) -> None:
        if node.tag not in allowed:
            tag = node.tag.replace(_STD, "!!")
            raise self.error(node, path, f"the tag {tag[:60]!r}", "plain YAML (no tags)",
                             "remove the tag; clamp never constructs objects from YAML")

    def _mapping(self, node: yaml.MappingNode, path: Path, depth: int) -> dict:
        out: dict = {}
        merges = []
        for knode, vnode in node.value:
            if knode.tag == _STD + "merge":
                merges.append(vnode)
                continue
            if not isinstance(knode, yaml.ScalarNode):
                raise self.error(knode, path, "a key that is not a plain name", "keys that are names")
            key = self.convert(knode, path, depth + 1)
            if key is None:
                raise self.error(knode, path, "a key that is not a plain name", "keys that are names")
            key = key if isinstance(key, (int, bool)) else str(key)
            if key in out:
                raise self.error(knode, path + (key,), f"the key {key!r} a second time", "each key once")
            self.src.lines[path + (key,)] = knode.start_mark.line + 1
            out[key] = self.convert(vnode, path + (key,), depth + 1)
        for vnode in merges:                           # `<<: *base` or `<<: [*a, *b]`: explicit keys win
            sources = vnode.value if isinstance(vnode, yaml.SequenceNode) else [vnode]
            for m in sources:
                if not isinstance(m, yaml.MappingNode):
                    raise self.error(m, path, "a merge key (<<) whose value is not a mapping",
                                     "<<: *anchor of a mapping (or a list of them)")
                real, self.src = self.src, Source(self.src.file)      # lines of keys that win only
                try:
                    merged = self._mapping(m, path, depth + 1)
                finally:
                    scratch, self.src = self.src, real
                for k, v in merged.items():
                    if k not in out:
                        out[k] = v
                        n = len(path) + 1
                        for p, line in scratch.lines.items():
                            if len(p) >= n and p[:n] == path + (k,):
                                self.src.lines[p] = line
        return out


NAME = re.compile(r"^\w[\w.,:=+\-\[\]]{0,119}\Z")
NAME_HELP = "a name (letters, digits and _ . , : = + - [ ]; not starting with . or -; no / or spaces; <= 120)"


def safe_name(text: str) -> str:
    """A name made from arbitrary text (a file stem, a grid value): every other character becomes _."""
    out = re.sub(r"[^\w.,:=+\-\[\]]", "_", str(text))[:120]
    return out if out and (out[0].isalnum() or out[0] == "_") else ("_" + out)[:120]


def check_name(value: Any, path: Path, src: Source) -> str:
    """A run, suite or variant name: it becomes a directory name, so it must be a name, not a path."""
    if not isinstance(value, str) or not NAME.match(value):
        raise src.error(path, show(value), NAME_HELP, f"e.g. {safe_name(value)!r}" if isinstance(value, str)
                        else "")
    return value


def parse_key_path(text: str, where: str) -> list[str | int]:
    """'interventions.0.steps' → ['interventions', 0, 'steps']: ASCII digits (at most 9) are list
    indices, anything else a key. InputError (at `where`) for an empty part."""
    parts: list[str | int] = []
    for p in str(text).split("."):
        if not p:
            raise InputError(where, "", show(text), "a key path like train.lr or interventions.0.steps",
                             "no empty parts between dots")
        parts.append(int(p) if p.isascii() and p.isdigit() and len(p) <= 9 else p)
    return parts


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=100)
