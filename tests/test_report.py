"""report.html: its figures checked for content, the page checked in headless Chromium, and the
graph picture's labels checked for overlap and wording."""
from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from clamp.analysis.draw import graph_figure, intervention_phrase
from clamp.analysis.figures import curve_figure
from clamp.analysis.graph import Graph
from clamp.analysis.htmlreport import suite_series
from clamp.analysis.results import load_results
from clamp.api import bench
from clamp.cli import main
from clamp.store.files import read_json
from clamp.store.rundir import run_dir, run_metrics

SUITE = """\
name: small_report
base:
  model: {layers: 2, heads: 4, d_model: 32}
  task: {name: fewshot, classes: 10, labels: 4, dim: 8}
  train: {steps: 160, batch: 16, lr: 1.0e-2, eval_every: 10, eval_size: 64, checkpoint_every: 40}
  measure: [loss, accuracy, induction_strength]
  phases:
    loss: {below: 1.0, relative: 0.5}
    max(induction_strength/blocks.1.attn.hook_pattern[*]): {above: 0.3}
  subcircuits:
    layer0: {sites: [blocks.0.attn.hook_z[*]]}
    match: {sites: [blocks.1.attn.hook_pattern[1]]}
seeds: [0, 1]
variants:
  baseline: {}
  match_early:
    interventions: [{clamp: match, to: induction, steps: [0, 60]}]
  no_layer0:
    interventions: [{ablate: layer0, steps: [20, 100]}, {freeze: blocks.0.attn.W_Q, steps: [0, 40]}]
expect:
  - name: the clamp brings the phase change earlier
    ratio: [match_early, baseline]
    below: 1.0
"""


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("report")
    (d / "suite.yaml").write_text(SUITE)
    bench(d / "suite.yaml", d / "out", workers=2)
    return d / "out"


def test_bench_writes_the_html_report(suite_dir):
    html = (suite_dir / "report.html").read_text()
    pngs = sorted((suite_dir / "report").glob("*.png"))
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(embedded) == len(pngs) >= 4
    assert {base64.b64decode(e) for e in embedded} == {p.read_bytes() for p in pngs}   # the same pictures
    for sid in ("overview", "expectations", "phases", "curves", "attention", "graph"):
        assert f'<section id="{sid}">' in html
    assert "the clamp brings the phase change earlier" in html
    assert "src=\"http" not in html and "<script" not in html                 # nothing from elsewhere


def test_curve_figure_has_a_line_per_seed_and_windows_at_their_steps(suite_dir):
    res = load_results(suite_dir)
    series = suite_series(res)
    fig = curve_figure(series, "loss")
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    assert set(panels) == {"baseline", "match_early", "no_layer0"}
    for sr in series:
        ax = panels[sr.name]
        lines = {ln.get_gid(): ln for ln in ax.get_lines() if (ln.get_gid() or "").startswith("seed ")}
        assert set(lines) == {"seed 0", "seed 1"}
        for s in (0, 1):                                           # each line is that seed's metrics
            rows = run_metrics(run_dir(suite_dir, sr.name, s))
            assert list(lines[f"seed {s}"].get_xdata()) == [r["step"] for r in rows]
            assert list(lines[f"seed {s}"].get_ydata()) == [r["loss"] for r in rows]
            summary = read_json(run_dir(suite_dir, sr.name, s) / "summary.json")
            for rule, v in summary["phases"]["loss"].items():
                marks = [ln for ln in ax.get_lines() if ln.get_gid() == f"crossing {rule} seed {s}"]
                if v.get("step") is None:
                    assert not marks
                else:
                    assert [m.get_xdata()[0] for m in marks] == [v["step"]]
        spans = sorted((round(p.get_x()), round(p.get_x() + p.get_width())) for p in ax.patches)
        want = {"baseline": [], "match_early": [(0, 60)], "no_layer0": [(0, 40), (20, 100)]}[sr.name]
        assert spans == want


def test_report_cli_rewrites_the_page_with_chosen_columns_heads_and_steps(suite_dir):
    code = main(["report", str(suite_dir), "--column", "accuracy", "--column",
                 "max(induction_strength/blocks.1.attn.hook_pattern[*])", "--head", "blocks.1.attn.hook_pattern[1]",
                 "--step", "40", "--step", "160", "--variant", "match_early", "--seed", "1"])
    assert code == 0
    html = (suite_dir / "report.html").read_text()
    assert "<h3>accuracy</h3>" in html and "<h3>loss</h3>" not in html
    assert "L1H1 in match_early seed 1 at steps 40, 160" in html


@pytest.mark.parametrize("args,expected", [
    (["--column", "losss"], "did you mean"),
    (["--head", "blocks.9.attn.hook_pattern[0]"], "a head of this model"),
    (["--head", "L1H1"], "blocks.1.attn.hook_pattern[3]"),
    (["--step", "41"], "a checkpoint step of this run"),
    (["--variant", "basline"], "did you mean 'baseline'"),
])
def test_report_cli_bad_choices_are_one_line_exit_2(suite_dir, capsys, args, expected):
    def files():
        return {p: p.stat().st_mtime_ns for p in suite_dir.rglob("*") if p.is_file() and p.name != ".clamp.lock"}
    before = files()
    code = main(["report", str(suite_dir)] + args)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and expected in err and "Traceback" not in err
    assert files() == before                                                 # nothing written


def test_report_of_a_single_run(tmp_path):
    from conftest import tiny

    import clamp
    r = tiny("interventions: [{clamp: blocks.1.attn.hook_pattern[0], to: induction, steps: [0, 10]}]\n",
             train={"steps": 20, "batch": 8, "eval_every": 5, "eval_size": 16, "checkpoint_every": 10})
    clamp.run(r, tmp_path / "run")
    assert main(["report", str(tmp_path / "run")]) == 0
    html = (tmp_path / "run" / "report.html").read_text()
    assert '<section id="curves">' in html and '<section id="attention">' in html


# ---------------------------------------------------------------------------------------
# The graph picture


@pytest.mark.parametrize("how,phrase", [
    ("clamp to induction(strength=1.0)@[0,60)", "clamping match to induction during [0,60)"),
    ("clamp to induction", "clamping match to induction"),
    ("ablate (zero)", "ablating match"),
    ("ablate (mean@[20,100))", "ablating match (mean) during [20,100)"),
    ("freeze", "freezing match"),
    ("freeze (hold@[0,40))", "freezing match during [0,40)"),
])
def test_intervention_wording(how, phrase):
    assert intervention_phrase(how, "match") == phrase


def test_graph_picture_labels_do_not_overlap_and_name_the_intervention(suite_dir):
    g = Graph.from_runs([str(suite_dir)], behaviour="loss:below")
    fig = graph_figure(g.g)
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    texts = [t for t in fig.axes[0].texts if t.get_text()]
    boxes = [t.get_bbox_patch().get_window_extent(r) for t in texts if t.get_bbox_patch() is not None]
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not boxes[i].overlaps(boxes[j]), (texts[i].get_text(), texts[j].get_text())
    effects = [t.get_text() for t in texts if (t.get_gid() or "").startswith("effect ")]
    assert any(t.startswith("clamping match to induction during [0,60)") for t in effects)
    assert any(t.startswith("ablating layer0 during [20,100)") or "freezing" in t for t in effects)
    assert not any("ideal" in t for t in effects if not t.startswith("clamping"))


# ---------------------------------------------------------------------------------------
# Headless Chromium


def _chromium() -> str:
    """A browser that is already there ($CLAMP_BROWSER, else chromium on PATH); else skip, saying how to get
    one. No test installs anything: .ci/run installs Debian's chromium before the tests where it can."""
    named = os.environ.get("CLAMP_BROWSER")
    if named:
        if not shutil.which(named):
            pytest.skip(f"CLAMP_BROWSER={named!r} is not an executable")
        return shutil.which(named)                                     # type: ignore[return-value]
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)                                  # type: ignore[return-value]
    pytest.skip("no headless browser: install one (Debian: apt-get install chromium) or set CLAMP_BROWSER to "
                "its path to run this test")


CHECK = """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  const shown = [...document.querySelectorAll('section')].filter(s => s.offsetHeight > 0).map(s => s.id);
  const wide = document.documentElement.scrollWidth > window.innerWidth ? 'WIDE' : 'FITS';
  document.title = 'IMAGES ' + ok + '/' + imgs.length + ' ' + wide + ' SECTIONS ' + shown.join(',');
});
</script>"""


def test_report_opens_in_headless_chromium(suite_dir, tmp_path):
    browser = _chromium()
    page = tmp_path / "page.html"                    # the report with a check appended (the report has no script)
    page.write_text((suite_dir / "report.html").read_text().replace("</body>", CHECK + "</body>"))
    shot = tmp_path / "shot.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files", "--hide-scrollbars"]
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1400,4000", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    dom = subprocess.run([browser, *flags, "--virtual-time-budget=5000", "--window-size=1400,4000", "--dump-dom",
                          page.as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    m = re.search(r"<title>IMAGES (\d+)/(\d+) (WIDE|FITS) SECTIONS ([\w,]*)</title>", dom)
    assert m, dom[:500]
    assert m.group(3) == "FITS"                                           # nothing runs off a 1400 px page
    assert int(m.group(1)) == int(m.group(2)) >= 4                        # every picture decoded
    assert set(m.group(4).split(",")) >= {"overview", "expectations", "phases", "curves", "attention", "graph"}
    from PIL import Image
    img = Image.open(shot).convert("L")
    assert img.size == (1400, 4000)
    lo, hi = img.getextrema()
    assert hi - lo > 100                                                  # not a blank page


def test_graph_picture_of_24_subcircuits_has_no_overlapping_boxes():
    """A graph of 24 subcircuits, 24 experiments and 2 phase changes: networkx's layout, rows as tall as
    the tallest box, no two boxes overlapping, every edge drawn."""
    import networkx as nx
    g = nx.MultiDiGraph()
    for b in ("phase:loss:below", "phase:accuracy:above"):
        g.add_node(b, kind="behaviour")
    for i in range(24):
        name = f"head_{i}"
        g.add_node(name, kind="subcircuit", sites=[f"blocks.{i % 3}.attn.hook_pattern[{i % 8}]"], params=[])
        g.add_edge(name, "phase:loss:below" if i % 2 else "phase:accuracy:above", kind="effect",
                   condition="reference", median=0.5 + i / 20, min=0.4 + i / 20, max=0.6 + i / 20, n=5,
                   variant=f"s/clamp_{i}", parent="s/baseline", interventions=[f"clamp to induction@[0,{100 * i})"],
                   **{"with": []})
    fig = graph_figure(g)
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    texts = [t for t in fig.axes[0].texts if t.get_bbox_patch() is not None]
    assert len(texts) == 24 + 24 + 2
    boxes = [t.get_bbox_patch().get_window_extent(r) for t in texts]
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not boxes[i].overlaps(boxes[j]), (texts[i].get_text(), texts[j].get_text())
    assert len(fig.axes[0].patches) >= 24 * 2          # a line from each subcircuit, an arrow to each phase change
