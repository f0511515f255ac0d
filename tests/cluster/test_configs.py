"""Every shipped config in configs/ loads and validates (paths aside: the cluster example names a shared FS)."""

from __future__ import annotations

from pathlib import Path

import pytest

from spinal.config import load_run_config

ALL = sorted((Path(__file__).parents[2] / "configs").glob("*.toml"))
MONITORS = [p for p in ALL if p.read_text().lstrip("# \n").count("[monitor]")]  # monitor configs (spinal watch)
CONFIGS = [p for p in ALL if p not in MONITORS]  # run configs (spinal run)


def test_configs_exist():
    names = {c.name for c in CONFIGS}
    assert {"demo.toml", "llama70b-cluster.toml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_and_builds_every_stage(path):
    cfg = load_run_config(str(path))
    assert len(cfg.checkpoints) >= 2
    for ck in cfg.checkpoints:
        c = cfg.capture_config(ck, out="x.zarr")
        assert c.model == ck.path
    cfg.analyze_config("x.zarr", "t")
    cl = cfg.cluster_config()
    if path.name == "llama70b-cluster.toml":
        assert cl.replicas == 8 and cl.gpus_per_replica == 2 and cl.uses_ray


def test_demo_points_at_the_shipped_reference_family():
    cfg = load_run_config(str(Path(__file__).parents[2] / "configs" / "demo.toml"))
    for ck in cfg.checkpoints:
        assert (Path(ck.path) / "model.safetensors").exists(), ck.path
    assert Path(cfg.prompts).exists()


def test_the_series_monitor_config_audits_with_the_offline_series_options():
    """configs/series-monitor.toml loads as a monitor config, and its capture, analysis and series options are
    configs/series.toml's, so its in-run flags can be set beside the offline audit's (the worker count aside)."""
    from dataclasses import asdict

    from spinal.monitor.config import load_monitor_config

    assert [p.name for p in MONITORS] == ["series-monitor.toml"]
    mon = load_monitor_config(str(MONITORS[0]))
    run = load_run_config(str(MONITORS[0].with_name("series.toml")))
    assert Path(mon.prompts) == Path(run.prompts)
    keep = lambda d, skip: {k: v for k, v in d.items() if k not in skip}
    assert keep(asdict(mon.capture), {"model", "prompts", "out"}) == keep(asdict(run.capture), {"model", "prompts", "out"})
    assert keep(asdict(mon.analyze), {"store", "out", "workers"}) == keep(asdict(run.analyze), {"store", "out", "workers"})
    assert mon.compare.jump_factor == run.compare.jump_factor and mon.compare.n_boot == run.compare.n_boot
