"""Capture on real Ray: a simulated two-node cluster, an actor killed mid-unit, a unit that keeps failing."""

from __future__ import annotations

import os

import numpy as np
import pytest
import zarr

from conftest import save_checkpoint, write_jsonl
from spinal.capture import capture
from spinal.cluster.actors import FAULT_ENV, ClusterConfig
from spinal.config import CaptureConfig
from spinal.errors import StoreError
from spinal.store import Store

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """Head (1 CPU) + worker node (2 CPUs), each its own raylet; the fault hook is armed for every worker."""
    from ray.cluster_utils import Cluster

    marker = tmp_path_factory.mktemp("fault") / "crashed"
    os.environ[FAULT_ENV] = f"2:{marker}"  # the actor that starts unit 2 first dies hard, once
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address, log_to_driver=False, include_dashboard=False)
    yield marker
    ray.shutdown()
    cluster.shutdown()
    os.environ.pop(FAULT_ENV, None)


def _prompts(tmp_path, n=40):
    rows = [{"id": f"q{i}", "prompt": f"Tell me something useful about subject number {i}."} for i in range(n)]
    return write_jsonl(tmp_path / "p.jsonl", rows)


def _arrays(path):
    g = zarr.open_group(str(path), mode="r")
    return {k: np.asarray(g[k][...]) for k in ("hidden", "tokens/ids", "tokens/sequence", "units/done")}


@pytest.mark.slow
def test_killed_actor_unit_is_redone_elsewhere_and_store_equals_uninterrupted(two_nodes, checkpoint, tmp_path):
    from spinal.cluster.ray_capture import capture_on_ray

    ckpt, p = checkpoint("llama"), _prompts(tmp_path)
    cfg = CaptureConfig(model=str(ckpt), prompts=str(p), out=str(tmp_path / "ray.zarr"), unit_tokens=64)
    nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert len(nodes) == 2
    res = capture_on_ray(cfg, ClusterConfig(replicas=2, cpus_per_replica=1))
    assert two_nodes.exists(), "the fault hook must have killed an actor"
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
def test_killed_driver_resumes_without_redoing_finished_units(checkpoint, tmp_path):
    """`spinal run` on a local Ray instance, SIGKILLed mid-capture, then `--resume` in a fresh driver."""
    import json
    import signal
    import subprocess
    import sys
    import time

    rows = [{"id": f"q{i}", "prompt": f"Kindly describe topic {i} in two short sentences."} for i in range(24)]
    write_jsonl(tmp_path / "prompts.jsonl", rows)
    (tmp_path / "run.toml").write_text(
        '[run]\nout = "out"\nprompts = "prompts.jsonl"\n'
        f'[[checkpoints]]\nlabel = "base"\npath = "{checkpoint("llama")}"\n'
        f'[[checkpoints]]\nlabel = "tuned"\npath = "{checkpoint("llama", seed=1)}"\n'
        "[capture]\nunit_tokens = 64\nbatch_size = 2\n[analyze]\nn_boot = 20\nnull_splits = 2\n"
        "[compare]\nn_boot = 50\n[cluster]\nreplicas = 2\n"
    )
    argv = [sys.executable, "-m", "spinal.cli", "run", str(tmp_path / "run.toml"), "--no-progress"]
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    done_dir = tmp_path / "out" / "stores" / "base.zarr" / "units" / "done" / "c"
    deadline = time.time() + 240
    while time.time() < deadline and not (done_dir.exists() and len(os.listdir(done_dir)) >= 3):
        time.sleep(0.05)
    alive = proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    assert alive, "the run finished before it could be killed"
    assert done_dir.exists(), "no unit was captured within the deadline"
    proc.wait()
    # the actors share the driver's fate; a unit already being written may still finish (and is then done,
    # exactly once): count after they are gone
    time.sleep(5)
    store = tmp_path / "out" / "stores" / "base.zarr"
    done_at_kill = int(Store.open(str(store)).done().sum())
    n_units = Store.open(str(store)).meta["n_units"]
    assert 3 <= done_at_kill < n_units, "the kill must land mid-capture"
    r = subprocess.run(argv + ["--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    base = [s for s in summary["stages"] if s["stage"] == "capture" and s["label"] == "base"][0]
    assert f"{n_units - done_at_kill} units written, {done_at_kill} reused" in base["detail"]
    assert (tmp_path / "out" / "report" / "report.html").exists()


@pytest.mark.slow
def test_service_keeps_the_model_loaded_across_prompt_sets(two_nodes, checkpoint, tmp_path):
    from spinal.cluster import service
    from spinal.config import load_run_config

    two_nodes.touch()  # no fault injection here
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
        with pytest.raises(Exception, match="no service named 'other'"):
            service.capture_with_service(c, "other")
    finally:
        service.stop()
    assert service.status() == []


def test_more_gpus_per_replica_than_a_node_has_is_refused(two_nodes, checkpoint, tmp_path):
    from spinal.cluster.ray_capture import capture_on_ray
    from spinal.errors import InputError

    cfg = CaptureConfig(model=str(checkpoint("llama")), prompts=str(_prompts(tmp_path, 4)),
                        out=str(tmp_path / "g.zarr"))
    with pytest.raises(InputError, match="gpus_per_replica=2, but the largest node has 0 GPUs"):
        capture_on_ray(cfg, ClusterConfig(replicas=1, gpus_per_replica=2))
    assert not (tmp_path / "g.zarr").exists()
