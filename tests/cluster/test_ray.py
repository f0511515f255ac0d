"""Capture on real Ray: a simulated two-node cluster, an actor killed mid-unit, a unit that keeps failing."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import ray
import zarr
from ray.cluster_utils import Cluster

from conftest import save_checkpoint, write_jsonl
from spinal.capture import capture
from spinal.cluster.actors import CaptureActor
from spinal.config import CaptureConfig, ClusterConfig
from spinal.errors import InputError, StoreError
from spinal.store.contract import Store


class DiesOnUnit(CaptureActor):
    """A replica whose process dies hard (``os._exit``, as a crashed GPU worker's would) when it starts ``unit``,
    unless ``marker`` exists: the dying actor writes it (its pid) itself just before it exits, so the fault
    happens once and the marker proves it did."""

    def __init__(self, cfg: dict, unit: int, marker: str):
        super().__init__(cfg)
        self.unit, self.marker = unit, marker

    def run_unit(self, index: int) -> dict:
        if index == self.unit and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(17)
        return super().run_unit(index)


# Ray workers cannot import this module (only pytest put its folder on sys.path): send its classes by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def two_nodes():
    """Head (1 CPU) + worker node (2 CPUs), each its own raylet."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address, log_to_driver=False, include_dashboard=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def _prompts(tmp_path, n=40):
    rows = [{"id": f"q{i}", "prompt": f"Tell me something useful about subject number {i}."} for i in range(n)]
    return write_jsonl(tmp_path / "p.jsonl", rows)


def _arrays(path):
    g = zarr.open_group(str(path), mode="r")
    return {k: np.asarray(g[k][...]) for k in ("hidden", "tokens/ids", "tokens/sequence", "units/done")}


@pytest.mark.slow
def test_killed_actor_unit_is_redone_elsewhere_and_store_equals_uninterrupted(two_nodes, checkpoint, tmp_path,
                                                                              caplog):
    from spinal.cluster.ray_capture import drive

    ckpt, p = checkpoint("llama"), _prompts(tmp_path)
    cfg = CaptureConfig(model=str(ckpt), prompts=str(p), out=str(tmp_path / "ray.zarr"), unit_tokens=64)
    nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(nodes) == 2
    marker = tmp_path / "crashed"
    replica = ray.remote(DiesOnUnit).options(num_cpus=1, max_restarts=0)
    actors = [replica.remote(cfg.__dict__, 2, str(marker)) for _ in range(2)]  # the first to start unit 2 dies
    try:
        pids = [s["pid"] for s in ray.get([a.status.remote() for a in actors])]
        with caplog.at_level(logging.INFO, logger="spinal.cluster.ray_capture"):
            res = drive(cfg, actors, max_retries=2)
    finally:
        for a in actors:
            ray.kill(a)
    assert marker.exists(), "an actor must have died on unit 2"
    assert int(marker.read_text()) in pids  # written by one of the replicas itself, as it died
    # the log tells the truth: one of the two replicas died, its unit was redone on the other
    assert "capture done on 1 of 2 replica(s): 0 died while loading, 1 during capture" in caplog.text
    assert "capture on 2 replica(s) done" not in caplog.text
    ref = CaptureConfig(**{**cfg.__dict__, "out": str(tmp_path / "local.zarr")})
    capture(ref)
    a, b = _arrays(cfg.out), _arrays(ref.out)
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    s = Store.open(cfg.out)
    assert s.complete and res.units_written == s.meta["n_units"] > 4


@pytest.mark.slow
def test_unit_that_keeps_failing_stops_the_run_with_its_identity(two_nodes, tmp_path):
    from safetensors.torch import load_file, save_file

    from spinal.cluster.ray_capture import capture_on_ray

    d = save_checkpoint(tmp_path / "nan", "llama")
    w = load_file(d / "model.safetensors")
    w["model.layers.0.mlp.down_proj.weight"][:] = float("nan")
    save_file(w, d / "model.safetensors", metadata={"format": "pt"})
    cfg = CaptureConfig(model=str(d), prompts=str(_prompts(tmp_path, 6)), out=str(tmp_path / "bad.zarr"),
                        self_check=False)
    with pytest.raises(StoreError, match=r"unit 0 failed 2 time\(s\).*non-finite activation at layer 1"):
        capture_on_ray(cfg, ClusterConfig(replicas=1, max_unit_retries=1))
    assert not Store.open(cfg.out).done().any()


@pytest.mark.slow
def test_service_keeps_the_model_loaded_across_prompt_sets(two_nodes, checkpoint, tmp_path):
    from spinal.cluster import service
    from spinal.config import load_run_config

    ckpt = checkpoint("llama")
    _prompts(tmp_path)
    (tmp_path / "serve.toml").write_text(
        f'[run]\nout = "o"\nprompts = "p.jsonl"\n[[checkpoints]]\nlabel = "tiny"\npath = "{ckpt}"\n'
        "[capture]\nunit_tokens = 64\n[cluster]\nreplicas = 2\n")
    cfg = load_run_config(str(tmp_path / "serve.toml"))
    try:
        reps = service.serve(cfg)
        assert [(r.name, r.alive, r.loads, r.captures) for r in reps] == [("tiny/0", True, 1, 0), ("tiny/1", True, 1, 0)]
        pids = {r.pid for r in reps}
        for k, n in ((1, 12), (2, 20)):  # two prompt sets back to back
            rows = [{"id": f"s{k}-{i}", "prompt": f"Set {k}, question {i}: why is the sky blue?"} for i in range(n)]
            p = write_jsonl(tmp_path / f"set{k}.jsonl", rows)
            c = CaptureConfig(model=str(ckpt), prompts=str(p), out=str(tmp_path / f"set{k}.zarr"), unit_tokens=64)
            service.capture_with_service(c, "tiny")
            local = CaptureConfig(**{**c.__dict__, "out": str(tmp_path / f"local{k}.zarr")})
            capture(local)
            assert np.array_equal(_arrays(c.out)["hidden"], _arrays(local.out)["hidden"])
        after = service.status()
        assert {r.pid for r in after} == pids  # the same processes served both sets
        assert all(r.loads == 1 for r in after) and sum(r.captures for r in after) == 4
        with pytest.raises(InputError, match="no service named 'other' on this Ray cluster"):
            service.capture_with_service(c, "other")
    finally:
        service.stop()
    assert service.status() == []


def test_more_gpus_per_replica_than_a_node_has_is_refused(two_nodes, checkpoint, tmp_path):
    from spinal.cluster.ray_capture import capture_on_ray

    cfg = CaptureConfig(model=str(checkpoint("llama")), prompts=str(_prompts(tmp_path, 4)),
                        out=str(tmp_path / "g.zarr"))
    with pytest.raises(InputError, match="gpus_per_replica=2, but the largest node has 0 GPUs"):
        capture_on_ray(cfg, ClusterConfig(replicas=1, gpus_per_replica=2))
    assert not (tmp_path / "g.zarr").exists()


def test_analysis_on_a_cluster_with_every_cpu_held_is_refused_not_hung(two_nodes):
    import time

    from spinal.cluster.backends import ray_map

    @ray.remote(num_cpus=1)
    class Holder:  # as a serving replica does
        def ping(self):
            return 1

    holders = [Holder.remote() for _ in range(int(ray.cluster_resources()["CPU"]))]
    try:
        ray.get([h.ping.remote() for h in holders])
        t0 = time.monotonic()
        with pytest.raises(InputError, match="all 3 are held"):
            ray_map([(abs, {"x": -1})], None)
        assert time.monotonic() - t0 < 60  # refused, not waiting forever
    finally:
        for h in holders:
            ray.kill(h)


def _stamp(path: str, i: int) -> int:
    """An analysis task that records when it ran."""
    import time

    t0 = time.time()
    time.sleep(0.8)
    Path(path, f"{i}.txt").write_text(f"{t0} {time.time()}")
    return i * i


def test_analysis_workers_bounds_the_tasks_in_flight(two_nodes, tmp_path):
    from spinal.cluster.backends import ray_map

    tasks = [(_stamp, {"path": str(tmp_path), "i": i}) for i in range(4)]
    assert ray_map(tasks, None, limit=1) == [0, 1, 4, 9]  # results in task order
    spans = sorted(tuple(map(float, (tmp_path / f"{i}.txt").read_text().split())) for i in range(4))
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # one at a time: never two overlapping
    for f in tmp_path.glob("*.txt"):
        f.unlink()
    ray_map(tasks, None, limit=0)  # unbounded: the cluster's 3 CPUs run them together
    spans = sorted(tuple(map(float, (tmp_path / f"{i}.txt").read_text().split())) for i in range(4))
    assert any(a[1] > b[0] for a, b in zip(spans, spans[1:]))
