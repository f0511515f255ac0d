"""`spinal compare` refuses traces whose capture storage dtype, positions rule or lens options differ, in one line
naming both values, unless --allow-mixed (a CompareConfig field: flag, TOML key and run.json entry); with it the
comparison records the mix and the report says so."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from conftest import write_jsonl
from spinal.analyze.compare.paired import compare
from spinal.analyze.trace import analyze
from spinal.capture import capture
from spinal.cli.app import app
from spinal.config import AnalyzeConfig, CaptureConfig, CompareConfig
from spinal.errors import InputError


@pytest.fixture(scope="module")
def dtypes(tmp_path_factory, checkpoint):
    """The same tiny checkpoint captured once in float32 and once in bfloat16 (as the README's two captures
    would), each analyzed with the same options."""
    d = tmp_path_factory.mktemp("mixed")
    p = write_jsonl(d / "p.jsonl", [{"id": f"q{i}", "prompt": f"Request {i}: explain item {i * 7 % 13}."}
                                    for i in range(32)])
    out = {"dir": d}
    for dtype in ("float32", "bfloat16"):
        store = str(d / f"{dtype}.zarr")
        capture(CaptureConfig(model=str(checkpoint("llama")), prompts=str(p), out=store, dtype=dtype, unit_tokens=256))
        out[dtype] = analyze(AnalyzeConfig(store=store, out=str(d / dtype), n_boot=60, workers=1,
                                                  calibration_sims=16), label=dtype)
        out[dtype].save(d / dtype)
    return out


def test_float32_against_bfloat16_of_the_same_weights_is_refused_in_one_line_naming_both(dtypes, tmp_path):
    d = dtypes["dir"]
    assert dtypes["float32"].meta["tokens_sha256"] == dtypes["bfloat16"].meta["tokens_sha256"]
    r = CliRunner().invoke(app, ["compare", str(d / "float32"), str(d / "bfloat16"), "-o", str(tmp_path / "c")])
    assert r.exit_code == 2, r.output
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and line.startswith("error:")
    assert "capture storage dtype: float32 float32, bfloat16 bfloat16" in line and "--allow-mixed" in line
    assert not (tmp_path / "c").exists()


def test_allow_mixed_compares_records_the_mix_and_the_report_says_so(dtypes, tmp_path):
    d = dtypes["dir"]
    r = CliRunner().invoke(app, ["compare", str(d / "float32"), str(d / "bfloat16"), "-o", str(tmp_path / "c"),
                                 "--allow-mixed", "--n-boot", "50"])
    assert r.exit_code == 0, r.output
    assert "mixed (--allow-mixed): capture storage dtype float32 (float32) and bfloat16 (bfloat16)" in r.stderr
    doc = json.loads((tmp_path / "c" / "compare.json").read_text())
    assert doc["mixed"] == [{"option": "storage_dtype", "what": "capture storage dtype", "ref": "float32",
                             "other": "bfloat16", "values": ["float32", "bfloat16"]}]
    r = CliRunner().invoke(app, ["report", str(d / "float32"), str(d / "bfloat16"), "--compare", str(tmp_path / "c"),
                                 "-o", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    assert ("bfloat16 − float32 mixes capture storage dtype: float32 float32, bfloat16 bfloat16 (--allow-mixed)"
            in (tmp_path / "r" / "report.html").read_text())


def test_positions_and_lens_options_are_mixes_too_and_an_older_trace_is_named(dtypes):
    a, b = dtypes["float32"], dtypes["bfloat16"]
    b = replace(b, meta={**b.meta, "storage_dtype": "float32"})
    assert compare([a, b], CompareConfig(n_boot=20)).meta["mixed"] == []
    for key, value, name in (("companion_tokens", 512, "lens option companion_tokens"),
                             ("lens_precision", 0.05, "lens option lens_precision")):
        other = replace(b, meta={**b.meta, "options": {**b.meta["options"], key: value}})
        was = a.meta["options"][key]
        with pytest.raises(InputError, match=f"differ in {name}: float32 {was}, bfloat16 {value};"):
            compare([a, other])
    rule = replace(b, meta={**b.meta, "positions": "all"})
    with pytest.raises(InputError, match=f"differ in positions rule: float32 {a.meta['positions']}, bfloat16 all;"):
        compare([a, rule])
    old = replace(b, meta={k: v for k, v in b.meta.items() if k != "storage_dtype"})  # made before it was recorded
    with pytest.raises(InputError, match="capture storage dtype: float32 float32, bfloat16 bfloat16;"):
        compare([a, old])  # read from its store, still there
    gone = replace(old, meta={**old.meta, "store": str(dtypes["dir"] / "moved.zarr")})
    with pytest.raises(InputError, match="bfloat16's trace does not record its capture storage dtype .* re-analyze"):
        compare([a, gone])


def test_the_flag_exists_once_in_help_toml_and_run_json(tmp_path, checkpoint):
    from spinal.config import load_run_config

    r = CliRunner().invoke(app, ["compare", "--help"], env={"COLUMNS": "200"})
    assert "--allow-mixed" in r.output and "--pairing" in r.output
    f = tmp_path / "run.toml"
    f.write_text(f'[run]\nout = "o"\nprompts = "p.jsonl"\n[[checkpoints]]\nlabel = "a"\npath = "{checkpoint("llama")}"\n'
                 '[compare]\nallow_mixed = true\npairing = "token"\n')
    cfg = load_run_config(str(f))
    assert (cfg.compare.allow_mixed, cfg.compare.pairing) == (True, "token")
    assert cfg.record()["compare"]["allow_mixed"] is True and cfg.record()["compare"]["pairing"] == "token"
    with pytest.raises(InputError, match="pairing='sides'; choose auto, token or prompt"):
        CompareConfig(pairing="sides")
