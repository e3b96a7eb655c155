"""The text task on real text every machine has (the Python standard library's own sources): its
windows against the corpus bytes, the token file `clamp prepare-text` writes, a saved tokenizer,
the in-context learning score and per-position losses by hand, induction keys by brute force, and
bad corpora refused before anything runs."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny

from clamp.cli import main
from clamp.measures.scores import icl_positions, loss_positions, position_losses
from clamp.tasks import TASKS
from clamp.tasks.text import TextOptions, induction_keys

STDLIB = Path(os.__file__).parent
CORPUS = STDLIB / "json"                              # a few tens of kB of Python source


def options(**kw) -> TextOptions:
    return TextOptions(**{"path": str(CORPUS), "context": 16, **kw})


def corpus_bytes() -> bytes:
    return b"".join(f.read_bytes() for f in sorted(CORPUS.rglob("*")) if f.is_file() and f.suffix == ".py")


def test_windows_are_slices_of_the_corpus_and_the_splits_do_not_mix():
    data = np.frombuffer(corpus_bytes(), dtype=np.uint8)
    task = TASKS["text"](options(), seed=3)
    assert task.vocab == 256 and np.array_equal(np.asarray(task.tokens), data)
    split = len(data) - int(len(data) * 0.1)
    text = data.tobytes()
    b = task.train_batch(5, 8)
    assert torch.equal(b.targets[:, :-1], b.tokens[:, 1:])
    for row, tgt in zip(b.tokens.numpy(), b.targets.numpy()):
        window = bytes(row.astype(np.uint8)) + bytes([tgt[-1]])
        at = text.find(window)
        assert at >= 0 and at + len(window) <= split                  # inside the training split
    assert torch.equal(task.train_batch(5, 8).tokens, b.tokens)       # a pure function of (seed, step)
    assert not torch.equal(task.train_batch(6, 8).tokens, b.tokens)
    held = task.evaluators(4)["heldout"]
    for row in held.tokens.numpy():
        assert text.find(bytes(row.astype(np.uint8)), split) >= split
    rep = task.repeated_segments(3)
    assert torch.equal(rep.tokens[:, :8], rep.tokens[:, 8:])          # a segment of context/2, twice


def test_induction_keys_by_brute_force():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 4, (3, 12), generator=g)
    got = induction_keys(tokens)
    for b in range(3):
        for i in range(12):
            for k in range(12):
                want = 1 <= k <= i and tokens[b, k - 1] == tokens[b, i]
                assert bool(got[b, i, k]) == bool(want), (b, i, k)


def test_icl_score_and_position_losses_by_hand():
    g = torch.Generator().manual_seed(1)
    logits, targets = torch.randn(5, 20, 7, generator=g), torch.randint(0, 7, (5, 20), generator=g)
    targets[0, 3] = -100
    pl = position_losses(logits, targets)
    for t in (0, 3, 19):
        rows = [b for b in range(5) if targets[b, t] != -100]
        want = sum(-torch.log_softmax(logits[b, t], -1)[targets[b, t]].item() for b in rows) / len(rows)
        assert pl[t].item() == pytest.approx(want, rel=1e-5)
    assert icl_positions(20) == (2, 19) and icl_positions(512) == (51, 511)
    assert loss_positions(20) == [0, 1, 2, 4, 8, 16, 19]


def test_a_run_on_text_measures_what_text_needs(tmp_path):
    """A short run (2 seeds, one ensemble): held-out loss, the ICL score, per-position losses and the
    induction score are columns; the ICL score is the two position losses' difference."""
    (tmp_path / "t.yaml").write_text(
        f"name: t\nseeds: [0, 1]\ntask: {{name: text, path: {CORPUS}, context: 16}}\n"
        "model: {layers: 2, heads: 2, d_model: 16}\ntrain: {steps: 20, batch: 8, eval_every: 10, eval_size: 16}\n")
    assert main(["run", str(tmp_path / "t.yaml"), "--out", str(tmp_path / "run"), "--quiet", "--workers", "1"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "run/seed_1/metrics.jsonl").read_text().splitlines()]
    last = rows[-1]
    assert {"loss/heldout", "icl_score", "position_loss/pos15", "position_loss/pos2"} <= set(last)
    assert last["icl_score"] == pytest.approx(last["position_loss/pos15"] - last["position_loss/pos2"], abs=1e-5)
    assert any(k.startswith("induction_score/blocks.1") for k in last)
    assert rows[0]["loss/heldout"] == pytest.approx(math.log(256), rel=0.3)
    summary = json.loads((tmp_path / "run/seed_1/summary.json").read_text())
    assert summary["status"] == "ok" and summary["ensemble"]["members"] == 2


def test_prepare_text_writes_the_tokens_the_text_would_give(tmp_path, capsys):
    out = tmp_path / "c.bin"
    assert main(["prepare-text", str(CORPUS), "--out", str(out)]) == 0
    meta = json.loads((tmp_path / "c.bin.json").read_text())
    assert meta["dtype"] == "uint16" and meta["vocab"] == 256 and meta["tokens"] == len(corpus_bytes())
    assert np.array_equal(np.fromfile(out, dtype=np.uint16), np.frombuffer(corpus_bytes(), dtype=np.uint8))
    a, b = TASKS["text"](options(path=str(out)), 0), TASKS["text"](options(), 0)
    assert isinstance(a.tokens, np.memmap) and torch.equal(a.train_batch(2, 4).tokens, b.train_batch(2, 4).tokens)
    before = out.read_bytes()
    assert main(["prepare-text", str(CORPUS), "--out", str(out)]) == 2          # never replaced
    assert "a new file" in capsys.readouterr().err and out.read_bytes() == before


def test_a_saved_tokenizer_is_read_from_its_directory(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import PreTrainedTokenizerFast
    model = tokenizers.models.WordLevel(unk_token="[UNK]")
    tok = tokenizers.Tokenizer(model)
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.train([str(f) for f in sorted(CORPUS.glob("*.py"))], tokenizers.trainers.WordLevelTrainer(
        vocab_size=300, special_tokens=["[UNK]"]))
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(tmp_path / "tok")
    task = TASKS["text"](options(tokenizer=str(tmp_path / "tok")), 0)
    assert task.vocab == 300 and int(np.asarray(task.tokens).max()) < 300
    assert task.train_batch(0, 2).tokens.shape == (2, 16)


@pytest.mark.parametrize("task, found", [
    ("{name: text, path: nothere}", "no such file or directory"),
    ("{name: text, path: EMPTY}", "is empty"),
    ("{name: text, path: CORPUS, vocab: 100}", "outside the vocabulary of 100"),
    ("{name: text, path: CORPUS, context: 100000}", "task.context: found 100000; expected at most"),
    ("{name: text, path: TEXTDIR, tokenizer: nodir}", "is not a directory"),
    ("{name: text, path: TEXTDIR, tokenizer: BADTOK}", "cannot be read"),
    ("{name: text}", "task.path"),
])
def test_bad_corpora_are_refused_before_anything_runs(tmp_path, capsys, task, found):
    (tmp_path / "empty.bin").write_bytes(b"")
    (tmp_path / "c.bin").write_bytes(np.arange(200, dtype=np.uint16).tobytes())
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("some text " * 50)
    (tmp_path / "badtok").mkdir()
    (tmp_path / "badtok" / "tokenizer.json").write_text("not json")
    task = (task.replace("EMPTY", "empty.bin").replace("CORPUS", "c.bin").replace("TEXTDIR", "texts")
            .replace("BADTOK", "badtok"))
    (tmp_path / "r.yaml").write_text(f"name: r\ntask: {task}\n")
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "r.yaml:2" in err and found in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_text_recipes_need_a_corpus_but_other_tasks_are_unchanged():
    r = tiny()
    assert "icl_score" not in r.measure and r.task.name == "fewshot"
