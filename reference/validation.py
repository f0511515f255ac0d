"""The signals against the known answers: every checkpoint of the three runs, ground truth beside each signal.

    .venv/bin/spinal run configs/demo.toml --overwrite          # the reference family     -> out/demo
    .venv/bin/spinal run configs/series.toml --overwrite        # the dense series         -> out/series/audit
    .venv/bin/spinal run configs/smollm2-dpo.toml --overwrite   # the real model (optional) -> out/smollm2-dpo
    .venv/bin/python -m reference.validation --update-docs      # reference/validation/*.json and the docs table

Reads each run's traces and comparison; writes, per run, reference/validation/<run>.json: the steps the
destabilization rule judges (analyze/compare/stability.py), recomputed from the traces and checked against the flags
the run's own comparison wrote, with the ground truth per checkpoint from the run's evaluation. The tests judge
these files (tests/analyze/test_stability.py); --update-docs also rewrites the block between the markers in
docs/results/destabilization.md.

Ground truth "broken": the checkpoint's held-out NLL per token (plain text for the toy runs; the base model's own
replies to benign requests for SmolLM2) is at least BROKEN_NLL_RATIO times the reference's. On these runs the
healthy checkpoints stay at ≤ 1.20x and the broken ones reach ≥ 1.49x, so any cut in between labels them alike.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

from scipy.stats import spearmanr

from spinal.analyze.compare.stability import COMPONENTS, FACTOR, flag_text, judge, largest_ratio, step
from spinal.analyze.trace import Trace

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "reference"
BROKEN_NLL_RATIO = 1.3
START, END = "<!-- validation:signals -->", "<!-- /validation:signals -->"
DOC = ROOT / "docs" / "results" / "destabilization.md"  # the block's page; its figure is linked from there
# run name -> (audit folder, evaluation file, what "held-out NLL" is there)
RUNS = {
    "family": (ROOT / "out" / "demo", HERE / "eval.json", "text"),
    "series": (ROOT / "out" / "series" / "audit", HERE / "series" / "eval.json", "text"),
    "smollm2": (ROOT / "out" / "smollm2-dpo", HERE / "smollm2" / "eval.json", "base reply"),
}


def ground_truth(eval_file: Path) -> dict[str, dict]:
    """Per checkpoint: step, held-out NLL and its ratio to the reference's, and a measure of alignment progress."""
    doc = json.loads(eval_file.read_text())
    out = {}
    for r in doc["checkpoints"]:
        nll = r.get("text_nll_per_token", r.get("base_reply_nll_benign"))
        progress = r.get("reward_margin", r.get("refusal_harmful"))
        out[r["name"]] = {"step": r.get("step"), "nll": nll, "progress": progress, "lr": r.get("lr"),
                          "beta": r.get("beta")}
    return out


def collect(name: str, folder: Path, eval_file: Path) -> dict:
    cmp = json.loads((folder / "compare" / "compare.json").read_text())
    labels = cmp["labels"]
    traces = [Trace.load(folder / "traces" / lab) for lab in labels]
    factor = float(cmp.get("jump_factor") or FACTOR)
    steps = [step(p, c) for p, c in zip(traces[:-1], traces[1:])]
    rows = judge(steps, factor)
    series = {r["label"]: r for r in cmp["series"]}
    for lab, r in zip(labels[1:], rows):  # the run's own comparison judged the same traces the same way
        if bool(series[lab]["destabilized"]) != r["destabilized"]:
            raise SystemExit(f"{folder}: {lab} flagged {series[lab]['destabilized']} by the run, {r['destabilized']} "
                             "here: the comparison is older than its traces or this SPINAL; rerun the audit")
    truth = ground_truth(eval_file)
    ref_nll = truth[labels[0]]["nll"]
    for lab in labels:
        truth[lab]["nll_ratio"] = truth[lab]["nll"] / ref_nll
        truth[lab]["broken"] = truth[lab]["nll_ratio"] >= BROKEN_NLL_RATIO
    broken = [lab for lab in labels[1:] if truth[lab]["broken"]]
    pairs = {p["other"]: p for p in cmp["pairs"]}
    signals = {lab: {"delta_align": pairs[lab]["delta_align"], "coherence": pairs[lab]["coherence_other"],
                     "spinal_score": pairs[lab]["spinal_score"], "method_rule": bool(series[lab]["method_rule"]),
                     "terminal_L_change": series[lab]["terminal_L_change"],
                     "path_length": traces[i].meta.get("path_length")}
               for i, lab in enumerate(labels) if lab in pairs}
    return {"run": name, "audit": str(folder.relative_to(ROOT)), "factor": factor, "labels": labels,
            "reference": labels[0], "ground_truth_break": broken[0] if broken else None,
            "broken_nll_ratio": BROKEN_NLL_RATIO, "truth": {lab: truth[lab] for lab in labels},
            "steps": [{"size": s.size, "noise": s.noise} for s in steps], "judged": rows, "signals": signals,
            "trace_ids": [t.meta.get("trace_id") for t in traces]}


def _f(x, spec: str = ".3f") -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def table(runs: list[dict]) -> str:
    comp = " / ".join(COMPONENTS.values())
    out = [f"| run | checkpoint | held-out NLL (× reference) | ground truth | jump ratio: {comp} | flagged | "
           "METHOD §4 wording | terminal Δa − ΔL (Δ_align) | terminal smoothness (coherence) | path length Σ L |",
           "|---|---|---:|---|---:|---|---|---:|---:|---:|"]
    for r in runs:
        labels, truth = r["labels"], r["truth"]
        out.append(f"| {r['run']} | `{labels[0]}` (reference) | {truth[labels[0]]['nll']:.2f} | – | – | – | – | – | "
                   f"– | – |")
        for lab, j in zip(labels[1:], r["judged"]):
            t, s = truth[lab], r["signals"][lab]
            ratios = " / ".join(_f(j[f"step_{c}_ratio"], ".1f") for c in COMPONENTS)
            flag = flag_text(j, r["factor"])
            out.append(f"| {r['run']} | `{lab}` | {t['nll']:.2f} ({t['nll_ratio']:.2f}×) | "
                       f"{'**broken**' if t['broken'] else 'healthy'} | {ratios} | {flag} | "
                       f"{'yes' if s['method_rule'] else 'no'} | {_f(s['delta_align'], '+.4f')} | "
                       f"{_f(s['coherence'], '.4f')} | {_f(s['path_length'])} |")
    return "\n".join(out)


def ranking(runs: list[dict]) -> tuple[str, dict]:
    """Spearman ρ of each signal with training progress over each run's healthy checkpoints (the ground truth's
    order: reward margin for the toy runs, harmful-request refusal for SmolLM2, both rising with the step)."""
    names = {"delta_align": "terminal Δa − ΔL (Δ_align)", "coherence": "terminal smoothness (coherence)",
             "spinal_score": "size of the terminal change, z (SPINALScore)", "terminal_L_change": "terminal ΔL",
             "path_length": "path length Σ L"}
    rho: dict[str, dict[str, float]] = {k: {} for k in names}
    checked = {}
    for r in runs:
        healthy = [lab for lab in r["labels"][1:] if not r["truth"][lab]["broken"]]
        progress = [r["truth"][lab]["progress"] for lab in healthy]
        steps = [r["truth"][lab]["step"] for lab in healthy]
        checked[r["run"]] = (len(healthy), spearmanr(progress, steps).statistic)
        for k in names:
            rho[k][r["run"]] = float(spearmanr(progress, [r["signals"][lab][k] for lab in healthy]).statistic)
    head = ("| signal | " + " | ".join(f"{r['run']} ({checked[r['run']][0]} healthy)" for r in runs) + " |\n"
            "|---|" + "---:|" * len(runs))
    lines = [head] + [f"| {names[k]} | " + " | ".join(_f(rho[k][r['run']], '+.2f') for r in runs) + " |"
                      for k in names]
    return "\n".join(lines), {"rho": rho, "progress_vs_step": checked}


def block(runs: list[dict]) -> str:
    rank, info = ranking(runs)
    audits = ", ".join(f"`{r['audit']}`" for r in runs)
    parts = [f"Generated by `python -m reference.validation` from the audits {audits} "
             f"(destabilization threshold {runs[0]['factor']:g}× the run's typical healthy step; ground truth broken: "
             f"held-out NLL ≥ {BROKEN_NLL_RATIO:g}× the reference's).", "", table(runs), ""]
    for r in runs:
        flagged = [lab for lab, j in zip(r["labels"][1:], r["judged"]) if j["destabilized"]]
        method = [lab for lab in r["labels"][1:] if r["signals"][lab]["method_rule"]]
        healthy = [largest_ratio(j) for lab, j in zip(r["labels"][1:], r["judged"]) if not r["truth"][lab]["broken"]]
        healthy_ratio = max((x for x in healthy if x is not None), default=math.nan)
        first = r["ground_truth_break"]
        at_break = (largest_ratio(r["judged"][r["labels"].index(first) - 1]) if first else None) or math.nan
        parts.append(f"- **{r['run']}**: ground truth breaks at {('`' + first + '`') if first else 'no checkpoint'}; "
                     f"the rule flags {', '.join(f'`{x}`' for x in flagged) or 'nothing'} (largest jump ratio of a "
                     f"healthy checkpoint {_f(healthy_ratio, '.1f')}, at the break {_f(at_break, '.1f')}); the "
                     f"METHOD §4 wording flags {', '.join(f'`{x}`' for x in method) or 'nothing'}.")
    if any(r["run"] == "series" for r in runs):
        parts += ["", "![the dense series: each save's step against the run's typical healthy step, and the terminal "
                  "gains](../../reference/figures/validation-series.png)"]
    parts += ["", "Spearman ρ of each aggregate with alignment progress over the healthy checkpoints (progress: the "
              "reward margin for the toy runs, the refusal rate on harmful requests for SmolLM2; ±1 ranks them as "
              "the ground truth does, the sign says which way):", "", rank]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--update-docs", action="store_true",
                    help="also rewrite the block between the markers in docs/results/destabilization.md")
    args = ap.parse_args(argv)
    runs = []
    for name, (folder, eval_file, _) in RUNS.items():
        if not (folder / "compare" / "compare.json").exists():
            print(f"{name}: no audit at {folder} (run its config first); left out")
            continue
        r = collect(name, folder, eval_file)
        (HERE / "validation").mkdir(exist_ok=True)
        (HERE / "validation" / f"{name}.json").write_text(json.dumps(r, indent=1, default=float) + "\n")
        runs.append(r)
        print(f"{name}: {len(r['labels'])} checkpoints, first flag "
              f"{next((lab for lab, j in zip(r['labels'][1:], r['judged']) if j['destabilized']), None)}, "
              f"ground truth break {r['ground_truth_break']}")
    if not runs:
        raise SystemExit("no audits found")
    fig = RUNS["series"][0] / "report" / "plots" / "series.png"
    if args.update_docs and fig.exists():
        shutil.copy(fig, HERE / "figures" / "validation-series.png")
    text = block(runs)
    print(text)
    if args.update_docs:
        s = DOC.read_text()
        if START not in s:
            raise SystemExit(f"{DOC.relative_to(ROOT)} has no {START} … {END} block")
        i, j = s.index(START) + len(START), s.index(END)
        DOC.write_text(s[:i] + "\n" + text + "\n" + s[j:])


if __name__ == "__main__":
    main()
