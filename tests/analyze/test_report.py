"""The report: valid PNGs, the numbers it was given, self-contained HTML, and a clean render in Chromium."""

from __future__ import annotations

import base64
import html
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from overlaps import drawn_texts, overlapping_texts
from spinal.analyze.report import comparison_plots, trace_plots
from spinal.analyze.report.figures import fit_line
from spinal.analyze.compare.paired import compare
from spinal.analyze.compare.comparison import DEFINITIONS, Comparison, PairComparison
from spinal.analyze.report.html import write_report
from spinal.analyze.report.tables import OPERATIONAL
from spinal.analyze.trace_format import Trace
from spinal.config import CompareConfig

N_LAYERS = 13
LABELS = ["base", "dpo-step100", "dpo-step200", "dpo<final>&co $v1$"]  # HTML escaping; '$' is not mathtext
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM = "/usr/bin/chromium"


def _spectrum(a: float, spikes: int, rng: np.random.Generator, n: int = 256) -> np.ndarray:
    """σ_k = k^-a on the bulk (k counted after the spikes), a little noise, ``spikes`` massive leading values."""
    bulk = np.arange(1, n - spikes + 1, dtype=float) ** -a * np.exp(0.02 * rng.standard_normal(n - spikes))
    return np.sort(np.concatenate([30.0 * 4.0 ** -np.arange(spikes), bulk]))[::-1]


def _trace(i: int) -> Trace:
    rng = np.random.default_rng(i)
    layers = np.arange(N_LAYERS)
    depth = layers / (N_LAYERS - 1)
    a = 0.8 + 0.5 * depth + 0.25 * i * np.clip(depth - 0.6, 0, None) + 0.02 * rng.standard_normal(N_LAYERS)
    L = 0.9 - 0.5 * depth - 0.1 * i * np.clip(depth - 0.6, 0, None) + 0.02 * rng.standard_normal(N_LAYERS)
    L[-1] = np.nan
    status = np.array(["ok"] * N_LAYERS, dtype=object)
    status[1] = "too-few-ranks"
    status[4] = "poor-fit"
    status[7] = None  # a missing status must read as "not ok"
    spikes = np.where(layers >= 2, 1, 0)
    table = pd.DataFrame({
        "layer": layers, "a": a, "a_lo": a - 0.05, "a_hi": a + 0.06, "a_mle": a + 0.01, "r2": 0.99, "ks": 0.03,
        "k_lo": np.maximum(spikes + 1, 13).astype(float), "k_hi": 100.0, "rank": 255, "spikes": spikes,
        "floor_rank": 180.0, "top1_share": np.where(spikes > 0, 0.6, 0.05), "status": status, "a_raw": a + 0.1,
        "status_raw": status, "spikes_raw": spikes, "top1_share_raw": 0.7, "null_sd_a": 0.02,
        "entropy": 5 - 3 * depth, "kl_final": 3 * (1 - depth), "L_mean": L, "L_q05": L - 0.3, "L_q25": L - 0.1,
        "L_q50": L, "L_q75": L + 0.12, "L_q95": L + 0.4, "hellinger": L / 3, "js": L / 6,
    })
    table.loc[1, ["a", "a_lo", "a_hi", "a_mle", "r2", "ks", "k_lo", "k_hi"]] = np.nan
    spectra = {int(l): _spectrum(float(a[l]) if np.isfinite(a[l]) else 1.0, int(spikes[l]), rng) for l in layers}
    meta = {"label": LABELS[i], "model": f"org/model-{i}", "architecture": "LlamaForCausalLM", "n_tokens": 40_960,
            "n_sequences": 512, "lens_tokens": 8192, "path_length": float(np.nansum(L)), "straightness": 0.42,
            "tokens_sha256": "ab" * 32, "window_rule": "auto: k_lo = max(spikes+1, 5, ceil(0.05 r))",
            "alpha_name": "rank-decay exponent a (σ_k ∝ k^-a)", "options": {"n_boot": 200, "blocks": 16, "seed": 0}}
    boot = a[:, None] + 0.03 * rng.standard_normal((N_LAYERS, 20))  # (layer, n_boot)
    boot[1] = np.nan
    seq_L = L[None, :-1] + 0.05 * rng.standard_normal((512, N_LAYERS - 1))  # (sequence, step)
    return Trace(table, meta, boot, seq_L, spectra)


SUMMARY = dict(onset_a=9, onset_L=None, terminal_share_a=0.6123, terminal_share_L=0.4417, delta_align=0.2468,
               delta_align_se=0.0357, coherence_ref=0.8123, coherence_other=0.8456, d_coherence=0.0333,
               grad_concentration=0.5791, grad_per_block=[0.1] * 12, spinal_score=2.7183,
               terminal_layers=[9, 10, 11, 12])


def _pair(ref: Trace, other: Trace, k: int) -> PairComparison:
    t, u = ref.table, other.table
    d_a, d_L = u["a"] - t["a"], u["L_mean"] - t["L_mean"]
    p = np.where(np.arange(N_LAYERS) >= 10, 0.001, 0.6)
    table = pd.DataFrame({
        "layer": t["layer"], "d_a": d_a, "d_a_lo": d_a - 0.03, "d_a_hi": d_a + 0.03,
        "p_a": p, "p_a_holm": np.minimum(1, p * 2),
        "null_a": 0.02, "loc_a": d_a.abs() / d_a.abs().sum(), "d_L": d_L, "d_L_lo": d_L - 0.02, "d_L_hi": d_L + 0.02,
        "p_L": p, "p_L_holm": np.minimum(1, p * 3), "null_L": 0.015, "loc_L": d_L.abs() / d_L.abs().sum(),
        "terminal": t["layer"] >= 9,
    })
    summary = {**SUMMARY, "spinal_score": SUMMARY["spinal_score"] + k}
    return PairComparison(ref.label, other.label, table, summary)


@pytest.fixture(scope="module")
def traces() -> list[Trace]:
    return [_trace(i) for i in range(4)]


@pytest.fixture(scope="module")
def comparison(traces) -> Comparison:
    series = pd.DataFrame({"label": LABELS, "terminal_a_gain": [0.0, 0.05, 0.11, 0.04],
                           "terminal_L_change": [0.0, -0.02, -0.04, 0.01], "coherence": [0.81, 0.83, 0.85, 0.7],
                           "step_a": [np.nan, 0.02, 0.01, 0.3], "step_a_ratio": [np.nan, np.nan, 0.5, 20.0],
                           "step_L": [np.nan, 0.01, 0.01, 0.02], "step_L_ratio": [np.nan, np.nan, 1.0, 2.0],
                           "step_path": [np.nan, 0.1, 0.05, 0.5], "step_path_ratio": [np.nan, np.nan, 0.5, 6.7],
                           "destabilized": [False, False, False, True],
                           "reason": ["", "first step: no earlier step to compare with", "",
                                      "a profile step 0.3 is 20.0x the run's typical healthy step 0.015 (threshold 4x); "
                                      "path length step 0.5 is 6.7x the run's typical healthy step 0.075 (threshold 4x)"],
                           "method_rule": [False, False, True, False],
                           "method_reason": ["", "", "terminal L rose 0.02 above its lowest", ""]})
    pairs = tuple(_pair(traces[0], tr, k) for k, tr in enumerate(traces[1:]))
    return Comparison(pairs, series, {"reference": "base", "n_boot": 200, "weights": {"align": 1.0},
                                      "ramp_onset": "dpo-step100", "jump_factor": 4.0})


@pytest.fixture(scope="module")
def report(tmp_path_factory, traces, comparison) -> Path:
    return write_report(traces, comparison, tmp_path_factory.mktemp("report"))


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR" and data[-8:-4] == b"IEND", f"{path.name} is truncated"
    return struct.unpack(">II", data[16:24])


def test_every_plot_is_a_sensible_png(report):
    pngs = sorted((report.parent / "plots").glob("*.png"))
    names = {p.name for p in pngs}
    assert {"depth.png", "deltas.png", "curve.png", "series.png"} <= names
    assert names - {"depth.png", "deltas.png", "curve.png", "series.png"} == {"spectra_layer6.png",
                                                                             "spectra_layer12.png"}
    for p in pngs:
        w, h = _png_size(p)
        assert 500 <= w <= 1600 and 350 <= h <= 1200, (p.name, w, h)


def test_images_are_embedded_and_nothing_is_fetched(report):
    doc = report.read_text(encoding="utf-8")
    srcs = re.findall(r"<img\b[^>]*\bsrc=\"([^\"]*)\"", doc)
    assert len(srcs) == len(re.findall(r"<img\b", doc)) == len(list((report.parent / "plots").glob("*.png")))
    on_disk = {p.read_bytes() for p in (report.parent / "plots").glob("*.png")}
    for s in srcs:
        assert s.startswith("data:image/png;base64,")
        assert base64.b64decode(s.split(",", 1)[1]) in on_disk
    assert "http://" not in doc and "https://" not in doc
    refs = re.findall(r"""\b(?:src|href)\s*=\s*["']?([^"'\s>]+)""", doc)
    assert all(r.startswith(("data:", "#")) for r in refs), refs
    assert "<link" not in doc and "@import" not in doc and "url(" not in doc


def test_summary_numbers_definitions_and_note(report, comparison):
    doc = report.read_text(encoding="utf-8")
    assert OPERATIONAL in html.unescape(doc)
    assert "0.247 ± 0.036" in doc  # Δ_align ± SE
    assert "0.812 → 0.846" in doc and "0.612" in doc and "0.442" in doc and "0.579" in doc
    for k in range(3):
        assert f"<td>{SUMMARY['spinal_score'] + k:.3f}</td>" in doc
    assert "<td>layer 9</td><td>none</td>" in doc  # onset a = layer 9, no onset for L
    assert "9–12" in doc  # terminal layers
    for text in DEFINITIONS.values():
        assert html.escape(text) in doc
    assert "How to read this" in doc
    assert "First checkpoint whose terminal a gain exceeds the null spread: <b>dpo-step100</b>" in doc


def test_metadata_is_escaped_and_statuses_highlighted(report):
    doc = report.read_text(encoding="utf-8")
    assert "dpo<final>" not in doc and "dpo&lt;final&gt;&amp;co $v1$" in doc
    assert doc.count('class="txt st-few">too-few-ranks') == 2 * 4  # status and status_raw, per trace
    assert doc.count('class="txt st-bad">poor-fit') == 2 * 4
    assert doc.count('class="txt st-bad">unknown') == 2 * 4
    assert "org/model-3" in doc and "LlamaForCausalLM" in doc and "40960" in doc
    assert "&quot;n_boot&quot;: 200" in doc  # the options used


def test_significant_cells_and_destabilization_flagged(report):
    doc = report.read_text(encoding="utf-8")
    # layers 10–12 have Holm p < 0.05 in both quantities (and |Δ| above the null where the synthetic Δ is large)
    sig_rows = re.findall(r"<tr class=term><td>(\d+)</td><td>yes</td><td class=\"sig\">", doc)
    assert sorted(set(map(int, sig_rows))) == [10, 11, 12]
    assert re.search(r"<tr><td>\d+</td><td></td><td class=\"sig\">", doc) is None  # none outside them
    assert doc.count("DESTABILIZED") == 1 and "20.0x the run&#x27;s typical healthy step 0.015" in doc
    assert "flagged: terminal L rose 0.02 above its lowest" in doc  # the METHOD wording, beside the flag
    assert "<td class=flag>20.0</td>" in doc and "<td class=flag>6.7</td>" in doc and "ratio exceeds 4 and" in doc
    assert "<td>2.0</td>" in doc and "<td class=flag>2.0</td>" not in doc  # 2 is under the threshold of 4


def test_report_without_comparison(tmp_path, traces):
    path = write_report(traces[:1], None, tmp_path)
    names = {p.name for p in (tmp_path / "plots").glob("*.png")}
    assert names == {"depth.png", "curve.png", "spectra_layer6.png", "spectra_layer12.png"}
    doc = path.read_text(encoding="utf-8")
    assert "Summary per pair" not in doc and "Per-layer traces" in doc


def test_report_from_the_real_compare(tmp_path, traces):
    """compare()'s output feeds the report as is (spectra dropped to keep the test fast)."""
    bare = [Trace(t.table, t.meta, t.boot, t.seq_L, {}) for t in traces]
    comp = compare(bare, CompareConfig(n_boot=40, null_splits=4))
    doc = write_report(bare, comp, tmp_path).read_text(encoding="utf-8")
    assert {p.name for p in (tmp_path / "plots").glob("*.png")} == {"depth.png", "deltas.png", "curve.png",
                                                                    "series.png"}
    for p in comp.pairs:
        assert f"{p.summary['delta_align']:.3f} ± {p.summary['delta_align_se']:.3f}" in doc
    assert doc.count("<img ") == 4 and html.escape(OPERATIONAL) in doc


def test_fit_line_recovers_an_exact_power_law():
    sv = np.concatenate([[500.0], 3.0 * np.arange(1, 200, dtype=float) ** -1.4])  # one spike, bulk 3·k^-1.4
    k, fitted = fit_line(sv, 1.4, 10, 90, spikes=1)
    assert np.allclose(fitted, sv[9:90], rtol=1e-12) and k[0] == 10 and k[-1] == 90


_DRAW_EVERY_PLOT = """
import pickle, sys
from pathlib import Path
from spinal.analyze.report import comparison_plots, trace_plots
from spinal.analyze.report.figures import fit_line
traces, comparison = pickle.loads(Path(sys.argv[1]).read_bytes())
out = Path(sys.argv[2])
trace_plots.plot_depth(traces, out / "depth.png")
trace_plots.plot_curve(traces, out / "curve.png")
trace_plots.plot_spectra(traces, 5, out / "spectra.png")
comparison_plots.plot_deltas(comparison, out / "deltas.png")
comparison_plots.plot_series(comparison, out / "series.png")
print("pyplot imported:", "matplotlib.pyplot" in sys.modules)
"""


def test_plots_leave_no_pyplot_state(tmp_path, traces, comparison):
    """Every plot draws on a standalone Figure: in a fresh interpreter (this one's imports do not count), drawing
    them all never imports pyplot, so there is no global figure registry or backend for them to leave behind."""
    import pickle
    import sys

    (tmp_path / "inputs.pkl").write_bytes(pickle.dumps((traces, comparison)))
    r = subprocess.run([sys.executable, "-c", _DRAW_EVERY_PLOT, str(tmp_path / "inputs.pkl"), str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(list(tmp_path.glob("*.png"))) == 5
    assert r.stdout.strip() == "pyplot imported: False"


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    """Run headless Chromium offline with a fresh profile; fail (or skip on SPINAL_SKIP_BROWSER=1) without it."""
    if not os.path.exists(CHROMIUM):
        if os.environ.get("SPINAL_SKIP_BROWSER") == "1":
            pytest.skip("SPINAL_SKIP_BROWSER=1: headless browser check skipped")
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (`apt-get install -y chromium`; CI does), "
                    "or set SPINAL_SKIP_BROWSER=1 to skip this check")
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=5000"]
    run = subprocess.run(flags + args, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    return run


def _body_tag(dom: str) -> str:
    body = re.search(r"<body[^>]*>", dom)
    assert body, dom[:500]
    return body.group(0)


def test_chromium_renders_every_image(report, tmp_path):
    n_img = len(re.findall(r"<img\b", report.read_text(encoding="utf-8")))
    url = report.resolve().as_uri()
    body = _body_tag(_chromium(["--dump-dom", url], tmp_path / "profile-dom").stdout)
    assert 'data-images-broken="0"' in body and f'data-images-ok="{n_img}"' in body, body
    shot = tmp_path / "screenshot.png"
    _chromium([f"--screenshot={shot}", "--window-size=1280,2400", url], tmp_path / "profile-shot")
    assert _png_size(shot) == (1280, 2400)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / "report.png")


def test_chromium_flags_a_broken_image(report, tmp_path):
    doc = report.read_text(encoding="utf-8")
    broken = re.sub(r"data:image/png;base64,[^\"]+", "data:image/png;base64,iVBORw0KGgoAAAA", doc, count=1)
    page = tmp_path / "broken.html"
    page.write_text(broken, encoding="utf-8")
    dom = _chromium(["--dump-dom", page.as_uri()], tmp_path / "profile").stdout
    n_img = len(re.findall(r"<img\b", doc))
    body = _body_tag(dom)
    assert 'data-images-broken="1"' in body and f'data-images-ok="{n_img - 1}"' in body, body
    assert f"1 of {n_img} plot(s) failed to decode" in dom


def _many_checkpoints() -> tuple[list[Trace], Comparison]:
    """Eight checkpoints whose curves run together: the case where per-checkpoint labels used to collide."""
    trs = [_trace(i % 4) for i in range(8)]
    trs = [Trace(t.table, {**t.meta, "label": f"dpo-step{100 * i:04d}"}, t.boot, t.seq_L, t.spectra)
           for i, t in enumerate(trs)]
    pairs = tuple(_pair(trs[0], t, k) for k, t in enumerate(trs[1:]))
    pairs = tuple(PairComparison(p.ref, trs[k + 1].label, p.table, p.summary) for k, p in enumerate(pairs))
    return trs, Comparison(pairs, None, {"reference": trs[0].label})


@pytest.mark.parametrize("case", ["fixture", "eight checkpoints"])
def test_no_text_overlaps_its_neighbour_in_any_figure(case, traces, comparison):
    trs, comp = (traces, comparison) if case == "fixture" else _many_checkpoints()
    figures = {"depth": trace_plots.draw_depth(trs), "deltas": comparison_plots.draw_deltas(comp),
               "curve": trace_plots.draw_curve(trs), "spectra": trace_plots.draw_spectra(trs, 12)}
    if comp.series is not None:
        figures["series"] = comparison_plots.draw_series(comp)
    for name, fig in figures.items():
        assert overlapping_texts(fig) == [], name
        assert len(drawn_texts(fig)) >= 8, name  # tick labels and titles were seen at all


def test_the_overlap_check_sees_text_on_text():
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 3))
    ax = fig.subplots()
    ax.text(0.5, 0.5, "ℓ=11 dpo-step0075")
    ax.text(0.52, 0.5, "ℓ=11 dpo-step0200")
    assert ("ℓ=11 dpo-step0075", "ℓ=11 dpo-step0200") in overlapping_texts(fig)


def test_small_multiples_keep_each_pair_on_its_own_scale(comparison):
    """An over-trained pair's large Δa must not flatten a small one: each panel spans its own data."""
    big = comparison.pairs[0].table.assign(d_a=lambda t: t["d_a"] * 40, d_a_lo=lambda t: t["d_a_lo"] * 40,
                                           d_a_hi=lambda t: t["d_a_hi"] * 40)
    comp = Comparison((PairComparison("base", "over", big, SUMMARY),) + comparison.pairs[1:], None, {})
    fig = comparison_plots.draw_deltas(comp)
    (a_big, _), (a_small, _) = fig.axes[0:2], fig.axes[2:4]
    span = lambda ax: np.diff(ax.get_ylim())[0]  # noqa: E731
    small = comparison.pairs[1].table
    assert span(a_small) < 3 * (small["d_a_hi"].max() - min(small["d_a_lo"].min(), 0) + 0.05)
    assert span(a_big) > 10 * span(a_small)


READER = """<script>
window.addEventListener('load', function () {
  var boxes = [], id = 0, n;
  var walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while ((n = walker.nextNode())) {
    if (!n.textContent.trim()) continue;
    var el = n.parentElement, d = el.closest('details');
    if (d && !d.open && !el.closest('summary')) continue;  // folded: not on screen
    var r = document.createRange(); r.selectNodeContents(n); id++;
    var rs = r.getClientRects();
    for (var i = 0; i < rs.length; i++) {
      var b = rs[i];
      if (b.width > 0 && b.height > 0) boxes.push([b.left, b.top + scrollY, b.right, b.bottom + scrollY, id,
                                                   n.textContent.trim().slice(0, 50)]);
    }
  }
  Array.prototype.forEach.call(document.images, function (img) {
    var b = img.getBoundingClientRect(); id++;
    boxes.push([b.left, b.top + scrollY, b.right, b.bottom + scrollY, id, 'image ' + img.alt]);
  });
  boxes.sort(function (a, b) { return a[1] - b[1]; });
  var hits = [];
  for (var i = 0; i < boxes.length; i++) {
    for (var j = i + 1; j < boxes.length && boxes[j][1] < boxes[i][3]; j++) {
      var a = boxes[i], c = boxes[j];
      if (a[4] === c[4]) continue;
      var w = Math.min(a[2], c[2]) - Math.max(a[0], c[0]), h = Math.min(a[3], c[3]) - Math.max(a[1], c[1]);
      if (w > 1 && h > 1) hits.push(a[5] + ' | ' + c[5]);
    }
  }
  var v = document.getElementById('verdict').getBoundingClientRect();
  var fig = document.images[0].getBoundingClientRect();
  var opts = document.getElementById('options');
  document.body.setAttribute('data-reader', JSON.stringify({
    overlaps: hits.slice(0, 20), n_boxes: boxes.length, verdict_top: v.top, verdict_bottom: v.bottom,
    viewport: [innerWidth, innerHeight], first_figure_top: fig.top, options_open: opts.open,
    options_top: opts.getBoundingClientRect().top, page_width: document.documentElement.scrollWidth}));
});
</script>"""


def test_a_reader_sees_the_verdict_first_and_no_text_on_text(report, tmp_path):
    """What a person checks on opening the report at 1280×1000: the verdict fills the first screen, no raw JSON
    comes before the figures, nothing is drawn over anything else, the page does not scroll sideways."""
    import json

    doc = report.read_text(encoding="utf-8")
    before_figures = html.unescape(re.sub(r"<[^>]+>", " ", doc.split("<img", 1)[0].split("<body", 1)[1]))
    assert '{"' not in before_figures and "{'" not in before_figures, "raw JSON before the figures"
    assert doc.index('id="verdict"') < doc.index("<img") < doc.index("id=options")
    page = tmp_path / "reader.html"
    page.write_text(doc.replace("</body>", READER + "</body>"), encoding="utf-8")
    dom = _chromium(["--window-size=1280,1000", "--dump-dom", page.as_uri()], tmp_path / "profile").stdout
    attr = re.search(r'data-reader="([^"]*)"', _body_tag(dom))
    assert attr, _body_tag(dom)
    seen = json.loads(html.unescape(attr.group(1)))
    width, height = seen["viewport"]
    assert seen["n_boxes"] > 500  # the check saw the page's text
    assert seen["overlaps"] == [], seen["overlaps"]
    assert 0 <= seen["verdict_top"] < 200 and seen["verdict_bottom"] <= height, seen  # above the fold, whole
    assert seen["first_figure_top"] > seen["verdict_bottom"]
    assert seen["options_open"] is False and seen["options_top"] > seen["first_figure_top"]
    assert seen["page_width"] <= width, "the page scrolls sideways"
    shot = tmp_path / "first-screen.png"
    _chromium([f"--screenshot={shot}", "--window-size=1280,1000", report.resolve().as_uri()], tmp_path / "p2")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, ARTIFACTS / "report-first-screen.png")


def test_the_reader_check_sees_overlapping_text(report, tmp_path):
    """The same check on a page with one heading pushed over the verdict reports it."""
    import json

    doc = report.read_text(encoding="utf-8").replace(
        '<section id="verdict">', '<section id="verdict"><h3 style="position:absolute;top:130px;left:40px">'
        'an intruding heading</h3>', 1)
    page = tmp_path / "overlap.html"
    page.write_text(doc.replace("</body>", READER + "</body>"), encoding="utf-8")
    dom = _chromium(["--window-size=1280,1000", "--dump-dom", page.as_uri()], tmp_path / "profile").stdout
    seen = json.loads(html.unescape(re.search(r'data-reader="([^"]*)"', _body_tag(dom)).group(1)))
    assert any("an intruding heading" in o for o in seen["overlaps"]), seen["overlaps"]


def test_a_long_series_is_titled_by_its_ends_and_count(tmp_path):
    many = [_trace(i % len(LABELS)) for i in range(6)]
    many = [Trace(t.table, {**t.meta, "label": f"ckpt-{k}"}, t.boot, t.seq_L, t.spectra) for k, t in enumerate(many)]
    doc = write_report(many, None, tmp_path / "r").read_text(encoding="utf-8")
    assert "<h1>SPINAL depth audit: ckpt-0, ckpt-1 … ckpt-5 (6 checkpoints)</h1>" in doc
    few = write_report(many[:3], None, tmp_path / "f").read_text(encoding="utf-8")
    assert "<h1>SPINAL depth audit: ckpt-0, ckpt-1, ckpt-2</h1>" in few
