"""Every shipped config in configs/ loads and validates (paths aside: the cluster example names a shared FS)."""

from __future__ import annotations

from pathlib import Path

import pytest

from spinal.config import load_run_config

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.toml"))


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
