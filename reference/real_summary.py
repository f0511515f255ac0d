"""The ground truth of the SmolLM2 LoRA-DPO checkpoints beside what SPINAL's audit of them measured, as markdown.

    .venv/bin/spinal run configs/smollm2-dpo.toml --overwrite
    .venv/bin/python -m reference.real_summary            # prints the table
    .venv/bin/python -m reference.real_summary --update-docs   # and writes it into docs/results/smollm2.md

Ground truth comes from reference/smollm2/eval.json, the audit's figures from the run's output folder
(out/smollm2-dpo); nothing is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from reference.demo_summary import positions_block
from spinal.analyze.compare.stability import FACTOR, flag_text

ROOT = Path(__file__).resolve().parent.parent
EVAL = ROOT / "reference" / "smollm2" / "eval.json"
START, END = "<!-- smollm2:results -->", "<!-- /smollm2:results -->"
DOC = ROOT / "docs" / "results" / "smollm2.md"  # the block's page; its figure is linked from there


def truth(path: Path = EVAL) -> dict[str, dict]:
    return {c["name"]: c for c in json.loads(path.read_text())["checkpoints"]}


def peak_layer(cmp: pd.DataFrame, other: str) -> int:
    """The layer whose |Δa| against the reference is largest."""
    t = cmp[cmp["other"] == other]
    return int(t["layer"].to_numpy()[np.nanargmax(np.abs(t["d_a"].to_numpy()))])


def _f(x, fmt: str) -> str:
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, fmt)


def summarize(out: Path, eval_json: Path = EVAL) -> str:
    doc = json.loads((out / "compare" / "compare.json").read_text())
    cmp = pd.read_parquet(out / "compare" / "compare.parquet")
    gt = truth(eval_json)
    ref, term = doc["reference"], doc["terminal_layers"]
    series = {r["label"]: r for r in doc["series"] or []}
    pairs = {p["other"]: p for p in doc["pairs"]}
    traces = {lab: json.loads((out / "traces" / lab / "trace.json").read_text()) for lab in doc["labels"]}
    entropy = {lab: pd.read_parquet(out / "traces" / lab / "trace.parquet")["entropy"].iloc[-1] for lab in doc["labels"]}
    uniform = len(term) / (doc["n_blocks"] + 1)
    lines = [
        f"Reference `{ref}` (DPO's reference: the base without adapter); terminal window: layers {term[0]}–{term[-1]} "
        f"of {doc['n_blocks']} blocks; {traces[ref]['n_tokens']:,} reply tokens (the base's own replies) of "
        f"{traces[ref]['n_sequences']} held-out audit prompts. Ground truth from `reference/smollm2/EVAL.md`.",
        "",
        "| checkpoint | refusal (harmful) | refusal (benign) | distinct (benign) | base-reply NLL | reward acc | "
        "terminal Δa | terminal ΔL | share of \\|Δa\\| in terminal window | peak \\|Δa\\| layer | terminal Δa − ΔL ± SE | "
        "path length Σ L | final-layer entropy | flagged destabilized |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for lab in doc["labels"]:
        g, s, p = gt.get(lab, {}), series.get(lab, {}), pairs.get(lab)
        truth_cells = (f"{_f(g.get('refusal_harmful'), '.2f')} | {_f(g.get('refusal_benign'), '.2f')} | "
                       f"{_f(g.get('distinct_benign'), '.3f')} | {_f(g.get('base_reply_nll_benign'), '.3f')} | "
                       f"{_f(g.get('reward_accuracy'), '.2f')}")
        if p is None:  # the reference itself
            audit = f"– | – | – | – | – | {traces[lab]['path_length']:.3f} | {entropy[lab]:.2f} | –"
        else:
            flag = flag_text(s, doc.get("jump_factor") or FACTOR)
            audit = (f"{_f(s.get('terminal_a_gain'), '+.3f')} | {_f(s.get('terminal_L_change'), '+.3f')} | "
                     f"{p['terminal_share_a']:.2f} (uniform: {uniform:.2f}) | {peak_layer(cmp, lab)} | "
                     f"{p['delta_align']:+.3f} ± {p['delta_align_se']:.3f} | {traces[lab]['path_length']:.3f} | "
                     f"{entropy[lab]:.2f} | {flag}")
        lines.append(f"| `{lab}` | {truth_cells} | {audit} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "smollm2-dpo")
    ap.add_argument("--update-docs", action="store_true",
                    help="also write the table into docs/results/smollm2.md between its markers")
    args = ap.parse_args(argv)
    block = summarize(args.out)
    doc = json.loads((args.out / "compare" / "compare.json").read_text())
    block += "\n" + "\n".join(positions_block(args.out, doc, "../../reference/figures/smollm2-positions.png"))
    plot = args.out / "report" / "plots" / "positions.png"
    if args.update_docs and plot.exists():
        shutil.copy(plot, ROOT / "reference" / "figures" / "smollm2-positions.png")
    if args.update_docs:
        head, rest = DOC.read_text().split(START, 1)
        _, tail = rest.split(END, 1)
        DOC.write_text(f"{head}{START}\n{block}\n{END}{tail}")
    print(block)


if __name__ == "__main__":
    main()
