"""A self-contained HTML report of depth traces and their comparison: inline CSS, base64 PNGs, no requests."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

from spinal.analyze.report.comparison_plots import plot_deltas, plot_positions, plot_series
from spinal.analyze.compare.comparison import DEFINITIONS, Comparison
from spinal.analyze.compare.pairing import distinct_labels
from spinal.analyze.report.trace_plots import plot_curve, plot_depth, plot_spectra
from spinal.analyze.report.tables import esc, num, pair_table, series_table, summary_table, trace_table
from spinal.analyze.trace_format import Trace
from spinal.analyze.report.verdict import Verdict, verdicts
from spinal.errors import InputError
from spinal.outputs import atomic_folder, check_output

TRACE_DEFINITIONS = {
    "a, a_lo, a_hi": "rank-decay exponent a (σ_k ∝ k^-a) of the centered hidden states, weighted LS over the fit "
    "window, with its 95% block-bootstrap CI over sequences; α-ReQ = 2a, WeightWatcher α = 1 + 1/(2a)",
    "a_mle, r2, ks": "cross-checks: Clauset-style MLE of a, weighted R² of the log-log fit, KS distance",
    "k_lo, k_hi, rank, spikes, floor_rank": "fit window, numerical rank, leading spikes excluded, "
    "storage noise-floor rank",
    "status": "ok / curved (a good fit, but the window's two halves have different slopes: a is an average over a "
    "bend) / poor-fit (low R² or MLE disagrees) / too-few-ranks (window too short): read a as one exponent only "
    "where ok",
    "curvature, curvature_lo, curvature_hi": "a over the upper half of the fit window minus a over its lower half "
    "(split at the geometric middle), with its 95% block-bootstrap interval; 0 for a straight power law",
    "a_raw, status_raw": "the same fit on the uncentered spectrum",
    "L_mean, L_q05…L_q95": "Fisher–Rao step L_ℓ = 2 arccos BC(p_ℓ, p_ℓ₊₁) of the logit-lens "
    "distributions, mean and quantiles over tokens, radians in [0, π]; blank on the last layer",
    "entropy, kl_final, hellinger, js": "lens entropy (nats), KL to the last layer, Hellinger and "
    "Jensen–Shannon of the step",
}
HOW_TO_READ = (
    "Each checkpoint is a depth trace: per layer ℓ, the rank-decay exponent a (how fast the singular values of the "
    "hidden states fall off; higher = contraction into fewer directions) and the Fisher–Rao step L (how far the "
    "logit-lens prediction moves to the next layer). SPINAL's claim is that alignment shows as a late-layer rise of a "
    "and a smaller L in the terminal window. Read a as one exponent only where its fit status is 'ok' (other rows are "
    "highlighted; 'curved' means the spectrum bends inside the fit window, so a there is an average slope); "
    "a layer's change counts when its Holm-adjusted p is below 0.05 and it exceeds the null spread (highlighted "
    "cells), since the null spread is the noise between two halves of the same checkpoint. The aggregates "
    "(terminal Δa − ΔL, called Δ_align in METHOD; terminal smoothness, called coherence; gradient concentration; "
    "SPINALScore) are this project's operational definitions, named for what they measure: none of them ranks "
    "checkpoints by how well aligned they are, and SPINALScore is how far the terminal window moved in noise units. "
    "In a training series, a checkpoint is flagged destabilized when its step from the one before is several times "
    "the run's typical healthy step."
)
CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px auto;max-width:1240px;
 color:#222;padding:0 16px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:19px;border-bottom:2px solid #ddd;padding-bottom:3px;margin-top:32px}
h3{font-size:15px;margin:18px 0 6px}.muted{color:#666}
table{border-collapse:collapse;margin:6px 0 12px;font-size:12.5px}
th,td{border:1px solid #d6d6d6;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#f1f3f5;white-space:normal;vertical-align:bottom}td.txt,th.txt{text-align:left;white-space:normal}
.st-ok{color:#1e7b34}.st-bad{background:#fff1cc;color:#8a5a00;font-weight:600}
.st-few{background:#fde2e1;color:#a4271c;font-weight:600}tr.term td{border-bottom-color:#f4a340}
tr.term td:first-child{box-shadow:inset 4px 0 #f4a340}.sig{background:#d7f0dc;font-weight:700}
.flag{background:#fde2e1;color:#a4271c;font-weight:700}.note{font-size:12.5px;color:#7a4b00;background:#fff8e6;
 border-left:4px solid #f4a340;padding:5px 9px;margin:4px 0 10px}
figure{margin:10px 0 22px}figure img{max-width:100%;border:1px solid #e3e3e3}
figcaption{font-size:12.5px;color:#555}.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(540px,1fr));
 gap:8px}#banner{display:none;background:#a4271c;color:#fff;padding:8px 12px;font-weight:700}
dl dt{font-weight:700;margin-top:6px}dl dd{margin:0 0 0 18px}details{margin:6px 0}summary{cursor:pointer}
.scroll{overflow-x:auto}.pair{display:flex;flex-wrap:wrap;gap:0 18px;align-items:flex-start}
caption{text-align:left;font-size:12.5px;color:#555;padding:2px 0}td.st-bad,td.st-few,td.st-ok{white-space:nowrap}
#verdict{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:10px;margin:10px 0 6px}
.card{border:1px solid #d6d6d6;border-left:5px solid #1f77b4;border-radius:3px;padding:7px 11px;font-size:13px;
 line-height:1.4}.card.flagged{border-left-color:#a4271c}.card h3{margin:0 0 2px;font-size:14px}
.card .headline{font-weight:600;margin:0 0 4px}.card ul{margin:0;padding-left:17px}.card li{margin:1px 0}
.card .topic{color:#555;font-weight:600}.card .caveat{color:#7a4b00;background:#fff8e6;margin:4px 0 0;
 padding:2px 6px}.card details{margin:3px 0 0;color:#444}.lede{margin:2px 0 0}
"""
SCRIPT = """
window.addEventListener('load', function () {
  var ok = 0, broken = 0;
  Array.prototype.forEach.call(document.images, function (img) {
    if (img.complete && img.naturalWidth === 0) { broken++; } else { ok++; }
  });
  document.body.setAttribute('data-images-ok', String(ok));
  document.body.setAttribute('data-images-broken', String(broken));
  if (broken) {
    var b = document.getElementById('banner');
    b.textContent = broken + ' of ' + (ok + broken) + ' plot(s) failed to decode: regenerate the report.';
    b.style.display = 'block';
  }
});
"""


def _img(path: Path, alt: str, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{esc(alt)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def _checkpoints(traces: list[Trace]) -> str:
    keys = ["model", "architecture", "n_tokens", "n_sequences", "lens_tokens", "path_length", "straightness",
            "tokens_sha256", "created"]
    head = "<tr><th class=txt>checkpoint</th>" + "".join(f"<th class=txt>{esc(k)}</th>" for k in keys) + "</tr>"
    rows = []
    for tr in traces:
        cells = []
        for k in keys:
            v = tr.meta.get(k)
            if k == "tokens_sha256" and isinstance(v, str):
                v = v[:12] + "…"
            cells.append(f"<td class=txt>{num(v) if isinstance(v, float) else esc('—' if v is None else v)}</td>")
        rows.append(f"<tr><td class=txt><b>{esc(tr.label)}</b></td>{''.join(cells)}</tr>")
    return f'<div class="scroll"><table>{head}{"".join(rows)}</table></div>'


def _options(traces: list[Trace], comparison: Comparison | None) -> str:
    """The settings behind the numbers, shown once when every checkpoint agrees, else per checkpoint."""
    settings = []
    for k in ("options", "window_rule", "fit", "alpha_name", "positions"):
        vals = [json.dumps(tr.meta.get(k), sort_keys=True, default=str, ensure_ascii=False) for tr in traces]
        if all(tr.meta.get(k) is None for tr in traces):
            continue
        if len(set(vals)) == 1:
            settings.append(f"<dt>{esc(k)}</dt><dd><code>{esc(_plain(traces[0].meta.get(k)))}</code></dd>")
        else:
            settings += [f"<dt>{esc(k)} ({esc(tr.label)})</dt><dd><code>{esc(_plain(tr.meta.get(k)))}</code></dd>"
                         for tr in traces]
    if comparison is not None and comparison.meta:
        settings.append(f"<dt>comparison settings</dt><dd><code>{esc(_plain(comparison.meta))}</code></dd>")
    return f'<dl>{"".join(settings)}</dl>'


def _lede(traces: list[Trace], comparison: Comparison | None) -> str:
    ref = traces[0]
    n_tok, n_seq = ref.meta.get("n_tokens"), ref.meta.get("n_sequences")
    tokens = f"{n_tok:,} tokens of {n_seq:,} sequences" if isinstance(n_tok, int) and isinstance(n_seq, int) else ""
    if comparison is None or not comparison.pairs:
        return f"{len(traces)} checkpoint(s){'; ' + tokens if tokens else ''}."
    term = comparison.pairs[0].summary.get("terminal_layers") or []
    window = f"layers {min(term)}–{max(term)}" if term else "none"
    n_blocks = comparison.meta.get("n_blocks")
    stream = ("on the same token stream" if all(p.summary.get("pairing", "token") == "token" for p in comparison.pairs)
              else "paired by prompt where the tokens differ (below)")
    return (f"Each checkpoint against <b>{esc(comparison.pairs[0].ref)}</b> {stream}"
            f"{' (' + esc(tokens) + ')' if tokens else ''}; terminal window {esc(window)}"
            f"{f' of {n_blocks} blocks' if n_blocks else ''}. A change counts where its Holm-adjusted p &lt; 0.05 "
            "<i>and</i> it exceeds the split-half noise of the reference.")


def _notes(comparison: Comparison | None) -> str:
    """What the comparison paired and mixed, said where a reader starts: pairing by prompt (and what it skipped,
    and the token-count caveat), options mixed with --allow-mixed."""
    if comparison is None:
        return ""
    notes = []
    for p in comparison.pairs:
        s = p.summary
        if s.get("pairing") == "prompt":
            skipped = "; ".join(f"{k.replace('_', '-')} {why}" for k, why in (s.get("skipped") or {}).items())
            notes.append(f"{p.other} − {p.ref} is paired by prompt, not by token: the same prompts in the same order "
                         "with different tokens (e.g. chosen against rejected replies). Δa's interval resamples the "
                         "same prompt blocks on both sides; ΔL is the mean over prompts of each prompt's difference. "
                         f"{skipped}. {s.get('token_count_caveat') or ''}".strip())
    for m in comparison.meta.get("mixed") or []:
        notes.append(f"{m['other']} − {m['ref']} mixes {m['what']}: {m['ref']} {m['values'][0]}, {m['other']} "
                     f"{m['values'][1]} (--allow-mixed): part of every Δ may be that difference, not the checkpoints'.")
    return "".join(f'<p class="note">{esc(n)}</p>' for n in notes)


def _verdict(vs: list[Verdict]) -> str:
    """One card per checkpoint: the headline, one sentence per question, the fit caveat, secondary numbers folded."""
    cards = []
    for v in vs:
        pts = "".join(f"<li><span class=topic>{esc(k)}:</span> {esc(s)}</li>" for k, s in v.points)
        cav = f'<p class="caveat"><b>fit caveat:</b> {esc(v.caveat)}</p>' if v.caveat else ""
        more = ("<details><summary>more numbers</summary><ul>"
                + "".join(f"<li><span class=topic>{esc(k)}:</span> {esc(s)}</li>" for k, s in v.more)
                + "</ul></details>") if v.more else ""
        cards.append(f'<div class="card{" flagged" if v.flagged else ""}"><h3>{esc(v.title)}</h3>'
                     f'<p class="headline">{esc(v.headline)}</p><ul>{pts}</ul>{cav}{more}</div>')
    return f'<section id="verdict">{"".join(cards)}</section>'


def _plain(v) -> str:
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str, ensure_ascii=False)


def _figures(traces: list[Trace], comparison: Comparison | None, plot_dir: Path) -> tuple[str, str]:
    """Draw every PNG into ``plot_dir``; return (main figures HTML, series figure HTML)."""
    out = []
    if comparison is not None and comparison.pairs:
        out.append(_img(plot_deltas(comparison, plot_dir / "deltas.png"), "per-layer differences",
                        "Δa and ΔL per layer, one row per checkpoint, each panel on its own scale; bars: paired 95% "
                        "bootstrap CIs; filled: the change counts (Holm p < 0.05 and beyond the ± null spread, "
                        "grey); orange: terminal window."))
    if comparison is not None and comparison.positions is not None and not comparison.positions.empty:
        out.append(_img(plot_positions(comparison, plot_dir / "positions.png"), "where in the reply",
                        "Share of reply positions where the checkpoint's most likely token lies outside the "
                        "reference's top 3, by position, with 95% bootstrap intervals over sequences; right: per "
                        "layer and position, how far the two checkpoints' lens predictions are apart."))
    out.append(_img(plot_depth(traces, plot_dir / "depth.png"), "depth trace",
                    "a_ℓ with its 95% bootstrap CI and mean L_ℓ with its q25–q75 band; "
                    "hollow markers: fit status not ok."))
    out.append(_img(plot_curve(traces, plot_dir / "curve.png"), "depth trajectory",
                    "The (L, a) trajectory of each checkpoint; colour = layer, arrows point deeper."))
    layers = [int(x) for x in traces[0].table["layer"] if int(x) in traces[0].spectra]
    spec = []
    for layer in sorted({layers[len(layers) // 2], layers[-1]}) if layers else []:
        p = plot_spectra(traces, layer, plot_dir / f"spectra_layer{layer}.png")
        spec.append(_img(p, f"spectra at layer {layer}", f"Layer {layer}: every checkpoint's spectrum and fit."))
    if spec:
        out.append(f"<h3>Spectra (middle and last layer)</h3>{''.join(spec)}")
    series = ""
    if comparison is not None and comparison.series is not None and not comparison.series.empty:
        series = _img(plot_series(comparison, plot_dir / "series.png"), "checkpoint series",
                      "Each checkpoint's step from the one before, as a multiple of the run's typical healthy "
                      "step (dashed: the threshold), and the terminal gains against the reference; red X: "
                      "flagged destabilized.")
    return "".join(out), series


def write_report(traces: list[Trace], comparison: Comparison | None, out_dir: str | Path,
                 overwrite: bool = False) -> Path:
    """Write ``out_dir/plots/*.png`` and the self-contained ``out_dir/report.html`` whole or not at all
    (no stale plots survive a rewrite); return the HTML's path."""
    traces = distinct_labels(list(traces))  # one checkpoint's two reply sides, as the comparison names them
    if not traces:
        raise InputError("no traces to report on; pass at least one trace folder")
    final = Path(out_dir)
    check_output(final, "report", overwrite)
    if comparison is not None:
        comparison.check_traces(traces, "report --compare")
    identity = {"traces": [t.identity for t in traces],
                "comparison": None if comparison is None else comparison.meta.get("traces")}
    with atomic_folder(final, "report", identity) as tmp:
        _write(traces, comparison, tmp)
    return final / "report.html"


def _write(traces: list[Trace], comparison: Comparison | None, out_dir: Path) -> None:
    plot_dir = out_dir / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    figs, series_fig = _figures(traces, comparison, plot_dir)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    has_pairs = comparison is not None and bool(comparison.pairs)
    labels = [t.label for t in traces]
    title = (", ".join(labels) if len(labels) <= 5 else  # a long series: its ends, the count between them
             f"{labels[0]}, {labels[1]} … {labels[-1]} ({len(labels)} checkpoints)")
    parts = [f"<h1>SPINAL depth audit: {esc(title)}</h1>"
             f"<p class=lede>{_lede(traces, comparison)} <span class=muted>Generated {esc(when)}.</span></p>"
             f"{_notes(comparison)}",
             _verdict(verdicts(traces, comparison)),
             f"<details><summary>How to read this report</summary><p>{esc(HOW_TO_READ)}</p></details>",
             f"<h2>Figures</h2>{figs}"]
    if has_pairs:
        parts.append(f"<h2>Summary per pair</h2>{summary_table(comparison)}")
    if series_fig:
        ramp = comparison.meta.get("ramp_onset")
        onset = (f"<p>First checkpoint whose terminal a gain exceeds the null spread: "
                 f"<b>{esc(ramp if ramp is not None else 'none')}</b></p>")
        parts.append(f"<h2>Training series</h2>{onset}{series_fig}{series_table(comparison.series, comparison.meta.get('jump_factor'))}")
    if has_pairs:
        parts.append("<h2>Per-layer comparison</h2><p class=muted>Highlighted: Holm-adjusted p &lt; 0.05 "
                     "(p cell), and also |Δ| above the null spread (Δ cell: the change counts). "
                     "Marked rows: terminal window. ΔL at layer ℓ is the step ℓ→ℓ+1.</p>")
        parts += [f"<h3>{esc(p.other)} − {esc(p.ref)}</h3>{pair_table(p)}" for p in comparison.pairs]
    parts.append("<h2>Per-layer traces</h2><p class=muted>Fit status: "
                 "<span class=st-ok>ok</span>, <span class=st-bad>curved</span> (a is an average slope over a "
                 "bend), <span class=st-bad>poor-fit</span>, "
                 "<span class=st-few>too-few-ranks</span>.</p>")
    parts += [f"<h3>{esc(tr.label)}</h3>{trace_table(tr)}" for tr in traces]
    defs = {**DEFINITIONS, **TRACE_DEFINITIONS}
    parts.append("<h2>Definitions</h2><dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in defs.items())
                 + "</dl>")
    parts.append(f"<h2>Appendix: checkpoints and options</h2>{_checkpoints(traces)}"
                 f"<details id=options><summary>Options used (as recorded in the traces and the comparison)"
                 f"</summary>{_options(traces, comparison)}</details>")
    doc = ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>SPINAL report</title>'
           f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style>'
           f'<script>{SCRIPT}</script></head><body><div id="banner"></div>{"".join(parts)}</body></html>')
    (out_dir / "report.html").write_text(doc, encoding="utf-8")
