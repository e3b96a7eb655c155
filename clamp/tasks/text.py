"""Real text: next-token prediction on random windows of a tokenised corpus on disk.

Model layer (tasks/). `task: {name: text, path: ...}` reads either
- a token file (`.bin`, the nanoGPT convention): a flat array of token ids, `uint16` or `uint32`,
  read memory-mapped (a corpus larger than memory is never loaded whole); `clamp prepare-text` writes
  one, with a `<file>.json` beside it that records its dtype, vocabulary and tokenizer; or
- text: a file, or a directory whose text files (`suffixes`) are read in sorted order, encoded by the
  built-in byte-level tokenizer (`tokenizer: bytes`: each UTF-8 byte is a token, vocabulary 256, no
  download) or by a transformers tokenizer saved in a directory (`tokenizer: DIR`, read offline).

The corpus is split once: its last `heldout` fraction is the held-out split. A training batch is
`batch` windows of `context + 1` tokens at random offsets in the training split, drawn from the
run's seed and the step (a pure function of both, so a resumed run sees the same data); inputs are
a window's first `context` tokens, targets its last `context`. Evaluators: `train` and `heldout`,
fixed sets of windows of each split. Each batch marks its induction keys: from position i, every
key k <= i whose previous token equals token i (where an induction head would look). The repeated
segments the induction score is measured on are held-out windows of `context // 2` tokens, each
repeated twice.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..names.schema import opt, positive
from .base import Batch, Task, TaskIO, register_task, rng_for

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py", ".html", ".json", ".csv")
MAX_VOCAB = 1 << 20
_CORPORA: dict[tuple, tuple[np.ndarray, int]] = {}       # (path, tokenizer, mtime, size) -> (tokens, vocab)


@dataclass(frozen=True)
class TextOptions:
    path: str = opt("", path=True, doc="a token file (.bin: flat uint16/uint32 ids, memory-mapped), a text "
                                       "file, or a directory of text files (relative to the recipe)")
    tokenizer: str = opt("bytes", path=True, keywords=("bytes",),
                         doc="for text: 'bytes' (each UTF-8 byte a token, vocabulary 256) or a directory holding "
                             "a transformers tokenizer (read offline)")
    context: int = opt(64, check=positive, doc="tokens per sequence (the model's context)")
    heldout: float = opt(0.1, doc="the fraction at the corpus's end kept out of training (the heldout evaluator)")
    dtype: str = opt("", doc="a .bin file's id type, uint16 or uint32 ('': from its .json, else uint16)")
    vocab: int = opt(0, doc="vocabulary size (0: the tokenizer's, or the .json's, or the largest id + 1)")
    suffixes: tuple[str, ...] = opt(TEXT_SUFFIXES, doc="which files of a directory are text")

    def validate(self):
        if not self.path:
            return ("path", "a corpus: a .bin token file, a text file or a directory of text files")
        if not 0.0 < self.heldout < 1.0:
            return ("heldout", "a fraction in (0, 1), e.g. 0.1")
        if self.dtype not in ("", "uint16", "uint32"):
            return ("dtype", "uint16 or uint32")
        if not 0 <= self.vocab <= MAX_VOCAB:
            return ("vocab", f"0 (from the corpus) or a size up to {MAX_VOCAB:,}")
        try:
            tokens, vocab = corpus(self)
        except (OSError, ValueError) as e:
            return ("path", str(e))
        n_held = int(len(tokens) * self.heldout)
        for split, n in (("training", len(tokens) - n_held), ("held-out", n_held)):
            if n < self.context + 1:
                return ("context", f"at most {max(n - 1, 0)} (the {split} split has {n:,} tokens; a window is "
                                   f"context + 1 = {self.context + 1})")
        return None


def text_files(p: Path, suffixes: tuple[str, ...]) -> list[Path]:
    if p.is_file():
        return [p]
    return sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in suffixes)


def encode(files: list[Path], tokenizer: str) -> tuple[np.ndarray, int]:
    """Token ids of the files' text, one after another, and the vocabulary size (bytes: 256)."""
    if tokenizer == "bytes":
        data = b"".join(f.read_bytes() for f in files)
        return np.frombuffer(data, dtype=np.uint8).astype(np.uint16), 256
    tok = load_tokenizer(tokenizer)
    ids: list[int] = []
    for f in files:
        ids += tok(f.read_text(encoding="utf-8", errors="replace"))["input_ids"]
    vocab = len(tok)
    return np.asarray(ids, dtype=np.uint32 if vocab > 65535 else np.uint16), vocab


def load_tokenizer(directory: str):
    """A transformers tokenizer saved in `directory` (save_pretrained), read without any download."""
    if not os.path.isdir(directory):
        raise ValueError(f"tokenizer {directory!r} is not a directory (expected 'bytes' or a saved tokenizer)")
    try:
        from transformers import AutoTokenizer
        return AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - an unreadable directory has many failure modes
        raise ValueError(f"tokenizer directory {directory!r} cannot be read: {type(e).__name__}: "
                         f"{' '.join(str(e).split())[:160]}") from e


def meta_path(bin_path: str | os.PathLike) -> Path:
    return Path(str(bin_path) + ".json")


def corpus(o: TextOptions) -> tuple[np.ndarray, int]:
    """The corpus's token ids (a read-only memory map for a .bin file) and its vocabulary size,
    checked: not empty, every id inside the vocabulary. Read once per process and corpus."""
    p = Path(o.path)
    if not p.exists():
        raise ValueError(f"no such file or directory: {o.path}")
    st = p.stat()
    key = (str(p), o.tokenizer, o.dtype, o.vocab, o.suffixes, st.st_mtime_ns, st.st_size)
    if key not in _CORPORA:
        _CORPORA[key] = _read(p, o)
    return _CORPORA[key]


def _read(p: Path, o: TextOptions) -> tuple[np.ndarray, int]:
    if p.is_file() and p.suffix == ".bin":
        meta = json.loads(meta_path(p).read_text()) if meta_path(p).is_file() else {}
        dtype = o.dtype or meta.get("dtype", "uint16")
        if p.stat().st_size == 0:
            raise ValueError(f"{p} is empty")
        if p.stat().st_size % np.dtype(dtype).itemsize:
            raise ValueError(f"{p} is {p.stat().st_size} bytes, not a whole number of {dtype} ids")
        tokens: np.ndarray = np.memmap(p, dtype=dtype, mode="r")
        top = max(int(tokens[i:i + (1 << 24)].max()) for i in range(0, len(tokens), 1 << 24))
        vocab = o.vocab or int(meta.get("vocab", top + 1))
    else:
        files = text_files(p, o.suffixes)
        if not files:
            raise ValueError(f"{p} holds no text files (suffixes {', '.join(o.suffixes)})")
        tokens, vocab = encode(files, o.tokenizer)
        vocab = o.vocab or vocab
        if len(tokens) == 0:
            raise ValueError(f"{p} holds no text (its files are empty)")
        top = int(tokens.max())
    if top >= vocab:
        raise ValueError(f"{p} has token id {top}, outside the vocabulary of {vocab} (set vocab: {top + 1} or more)")
    return tokens, vocab


@register_task
class Text(Task):
    name = "text"
    Options = TextOptions
    evaluator_names = ("train", "heldout")
    roles = ()
    induction_keys = True
    has_repeated_segments = True
    dense_targets = True
    default_model = {"embed_std": 1.0}
    default_measures = ("loss", "accuracy", "icl_score", "position_loss", "prev_token_score", "induction_score")
    default_train = {"steps": 3000, "lr": 1e-3, "eval_every": 100, "eval_size": 256}

    def __init__(self, options: TextOptions, seed: int):
        super().__init__(options, seed)
        self.tokens, self.vocab = corpus(options)
        self.split = len(self.tokens) - int(len(self.tokens) * options.heldout)

    @classmethod
    def io(cls, o: TextOptions) -> TaskIO:
        return TaskIO(vocab=corpus(o)[1], n_out=corpus(o)[1], n_ctx=o.context)

    @classmethod
    def default_phases(cls, options: TextOptions) -> dict:
        # the in-context learning score falling (late tokens predicted better than early ones), and an
        # induction head in any layer
        return {"icl_score": {"below": -0.3, "relative": 0.5},
                "max(induction_score/blocks.*.attn.hook_pattern[*])": {"above": 0.5}}

    def _windows(self, g: torch.Generator, n: int, lo: int, hi: int, length: int) -> np.ndarray:
        """n windows of `length` tokens starting at random offsets in [lo, hi - length]."""
        starts = torch.randint(lo, hi - length + 1, (n,), generator=g).numpy()
        return np.stack([np.asarray(self.tokens[s:s + length], dtype=np.int64) for s in starts])

    def _batch(self, w: np.ndarray) -> Batch:
        t = torch.from_numpy(w)                                               # [batch, context + 1]
        tokens, targets = t[:, :-1].contiguous(), t[:, 1:].contiguous()       # [batch, context] each
        return Batch(tokens, targets, induction_keys=induction_keys(tokens),
                     induction_others=torch.zeros(tokens.shape[0], tokens.shape[1], tokens.shape[1], dtype=torch.bool))

    def train_batch(self, step: int, size: int) -> Batch:
        return self._batch(self._windows(rng_for(self.seed, 7, step), size, 0, self.split, self.options.context + 1))

    def train_batches(self, start: int, count: int, size: int) -> list[Batch]:
        return [self.train_batch(s, size) for s in range(start, start + count)]

    def evaluators(self, size: int) -> dict[str, Batch]:
        T = self.options.context + 1
        return {"train": self._batch(self._windows(rng_for(self.seed, 11), size, 0, self.split, T)),
                "heldout": self._batch(self._windows(rng_for(self.seed, 13), size, self.split, len(self.tokens), T))}

    def repeated_segments(self, size: int) -> Batch:
        S = self.options.context // 2
        seg = torch.from_numpy(self._windows(rng_for(self.seed, 17), size, self.split, len(self.tokens), S))
        tokens = seg.repeat(1, 2)                                             # [size, 2S]
        T = tokens.shape[1]
        keys = torch.zeros(size, T, T, dtype=torch.bool)
        i = torch.arange(S, T)
        keys[:, i, i - S + 1] = True
        targets = torch.full_like(tokens, -100)
        targets[:, S - 1:T - 1] = tokens[:, S:T]
        return Batch(tokens, targets, induction_keys=keys, induction_others=torch.zeros_like(keys))


def induction_keys(tokens: Tensor) -> Tensor:
    """tokens [batch, pos] → [batch, query, key] bool: key k (1 <= k <= i) whose previous token is
    token i: the positions just after earlier occurrences of the current token."""
    T = tokens.shape[1]
    before = torch.cat([torch.full_like(tokens[:, :1], -1), tokens[:, :-1]], 1)   # [batch, key]: token k-1
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    return (tokens[:, :, None] == before[:, None, :]) & causal
