"""Write the demo's results (table, verdicts, figures) into docs/results/demo.md from a finished demo run.

    .venv/bin/spinal run configs/demo.toml --overwrite
    .venv/bin/python -m reference.demo_summary          # updates docs/results/demo.md and reference/figures/

Every number and every yes/no in the docs block comes from out/demo; nothing is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from spinal.analyze.compare.stability import FACTOR, flag_text
from spinal.analyze.report.verdict import onset_text

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- demo:results -->", "<!-- /demo:results -->"
DOC = ROOT / "docs" / "results" / "demo.md"  # the block's page; its figures are linked from there


def summarize(out: Path) -> str:
    doc = json.loads((out / "compare" / "compare.json").read_text())
    cmp = pd.read_parquet(out / "compare" / "compare.parquet")
    term = doc["terminal_layers"]
    series = {r["label"]: r for r in doc["series"] or []}
    traces = {lab: json.loads((out / "traces" / lab / "trace.json").read_text()) for lab in doc["labels"]}
    tables = {lab: pd.read_parquet(out / "traces" / lab / "trace.parquet") for lab in doc["labels"]}
    ref = doc["reference"]
    n_blocks = doc["n_blocks"]
    uniform = len(term) / (n_blocks + 1)
    lines = [
        f"Reference `{ref}` (DPO's own reference model); terminal window: layers {term[0]}–{term[-1]} of {n_blocks} "
        f"blocks (same relative depth as blocks 21–30 of 30); {traces[ref]['n_tokens']:,} response tokens of "
        f"{traces[ref]['n_sequences']} held-out audit prompts.",
        "",
        "| checkpoint | terminal Δa | terminal ΔL | share of \\|Δa\\| in terminal window | onset a / onset L | terminal Δa − ΔL "
        "(Δ_align) ± SE | path length Σ L | final-layer entropy | flagged destabilized |",
        "|---|---:|---:|---:|---|---:|---:|---:|---|",
        f"| `{ref}` | – | – | – | – | – | {traces[ref]['path_length']:.3f} | "
        f"{tables[ref]['entropy'].iloc[-1]:.2f} | – |",
    ]
    verdicts = []
    for p in doc["pairs"]:
        o = p["other"]
        s = series.get(o, {})
        flag = flag_text(s, doc.get("jump_factor") or FACTOR)
        lines.append(
            f"| `{o}` | {s.get('terminal_a_gain', np.nan):+.3f} | {s.get('terminal_L_change', np.nan):+.3f} | "
            f"{p['terminal_share_a']:.2f} (uniform: {uniform:.2f}) | {onset_text(p['onset_a'], 'a')} / "
            f"{onset_text(p['onset_L'], 'L')} | "
            f"{p['delta_align']:+.3f} ± {p['delta_align_se']:.3f} | {traces[o]['path_length']:.3f} | "
            f"{tables[o]['entropy'].iloc[-1]:.2f} | {flag} |"
        )
        t = cmp[(cmp["other"] == o)]
        T = t["terminal"].to_numpy()
        sig_a = bool(((t["p_a_holm"] < 0.05) & (t["d_a"] > 0) & (t["d_a"].abs() > t["null_a"]))[T].any())
        ramp = s.get("terminal_a_gain", 0) > 0 and p["terminal_share_a"] > uniform and sig_a
        drop = s.get("terminal_L_change", 0) < 0
        verdicts.append((o, ramp, drop))
    lines += ["", "What the audit shows at this scale (computed from the table above):", ""]
    dpo = [v for v in verdicts if "overtrained" not in v[0]]
    over = [v for v in verdicts if "overtrained" in v[0]]
    if dpo:
        ramps = [o for o, r, _ in dpo if r]
        drops = [o for o, _, d in dpo if d]
        lines.append(
            f"- **Late-layer α ramp**: {'appears' if len(ramps) == len(dpo) else 'appears in ' + str(len(ramps)) + ' of ' + str(len(dpo))} "
            f"for the DPO checkpoints ({', '.join(f'`{o}`' for o in ramps) or 'none'}): Δa is positive, Holm-significant "
            "and larger than the split-half noise in the terminal window, and the terminal window holds more than its "
            "uniform share of |Δa|.")
        lines.append(
            f"- **Reduction of L**: {'appears' if len(drops) == len(dpo) else 'does not appear' if not drops else 'appears in ' + str(len(drops)) + ' of ' + str(len(dpo))} "
            "for the DPO checkpoints: "
            + ("terminal ΔL is negative." if len(drops) == len(dpo) else
               "terminal ΔL is positive — adjacent layers' readouts move *more* after DPO here, the opposite of the "
               "paper's claim for large models."))
    healthy_flagged = [o for o, _, _ in dpo if series.get(o, {}).get("destabilized")]
    method_flagged = [o for o, _, _ in dpo if series.get(o, {}).get("method_rule")]
    lines.append(
        f"- **Destabilization flag**: SPINAL's rule (a step several times the run's typical healthy step) flags "
        f"{', '.join(f'`{o}`' for o in healthy_flagged) or 'none'} of the healthy DPO checkpoints"
        + (f"; docs/method.md §4's wording would flag {', '.join(f'`{o}`' for o in method_flagged)}, because their "
           "terminal L keeps rising through DPO (the wording expects L to fall and treats a renewed rise as "
           "instability)" if method_flagged else "")
        + ". See [Destabilization](destabilization.md) for the validation.")
    for o, _, _ in over:
        s = series.get(o, {})
        lines.append(
            f"- **Over-trained `{o}`**: a jumps at every block, not only late (terminal Δa {s.get('terminal_a_gain', 0):+.2f}), "
            f"path length falls to {traces[o]['path_length']:.2f} from {traces[ref]['path_length']:.2f}, and the "
            f"final-layer entropy rises to {tables[o]['entropy'].iloc[-1]:.2f} nats from {tables[ref]['entropy'].iloc[-1]:.2f} "
            "(its greedy replies are word salad, see reference/EVAL.md). SPINAL's rule "
            f"{'flags' if s.get('destabilized') else 'does not flag'} it"
            + (f" (its a-profile step is {s['step_a_ratio']:.0f}× the run's typical healthy step)"
               if s.get("destabilized") and np.isfinite(s.get("step_a_ratio", np.nan)) else "")
            + f"; docs/method.md §4's wording {'flags' if s.get('method_rule') else 'does not flag'} it "
            "(it looks for a *reversal* of the terminal gain or a renewed rise of L, the opposite signature).")
    lines += positions_block(out, doc)
    return "\n".join(lines)


def positions_block(out: Path, doc: dict, figure: str = "../../reference/figures/demo-positions.png") -> list[str]:
    """Where in the reply each checkpoint departs from the reference, from compare/positions.parquet."""
    path = out / "compare" / "positions.parquet"
    if not path.exists():
        return []
    prof = pd.read_parquet(path)
    ref = doc["reference"]
    lines = ["", f"Where in the reply each checkpoint departs from `{ref}` (its top token outside `{ref}`'s top 3 at "
             "the last layer; 95 % bootstrap intervals over sequences; `compare/positions.csv`):", "",
             "| checkpoint | shifted tokens | of them in the first 8 positions | position bin with the highest share | "
             "mean final KL (nats) |", "|---|---:|---:|---|---:|"]
    for p in doc["pairs"]:
        t = prof[prof["other"] == p["other"]]
        bins = t[(t["bin"] != "all") & (t["tokens"] >= 10)]
        peak = bins.loc[bins["shifted"].idxmax()]  # the same bin as peak_bin()
        lines.append(f"| `{p['other']}` | {p['shifted_share']:.1%} [{p['shifted_share_lo']:.1%}, "
                     f"{p['shifted_share_hi']:.1%}] | {p['shift_early_share']:.0%} | {peak['bin']} "
                     f"({peak['shifted']:.0%}) | {p['kl_final_mean']:.3f} |")
    dpo = [p for p in doc["pairs"] if "overtrained" not in p["other"]]
    over = [p for p in doc["pairs"] if "overtrained" in p["other"]]
    if dpo and max(p["shifted_share"] for p in dpo) < 0.01:
        top = max(dpo, key=lambda p: p["shifted_share"])
        n_tok = int(prof[(prof["other"] == top["other"]) & (prof["bin"] == "all")]["tokens"].iloc[0])
        lines += ["", f"The DPO checkpoints' top token leaves `{ref}`'s top 3 at {top['shifted_share']:.1%} of reply "
                  f"positions at most (about {round(top['shifted_share'] * n_tok)} of {n_tok:,} tokens): too few to "
                  "say where in the reply the change sits; their mean final KL "
                  f"({min(p['kl_final_mean'] for p in dpo):.3f}–{max(p['kl_final_mean'] for p in dpo):.3f} nats) is "
                  "the finer measure here."
                  + "".join(f" The over-trained `{p['other']}` shifts {p['shifted_share']:.0%} of all positions, "
                            f"{p['shift_early_share']:.0%} of them in the first 8." for p in over)]
    elif dpo:
        peaks = sorted({peak_bin(prof, p["other"]) for p in dpo})
        early = [p["shift_early_share"] for p in dpo]
        lines += ["", f"For the DPO checkpoints the shifted share peaks at reply position(s) {', '.join(peaks)}, and "
                  f"{min(early):.0%}–{max(early):.0%} of their shifted tokens fall in the first 8 positions"
                  + (": the change is sparse in positions (5–8 % is published for 7B pairs)"
                     if max(p["shifted_share"] for p in dpo) < 0.15 else "")
                  + ("" if max(early) > 0.5 else ", not concentrated at the very start of the reply") + "."
                  + "".join(f" The over-trained `{p['other']}` shifts {p['shifted_share']:.0%} of all positions."
                            for p in over)]
    lines += ["", f"![shifted tokens by position and the depth × position map]({figure})"]
    return lines


def peak_bin(prof: pd.DataFrame, other: str) -> str:
    t = prof[(prof["other"] == other) & (prof["bin"] != "all") & (prof["tokens"] >= 10)]
    return str(t.loc[t["shifted"].idxmax(), "bin"])


def screenshot(page: Path, png: Path, width: int = 1280, height: int = 1000) -> None:
    """The report's first screen as a reader sees it, by headless Chromium (Debian's `chromium`)."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={profile}", f"--window-size={width},{height}", f"--screenshot={png}",
                        page.resolve().as_uri()], check=True, capture_output=True, timeout=120)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "demo")
    args = ap.parse_args(argv)
    block = summarize(args.out)
    figs = ROOT / "reference" / "figures"
    figs.mkdir(exist_ok=True)
    for name in ("depth.png", "deltas.png", "series.png", "positions.png"):
        if (args.out / "report" / "plots" / name).exists():
            shutil.copy(args.out / "report" / "plots" / name, figs / f"demo-{name}")
    screenshot(args.out / "report" / "report.html", figs / "demo-report.png")
    text = DOC.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{START}\n{block}\n{END}{tail}")
    print(block)


if __name__ == "__main__":
    main()
