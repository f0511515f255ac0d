"""The public API (`import spinal`): every declared name resolves, importing it stays light, and each verb returns
what the command line writes."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
from typer.testing import CliRunner

import spinal
from conftest import write_jsonl
from spinal.cli.app import app


def test_every_declared_name_resolves_and_nothing_else_does():
    for name in spinal.__all__:
        assert getattr(spinal, name) is not None, name
    assert set(spinal.__all__) <= set(dir(spinal))
    with pytest.raises(AttributeError, match="no attribute 'captur'"):
        spinal.captur  # noqa: B018  a typo is named, not imported


def test_import_spinal_loads_neither_torch_nor_zarr():
    code = "import sys, spinal; print(sorted(m for m in ('torch', 'zarr', 'transformers') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def two_stores(tmp_path_factory, checkpoint):
    d = tmp_path_factory.mktemp("api")
    rows = [{"id": f"q{i}", "prompt": f"Request {i}: please explain item {i * 7 % 13} kindly."} for i in range(24)]
    p = write_jsonl(d / "p.jsonl", rows)
    stores = []
    for name, seed in (("base", 0), ("tuned", 1)):
        s = str(d / f"{name}.zarr")
        res = spinal.capture(spinal.CaptureConfig(model=str(checkpoint("llama", seed=seed)), prompts=str(p), out=s,
                                                  unit_tokens=256))
        assert isinstance(res, spinal.CaptureResult) and res.tokens > 0
        stores.append(s)
    return d, stores


def test_the_stage_packages_are_the_stage_verbs(two_stores, tmp_path):
    """`spinal.capture` is both the package and the verb; `spinal.analyze(cfg)` is `spinal.analyze.trace.analyze`."""
    from spinal.analyze.trace import analyze as analyze_fn
    from spinal.capture import capture as capture_fn

    import spinal.capture.runner  # noqa: F401  a submodule import keeps the package callable
    assert callable(spinal.capture) and spinal.capture.capture is capture_fn
    d, (base, _) = two_stores
    cfg = spinal.AnalyzeConfig(store=base, out=str(tmp_path / "t"), n_boot=20, workers=1)
    a, b = spinal.analyze(cfg, label="base"), analyze_fn(cfg, label="base")
    assert isinstance(a, spinal.Trace) and a.table.equals(b.table)
    assert spinal.Store.open(base).complete


def test_compare_and_report_are_what_the_command_line_writes(two_stores, tmp_path):
    d, stores = two_stores
    folders = []
    for s, label in zip(stores, ("base", "tuned")):
        t = spinal.analyze(spinal.AnalyzeConfig(store=s, out=str(tmp_path / label), n_boot=20, workers=1), label=label)
        folders.append(str(t.save(tmp_path / label)))
    ours = spinal.compare(folders, stores=stores, n_boot=40, null_splits=2, cross_readout_tokens=64,
                          position_tokens=64)
    assert isinstance(ours, spinal.Comparison) and [p.other for p in ours.pairs] == ["tuned"]
    ours.save(tmp_path / "api-cmp")
    r = CliRunner().invoke(app, ["compare", *folders, "--out", str(tmp_path / "cli-cmp"),
                                 *[a for s in stores for a in ("--stores", s)],
                                 "--n-boot", "40", "--null-splits", "2", "--cross-tokens", "64",
                                 "--position-tokens", "64"])
    assert r.exit_code == 0, r.output
    assert sorted(f.name for f in (tmp_path / "api-cmp").iterdir()) == sorted(
        f.name for f in (tmp_path / "cli-cmp").iterdir())
    for name in ("compare.csv", "positions.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "api-cmp" / name), pd.read_csv(tmp_path / "cli-cmp" / name))
    with pytest.raises(TypeError, match="either cfg or options"):
        spinal.compare(folders, spinal.CompareConfig(), n_boot=3)
    html = spinal.report(folders, tmp_path / "api-cmp", tmp_path / "rep")
    assert html.name == "report.html" and "tuned" in html.read_text()
