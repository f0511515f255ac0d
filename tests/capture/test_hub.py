"""Models by Hub id: resolved to their snapshot in a Hugging Face cache laid out on disk (nothing is downloaded),
checked as a local folder is, the commit recorded; plan, compare --weights and a run read the same snapshot."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import assert_refused, store_arrays, write_jsonl
from spinal.capture.load import check_checkpoint
from spinal.checkpoint import fingerprint, snapshot
from spinal.cli.app import app
from spinal.errors import InputError, ModelError
from spinal.store.contract import Store

runner = CliRunner()
MAIN, DEV, OTHER, PICKLED = "a1" * 20, "b2" * 20, "c3" * 20, "d4" * 20


def cache_snapshot(cache: Path, repo: str, commit: str, source: Path, *, refs: tuple[str, ...] = ("main",),
                   pickle_only: bool = False) -> Path:
    """``source``'s files as the snapshot ``commit`` of the model ``repo`` in the hub cache ``cache``, laid out as
    the hub client does (refs/<branch> holds the commit; plain files, no blob links), pointed at by ``refs``."""
    base = cache / f"models--{repo.replace('/', '--')}"
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in source.iterdir():
        if not (pickle_only and f.suffix == ".safetensors"):
            shutil.copy(f, snap / f.name)
    if pickle_only:  # what an old checkpoint holds: the same weights as one torch pickle
        from safetensors.torch import load_file

        torch.save(load_file(str(source / "model.safetensors")), snap / "pytorch_model.bin")
    (base / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (base / "refs" / ref).write_text(commit)
    return snap


@pytest.fixture(scope="module")
def hub(tmp_path_factory, checkpoint) -> Path:
    """A hub cache: org/tiny at main (llama seed 0) and at the branch dev (seed 1), org/tiny2 at main (seed 1),
    org/pickled (pickle weights only)."""
    cache = tmp_path_factory.mktemp("hf") / "hub"
    cache_snapshot(cache, "org/tiny", MAIN, checkpoint("llama"))
    cache_snapshot(cache, "org/tiny", DEV, checkpoint("llama", seed=1), refs=("dev",))
    cache_snapshot(cache, "org/tiny2", OTHER, checkpoint("llama", seed=1))
    cache_snapshot(cache, "org/pickled", PICKLED, checkpoint("llama"), pickle_only=True)
    return cache


@pytest.fixture()
def offline(hub, monkeypatch, tmp_path) -> Path:
    """huggingface_hub pointed at the cache ``hub``, offline (it reads both at call time); the working directory
    one where org/… is no folder."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    return hub


def test_a_hub_id_resolves_to_its_cached_snapshot_at_a_branch_or_commit(offline):
    snap = snapshot("org/tiny")
    assert (snap.commit, snap.folder) == (MAIN, offline / "models--org--tiny" / "snapshots" / MAIN)
    assert snapshot("org/tiny", revision="dev").commit == DEV
    assert snapshot("org/tiny", revision=DEV).folder.name == DEV  # a commit needs no ref
    assert check_checkpoint("org/tiny", allow_pickle=False, trust_remote_code=False, revision="dev") == \
        offline / "models--org--tiny" / "snapshots" / DEV


def test_an_id_not_in_the_cache_offline_is_one_line_naming_the_cache_and_the_fetch(offline, prompts_file):
    t0 = time.perf_counter()
    r = runner.invoke(app, ["capture", "org/missing", "-p", str(prompts_file), "-o", "x.zarr"])
    assert_refused(r, "no local folder org/missing, and the model org/missing is not in the Hugging Face cache",
                   str(offline), "HF_HUB_OFFLINE is set",
                   "hf download org/missing")
    assert time.perf_counter() - t0 < 5
    r = runner.invoke(app, ["capture", "org/tiny", "--revision", "nope", "-p", str(prompts_file), "-o", "x.zarr"])
    assert_refused(r, "org/tiny is not in the Hugging Face cache", "hf download org/tiny --revision nope")
    assert not Path("x.zarr").exists()


def test_an_id_not_cached_with_no_network_is_one_line_without_retries(offline, monkeypatch, capfd):
    """Not offline, but the Hub unreachable (a closed port): one look-up, refused at once, one line."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    t0 = time.perf_counter()
    with pytest.raises(InputError) as e:
        snapshot("org/missing")
    assert time.perf_counter() - t0 < 5
    msg = str(e.value)
    assert "\n" not in msg and "neither in the Hugging Face cache" in msg and "nor reachable" in msg
    assert "hf download org/missing" in msg
    assert "Retrying" not in capfd.readouterr().err
    assert snapshot("org/tiny").commit == MAIN  # a cached id never touches the network


@pytest.mark.parametrize("files, allow_pickle, fetched", [
    (["config.json", "model.safetensors", "pytorch_model.bin"], False, "safetensors"),
    (["config.json", "pytorch_model.bin"], True, "pickles"),
    (["config.json", "pytorch_model.bin"], False, None),
])
def test_an_id_fetched_from_the_hub_takes_safetensors_and_refuses_pickles_before_fetching(
        offline, monkeypatch, files, allow_pickle, fetched):
    """Online (the Hub faked): one look-up, then only what a capture reads; a pickle-only model is refused before
    a byte of it is fetched, unless --allow-pickle."""
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    asked = {}

    class Info:
        siblings = [type("Sibling", (), {"rfilename": f}) for f in files]

    def repo_info(self, repo, **kw):
        asked["timeout"] = kw["timeout"]
        return Info()

    def download(repo, **kw):
        if kw.get("local_files_only"):
            raise FileNotFoundError("not cached")
        asked["patterns"] = kw["allow_patterns"]
        return str(offline / "models--org--new" / "snapshots" / OTHER)

    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", repo_info)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    if fetched is None:
        with pytest.raises(ModelError, match=r"org/new has only pickle weights \(pytorch_model.bin\).*--allow-pickle"):
            snapshot("org/new")
        assert "patterns" not in asked
        return
    assert snapshot("org/new", allow_pickle=allow_pickle).commit == OTHER
    assert asked["timeout"] <= 10 and "*.safetensors" in asked["patterns"]
    assert ("*.bin" in asked["patterns"]) == (fetched == "pickles")


def test_a_pickle_only_snapshot_is_refused_as_a_folder_is(offline, prompts_file):
    r = runner.invoke(app, ["capture", "org/pickled", "-p", str(prompts_file), "-o", "x.zarr"])
    assert_refused(r, "org/pickled (cached snapshot", "only pickle weights (pytorch_model.bin)", "--allow-pickle")
    assert check_checkpoint("org/pickled", allow_pickle=True, trust_remote_code=False).name == PICKLED


def test_revision_of_a_local_folder_is_refused(llama):
    with pytest.raises(InputError, match="is a local path, one version already"):
        check_checkpoint(str(llama), allow_pickle=False, trust_remote_code=False, revision="dev")


def test_capture_by_hub_id_equals_capture_of_its_snapshot_and_records_the_commit(offline, prompts_file, checkpoint):
    snap = offline / "models--org--tiny" / "snapshots" / MAIN
    for model, out in (("org/tiny", "hub.zarr"), (str(snap), "folder.zarr")):
        r = runner.invoke(app, ["capture", model, "-p", str(prompts_file), "-o", out, "--no-progress"])
        assert r.exit_code == 0, r.output
    a, b = store_arrays("hub.zarr"), store_arrays("folder.zarr")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    src = Store.open("hub.zarr").meta["source"]
    assert src["model"] == "org/tiny" and src["revision"] == MAIN
    assert src["hub"] == {"repo": "org/tiny", "revision": None, "commit": MAIN, "folder": str(snap)}
    assert src["weights_fingerprint"] == fingerprint(checkpoint("llama"))
    assert Store.open("hub.zarr").meta["identity"] == Store.open("folder.zarr").meta["identity"]

    r = runner.invoke(app, ["capture", "org/tiny", "--revision", "dev", "-p", str(prompts_file), "-o", "dev.zarr",
                            "--no-progress"])
    assert r.exit_code == 0, r.output
    src = Store.open("dev.zarr").meta["source"]
    assert src["revision"] == DEV and src["hub"]["revision"] == "dev"
    assert src["weights_fingerprint"] == fingerprint(checkpoint("llama", seed=1))


def test_plan_reads_a_hub_ids_cached_config(offline, hub):
    cfg = json.loads((hub / "models--org--tiny" / "snapshots" / MAIN / "config.json").read_text())
    r = runner.invoke(app, ["plan", "org/tiny", "--json"])
    assert r.exit_code == 0, r.output
    facts = json.loads(r.stdout)["model"]
    assert (facts["blocks"], facts["hidden"]) == (cfg["num_hidden_layers"], cfg["hidden_size"])
    assert MAIN[:12] in facts["source"]
    r = runner.invoke(app, ["plan", "org/tiny", "--revision", "dev", "--json"])
    assert r.exit_code == 0 and DEV[:12] in json.loads(r.stdout)["model"]["source"]
    assert_refused(runner.invoke(app, ["plan", "org/missing"]), "hf download org/missing")


@pytest.mark.slow
def test_a_run_of_hub_ids_captures_each_revision_and_compare_reads_the_same_snapshots(offline, tmp_path):
    """[[checkpoints]] revision reaches the capture; the run's parameter change and `spinal compare --weights ID`
    read the snapshots the stores were captured from."""
    write_jsonl(tmp_path / "prompts.jsonl",
                [{"id": f"q{i}", "prompt": f"Please answer question {i} about topic {i % 5}."} for i in range(16)])
    (tmp_path / "run.toml").write_text(
        '[run]\nout = "out"\nprompts = "prompts.jsonl"\n\n'
        '[[checkpoints]]\nlabel = "main"\npath = "org/tiny"\n\n'
        '[[checkpoints]]\nlabel = "dev"\npath = "org/tiny"\nrevision = "dev"\n\n'
        '[capture]\nunit_tokens = 256\n\n[analyze]\nn_boot = 20\nworkers = 1\nnull_splits = 2\nlens_tokens = 200\n\n'
        '[compare]\nn_boot = 50\ncross_readout_tokens = 0\nposition_tokens = 0\n')
    r = runner.invoke(app, ["run", "run.toml", "--no-progress"])
    assert r.exit_code == 0, r.output
    stores = [Store.open(f"out/stores/{k}.zarr").meta["source"]["revision"] for k in ("main", "dev")]
    assert stores == [MAIN, DEV]
    doc = json.loads(Path("out/compare/compare.json").read_text())
    assert doc["pairs"][0]["grad_concentration"] is not None  # the weights streamed from both snapshots

    traces = ["out/traces/main", "out/traces/dev"]
    r = runner.invoke(app, ["compare", *traces, "-o", "cmp", "--n-boot", "50", "--weights", "org/tiny",
                            "--weights", "org/tiny"])  # each at the commit its trace's store recorded
    assert r.exit_code == 0, r.output
    assert json.loads(Path("cmp/compare.json").read_text())["pairs"][0]["grad_concentration"] is not None
    r = runner.invoke(app, ["compare", *traces, "-o", "cmp2", "--weights", "org/tiny", "--weights", "org/tiny2"])
    assert r.exit_code == 0, r.output  # org/tiny2 holds dev's weights: another id, the same snapshot bytes
    r = runner.invoke(app, ["compare", *traces, "-o", "cmp3", "--weights", "org/tiny2", "--weights", "org/tiny"])
    assert_refused(r, "--weights", "is not the checkpoint trace 'main' was captured from")


@pytest.mark.slow
def test_the_cli_offline_by_environment_refuses_an_uncached_id_in_one_line_fast(hub, tmp_path):
    """HF_HUB_OFFLINE=1 and HF_HUB_CACHE in the environment, as a user sets them: exit 2, one line, no retries."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub)}
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hello"}])
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "spinal.cli", "capture", "org/missing", "-p", "p.jsonl", "-o", "x.zarr"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    took = time.perf_counter() - t0
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert str(hub) in lines[0] and "hf download org/missing" in lines[0]
    assert took < 60  # the interpreter's start and imports; no network waits
