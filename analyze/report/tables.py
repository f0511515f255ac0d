"""The report's HTML tables: one checkpoint's layers, one pair's paired statistics, the summary and the series."""

from __future__ import annotations

import html
import math

import numpy as np
import pandas as pd

from spinal.analyze.compare.comparison import LEVEL, Comparison, counts
from spinal.analyze.compare.stability import NOISE_Z, jumped
from spinal.analyze.trace_format import Trace
from spinal.analyze.report.verdict import onset_text


OPERATIONAL = "operational definition — the paper's exact formula is not public"


CONTRACTION_COLUMNS = ["layer", "a", "a_lo", "a_hi", "a_mle", "r2", "ks", "k_lo", "k_hi", "rank", "spikes",
                       "floor_rank", "top1_share", "status", "curvature", "curvature_lo", "curvature_hi", "a_raw",
                       "status_raw", "null_sd_a"]


MEASURE_COLUMNS = ["layer", "alpha_req", "alpha_req_lo", "alpha_req_hi", "erank", "erank_lo", "erank_hi", "rankme",
                   "rankme_lo", "rankme_hi"]  # the field's measures (trace format ≥ 5)


TRANSPORT_COLUMNS = ["layer", "L_mean", "L_q05", "L_q25", "L_q50", "L_q75", "L_q95", "hellinger", "js", "entropy",
                     "kl_final"]


def esc(x) -> str:
    return html.escape(str(x), quote=True)


def num(x, digits: int = 3) -> str:
    """A number for a table cell: '—' for missing, integers plainly, tiny or huge values in e-notation."""
    if x is None or isinstance(x, str):
        return "—" if x is None else esc(x)
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    x = float(x)
    if math.isnan(x):
        return "—"
    if x.is_integer() and abs(x) < 1e6 and digits == 0:
        return str(int(x))
    if x != 0 and (abs(x) < 10 ** -digits or abs(x) >= 1e5):
        return f"{x:.2e}"
    return f"{x:.{digits}f}"


def status_class(s) -> str:
    if s == "ok":
        return "st-ok"
    return "st-few" if s == "too-few-ranks" else "st-bad"


def trace_table(tr: Trace) -> str:
    """Tables side by side (they wrap on narrow screens): contraction per layer, transport per step, and the
    field's spectrum measures where the trace has them (trace format ≥ 5)."""
    measures = ("erank" in tr.table.columns) and layer_table(
        tr.table, MEASURE_COLUMNS, "the field's measures: α-ReQ α = 2a, effective rank, RankMe (95 % CI)")
    return ('<div class="pair">' + layer_table(tr.table, CONTRACTION_COLUMNS, "contraction (a per layer ℓ)")
            + layer_table(tr.table, TRANSPORT_COLUMNS, "transport (step ℓ→ℓ+1) and lens companions")
            + (measures or "") + "</div>")


def layer_table(table: pd.DataFrame, columns: list[str], caption: str) -> str:
    cols = [c for c in columns if c in table.columns]
    ints = {"layer", "k_lo", "k_hi", "rank", "spikes", "floor_rank"}
    head = "".join(f"<th>{esc(c)}</th>" for c in cols)
    body = []
    for _, r in table.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            if c in ("status", "status_raw"):
                s = v if isinstance(v, str) else "unknown"
                cells.append(f'<td class="txt {status_class(s)}">{esc(s)}</td>')
            else:
                cells.append(f"<td>{num(v, 0 if c in ints else 3)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="scroll"><table><caption>{esc(caption)}</caption><tr>{head}</tr>{"".join(body)}'
            "</table></div>")


SIG = ' class="sig"'


def pair_table(p) -> str:
    t = p.table
    cross = "fr_total" in t.columns  # cross-readout lens columns, when the stores were at hand
    field = [(c, name) for c, name in (("cka", "CKA"), ("d_erank", "Δ eff. rank"), ("d_rankme", "Δ RankMe"))
             if c in t.columns and t[c].notna().any()]  # the field's measures, where computed
    head = ("<tr><th>layer</th><th>terminal</th><th>Δa [95% CI]</th><th>Holm p (a)</th><th>null a</th>"
            "<th>loc a</th><th>ΔL [95% CI]</th><th>Holm p (L)</th><th>null L</th><th>loc L</th>"
            + ("<th>FR total</th><th>FR representation</th><th>FR readout</th>" if cross else "")
            + "".join(f"<th>{name} [95% CI]</th>" for _, name in field) + "</tr>")
    rows = []
    count = {q: counts(t, q) for q in ("a", "L")}  # the onset rule: significant and above the null
    for i, (_, r) in enumerate(t.iterrows()):
        term = bool(r["terminal"])
        cells = [f"<td>{num(r['layer'], 0)}</td>", f"<td>{'yes' if term else ''}</td>"]
        for q in ("a", "L"):
            holm = r[f"p_{q}_holm"] < LEVEL
            cells += [f"<td{SIG if count[q][i] else ''}>{num(r[f'd_{q}'])} [{num(r[f'd_{q}_lo'])}, "
                      f"{num(r[f'd_{q}_hi'])}]</td>",
                      f"<td{SIG if holm else ''}>{num(r[f'p_{q}_holm'])}</td>", f"<td>{num(r[f'null_{q}'])}</td>",
                      f"<td>{num(r[f'loc_{q}'])}</td>"]
        if cross:
            cells += [f"<td>{num(r[c])}</td>" for c in ("fr_total", "fr_representation", "fr_readout")]
        for c, _ in field:
            sig = c != "cka" and r.get(f"p_{c[2:]}_holm", 1.0) < LEVEL
            cells.append(f"<td{SIG if sig else ''}>{num(r[c])} [{num(r[f'{c}_lo'])}, {num(r[f'{c}_hi'])}]</td>")
        rows.append(f'<tr{" class=term" if term else ""}>' + "".join(cells) + "</tr>")
    return f'<div class="scroll"><table>{head}{"".join(rows)}</table></div>'


def summary_table(comparison: Comparison) -> str:
    head = ("<tr><th class=txt>other − ref</th><th>onset a</th><th>onset L</th><th>terminal share a</th>"
            "<th>terminal share L</th><th>terminal Δa − ΔL (Δ_align) ± SE †</th>"
            "<th>terminal smoothness (coherence) ref → other †</th><th>Δsmoothness †</th>"
            "<th>gradient concentration †</th><th>size of the terminal change, z (SPINALScore) †</th><th class=txt>terminal layers</th></tr>")
    rows = []
    for p in comparison.pairs:
        s = p.summary
        term = s.get("terminal_layers") or []
        rows.append(
            f"<tr><td class=txt>{esc(p.other)} − {esc(p.ref)}</td><td>{onset_text(s.get('onset_a'), 'a')}</td>"
            f"<td>{onset_text(s.get('onset_L'), 'L')}</td><td>{num(s.get('terminal_share_a'))}</td>"
            f"<td>{num(s.get('terminal_share_L'))}</td>"
            f"<td>{num(s.get('delta_align'))} ± {num(s.get('delta_align_se'))}</td>"
            f"<td>{num(s.get('coherence_ref'))} → {num(s.get('coherence_other'))}</td>"
            f"<td>{num(s.get('d_coherence'))}</td><td>{num(s.get('grad_concentration'))}</td>"
            f"<td>{num(s.get('spinal_score'))}</td>"
            f"<td class=txt>{esc(f'{min(term)}–{max(term)}') if term else '—'}</td></tr>")
    return (f'<div class="scroll"><table>{head}{"".join(rows)}</table></div>'
            f'<p class="note">† {esc(OPERATIONAL)} (docs/method.md §4); see Definitions. SPINALScore measures how far '
            "the terminal window moved in units of its noise, not how well a checkpoint is aligned: a collapsed "
            "model moves most and scores highest.</p>")


SERIES_COLUMNS = {  # column -> header, in the order shown; anything else compare adds follows, not dropped
    "terminal_a_gain": "terminal a gain", "terminal_L_change": "terminal L change",
    "step_a": "a-profile step", "step_a_ratio": "× typical", "step_L": "L-profile step",
    "step_L_ratio": "× typical", "step_path": "path-length step", "step_path_ratio": "× typical",
    "coherence": "terminal smoothness",
}
SERIES_HIDDEN = {"label", "destabilized", "reason", "method_rule", "method_reason", "step_a_se", "step_L_se",
                 "step_path_se"}


def series_table(s: pd.DataFrame, factor: float | None = None) -> str:
    shown = [c for c in SERIES_COLUMNS if c in s.columns]
    extra = [c for c in s.columns if c not in SERIES_COLUMNS and c not in SERIES_HIDDEN]
    head = ("<tr><th class=txt>checkpoint</th>" + "".join(f"<th>{esc(SERIES_COLUMNS[c])}</th>" for c in shown)
            + "".join(f"<th>{esc(c)}</th>" for c in extra)
            + "<th>destabilized</th><th class=txt>reason</th><th class=txt>METHOD §4 wording</th></tr>")
    rows = []
    for _, r in s.iterrows():
        bad = bool(r.get("destabilized")) if pd.notna(r.get("destabilized")) else False
        reason = r.get("reason") if isinstance(r.get("reason"), str) else ""
        method = r.get("method_rule")
        method_txt = ("—" if method is None or pd.isna(method) else
                      f"flagged: {r.get('method_reason')}" if bool(method) else "not flagged")
        flagging = {f"step_{c}_ratio" for c in jumped(r.to_dict())}
        cells = []
        for c in shown + extra:
            over = c in flagging
            ratio = c.endswith("_ratio") and pd.notna(r[c]) and math.isfinite(r[c])
            cells.append(f"<td{' class=flag' if over else ''}>{f'{r[c]:.1f}' if ratio else num(r[c])}</td>")
        rows.append(f"<tr><td class=txt>{esc(r['label'])}</td>" + "".join(cells)
                    + f"<td{' class=flag' if bad else ''}>{'DESTABILIZED' if bad else 'no'}</td>"
                    f"<td class=txt>{esc(reason)}</td><td class=txt>{esc(method_txt)}</td></tr>")
    note = (f'<p class="note">Steps: each checkpoint against the one before it (RMS change of the a profile over '
            f"layers, of the L profile over steps, and the change of path length Σ L); × typical: the step over the "
            f"median of the same step among the earlier unflagged checkpoints. Flagged when a ratio exceeds "
            f"{f'{factor:g}' if factor is not None else 'jump_factor'} and the step is beyond {NOISE_Z:g} standard "
            "errors (docs/results/destabilization.md); highlighted: the ratios that flagged it. The METHOD §4 wording is "
            "shown for comparison; on the known answers it flags healthy steps and misses the family's collapse.</p>")
    return f'<div class="scroll"><table>{head}{"".join(rows)}</table></div>{note}'
