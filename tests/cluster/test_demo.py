"""The demo config end to end on the shipped reference family (fewer prompts), checked against known ground truth."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest

from spinal.cluster.run import run
from spinal.config import load_run_config

ROOT = Path(__file__).parents[2]


@pytest.mark.slow
def test_demo_on_96_prompts_finds_what_dpo_did_and_reports_it(tmp_path):
    cfg = load_run_config(str(ROOT / "configs" / "demo.toml"))
    lines = Path(cfg.prompts).read_text().splitlines()[:96]
    (tmp_path / "audit96.jsonl").write_text("\n".join(lines) + "\n")
    keep = [c for c in cfg.checkpoints if c.label in ("sft", "dpo-step0075", "dpo-step0200", "dpo-overtrained")]
    small = dataclasses.replace(cfg, prompts=str(tmp_path / "audit96.jsonl"), out=str(tmp_path / "demo"),
                                checkpoints=tuple(keep), analyze=dataclasses.replace(cfg.analyze, n_boot=100),
                                compare=dataclasses.replace(cfg.compare, n_boot=300))
    summary = run(small)
    out = Path(summary.out)
    doc = json.loads((out / "compare" / "compare.json").read_text())
    cmp = pd.read_parquet(out / "compare" / "compare.parquet")
    assert doc["reference"] == "sft" and doc["terminal_layers"] == [9, 10, 11, 12]  # 12 blocks → 0.7·12 … 12
    over = cmp[cmp["other"] == "dpo-overtrained"]
    # ground truth: the over-trained run collapsed (reference/EVAL.md); its a rises far beyond noise at every block
    assert (over["d_a"].iloc[1:] > 0.2).all() and (over["p_a_holm"].iloc[1:] < 0.05).all()
    assert (over["d_a"].abs() > over["null_a"]).iloc[1:].all()
    dpo = cmp[cmp["other"] == "dpo-step0200"]
    assert dpo["d_a"].abs().max() < 0.2  # DPO at β = 0.1 moves a by far less
    pair = next(p for p in doc["pairs"] if p["other"] == "dpo-step0200")
    assert pair["grad_concentration"] is not None and 0 < pair["grad_concentration"] < 1
    assert {"fr_total", "fr_representation", "fr_readout"} <= set(cmp.columns)
    html = (out / "report" / "report.html").read_text()
    for label in ("sft", "dpo-step0075", "dpo-step0200", "dpo-overtrained"):
        assert label in html
    from spinal.analyze.report.tables import num

    assert f"{num(pair['delta_align'])} ± {num(pair['delta_align_se'])}" in html  # the summary row's own numbers
    assert "operational definition" in html and html.count("data:image/png;base64,") >= 4
    # the destabilization rule (analyze/compare/stability.py): healthy DPO settles, the over-trained run jumps
    series = pd.DataFrame(doc["series"]).set_index("label")
    assert series["destabilized"].tolist() == [False, False, False, True]
    assert series.loc["dpo-overtrained", "step_a_ratio"] > 20 and series.loc["dpo-step0200", "step_a_ratio"] < 2
    assert "DESTABILIZED" in html
    tr = json.loads((out / "traces" / "sft" / "trace.json").read_text())
    assert tr["options"]["lens_tokens"] == 12288 and tr["positions"] == "response"
