"""Write docs/results/replies.md's table from two finished runs of configs/replies.toml: did DPO change how the
model represents the replies it was trained to prefer, and the ones it was trained against?

    .venv/bin/spinal run configs/replies.toml --overwrite
    .venv/bin/spinal run configs/replies.toml --overwrite --set capture.reply=rejected --out out/replies-rejected
    .venv/bin/python -m reference.replies_summary       # updates docs/results/replies.md

Every number in the block comes from out/replies-chosen and out/replies-rejected; nothing is typed by hand.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from spinal.analyze.compare.aggregates import steps_into

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- replies:results -->", "<!-- /replies:results -->"
DOC = ROOT / "docs" / "results" / "replies.md"


def side_row(out: Path, side: str) -> tuple[str, dict]:
    """One table row for a run's only pair, and its numbers."""
    doc = json.loads((out / "compare" / "compare.json").read_text())
    (p,) = doc["pairs"]
    t = pd.read_parquet(out / "compare" / "compare.parquet")
    T = t["terminal"].to_numpy()  # as the demo's table: Δa at the terminal layers, ΔL of the steps into them
    n = {"d_a": t["d_a"].to_numpy()[T].mean(), "d_L": t["d_L"].to_numpy()[steps_into(T)].mean(), "sig_a": int((t["p_a_holm"] < 0.05).sum()),
         "sig_L": int((t["p_L_holm"] < 0.05).sum()), "layers": len(t), **p}
    row = (f"| {side} | `{p['other']}` vs `{p['ref']}` | {n['d_a']:+.3f} | {n['d_L']:+.3f} | "
           f"{p['terminal_share_a']:.2f} | {n['sig_a']} / {n['sig_L']} of {n['layers']} | "
           f"{p['delta_align']:+.3f} ± {p['delta_align_se']:.3f} | "
           f"{100 * p['shifted_share']:.1f}% [{100 * p['shifted_share_lo']:.1f}%, {100 * p['shifted_share_hi']:.1f}%] | "
           f"{p['kl_final_mean']:.3f} [{p['kl_final_lo']:.3f}, {p['kl_final_hi']:.3f}] |")
    return row, n


def summarize(chosen: Path, rejected: Path) -> str:
    rc, c = side_row(chosen, "chosen")
    rr, r = side_row(rejected, "rejected")
    meta = json.loads((chosen / "traces" / c["ref"] / "trace.json").read_text())
    meta_r = json.loads((rejected / "traces" / r["ref"] / "trace.json").read_text())
    more = "rejected" if r["kl_final_lo"] > c["kl_final_hi"] else "chosen" if c["kl_final_lo"] > r["kl_final_hi"] else None
    kl = (f"DPO moved the final next-token distributions more on the **{more}** replies: mean final KL "
          f"{(r if more == 'rejected' else c)['kl_final_mean']:.3f} against {(c if more == 'rejected' else r)['kl_final_mean']:.3f} "
          "nats, with intervals that do not overlap." if more else
          "The final-layer KL on the two sides has overlapping intervals: no difference at this size.")
    return "\n".join([
        f"`{c['other']}` against `{c['ref']}` on the reference family's 512 held-out pairs "
        f"(`reference/data/heldout_pairs.jsonl`, read as TRL rows): {meta['n_tokens']:,} chosen-reply tokens and "
        f"{meta_r['n_tokens']:,} rejected-reply tokens; terminal window as in the demo.",
        "",
        "| reply | pair | terminal Δa | terminal ΔL | share of \\|Δa\\| in terminal window | Holm-significant layers "
        "(a / L) | Δ_align ± SE | shifted tokens [95 %] | mean final KL, nats [95 %] |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|",
        rc, rr, "", kl,
    ])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chosen", type=Path, default=ROOT / "out" / "replies-chosen")
    ap.add_argument("--rejected", type=Path, default=ROOT / "out" / "replies-rejected")
    args = ap.parse_args(argv)
    block = summarize(args.chosen, args.rejected)
    text = DOC.read_text(encoding="utf-8")
    head, rest = text.split(START, 1)
    DOC.write_text(head + START + "\n" + block + "\n" + rest[rest.index(END):], encoding="utf-8")
    print(block)


if __name__ == "__main__":
    main()
